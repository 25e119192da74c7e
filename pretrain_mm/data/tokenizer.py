"""Tokenizers (Hugging Face `tokenizers`): byte-level BPE training, saving, loading, OpenAI CLIP's BPE,
CLIP-style fixed-length encoding."""

from __future__ import annotations

import functools
import gzip
import html
import importlib.util
import os
import re
from collections.abc import Iterable, Sequence
from typing import cast

# Tokenizing short captions gains nothing from Rust threads, and threads used before a
# DataLoader forks its workers make `tokenizers` warn and disable them anyway.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Regex, decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402

PAD, SOT, EOT = "<pad>", "<start_of_text>", "<end_of_text>"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_CONTEXT_LENGTH = 77
CLIP = "clip"  # the name of OpenAI CLIP's BPE (data.tokenizer=clip)
CLIP_VOCAB_FILE = "bpe_simple_vocab_16e6.txt.gz"  # shipped inside the open_clip_torch package
# OpenAI CLIP's word split (open_clip's SimpleTokenizer.pat, compiled there with IGNORECASE).
CLIP_PATTERN = SOT + "|" + EOT + r"""|'s|'t|'re|'ve|'m|'ll|'d|[\p{L}]+|[\p{N}]|[^\s\p{L}\p{N}]+"""
# Text that ftfy.fix_text and html.unescape leave as it is: printable ASCII without '&', tabs, newlines.
_NEEDS_FIXING = re.compile(r"[^\t\n\x20-\x25\x27-\x7e]")


def clip_clean(text: str) -> str:
    """open_clip's text cleaning ('lower'): ftfy.fix_text, HTML-unescape twice, collapse whitespace, lower-case."""
    if _NEEDS_FIXING.search(text):
        import ftfy

        text = html.unescape(html.unescape(ftfy.fix_text(text)))
    return " ".join(text.split()).lower()


def _bytes_to_unicode() -> dict[int, str]:
    """GPT-2/CLIP's byte -> printable character table (open_clip's bytes_to_unicode)."""
    bs = list(range(ord("!"), ord("~") + 1)) + list(range(ord("¡"), ord("¬") + 1)) + list(range(ord("®"), ord("ÿ") + 1))
    cs, n = bs[:], 0
    for b in range(256):
        if b not in bs:
            bs.append(b)
            cs.append(256 + n)
            n += 1
    return dict(zip(bs, map(chr, cs)))


# A word's UTF-8 bytes, read as latin-1 characters, translate to the byte-level characters.
_BYTE_CHARS = str.maketrans({chr(b): c for b, c in _bytes_to_unicode().items()})


@functools.lru_cache(maxsize=1)
def _clip_regex():
    import regex  # as open_clip: its Unicode tables and IGNORECASE folding decide the split

    return regex.compile(CLIP_PATTERN, regex.IGNORECASE)


def _clip_split(text: str) -> list[str]:
    return _clip_regex().findall(text)


def _is_clip_bpe(hf: HFTokenizer) -> bool:
    """CLIP's kind of BPE (words end in '</w>'); our trainer never makes one."""
    return getattr(hf.model, "end_of_word_suffix", None) == "</w>"


class Tokenizer:
    """Fixed-length CLIP-style encoding: [SOT] tokens... [EOT] then padding up to context_length;
    too long a text keeps its first context_length - 2 tokens (as open_clip's `tokenize`).

    eot_id is the largest id, so `text.argmax(-1)` finds the EOT position as in CLIP. pad_id is the
    <pad> token's (0 in the BPEs trained here), else 0 as in CLIP (where 0 is the token '!'). Our
    BPEs NFC-normalise and lower-case; CLIP's BPE cleans text as open_clip does (clip_clean).
    Picklable (for DataLoader workers).
    """

    def __init__(self, hf: HFTokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH, source: str = ""):
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (SOT, one token, EOT), got {context_length}")
        self.hf, self.context_length, self.source = hf, int(context_length), source
        sot_id, eot_id = hf.token_to_id(SOT), hf.token_to_id(EOT)
        if sot_id is None or eot_id is None:
            raise ValueError(
                f"tokenizer {source or ''} lacks the special tokens {SOT}, {EOT}; "
                "train one with pretrain_mm.data.train_tokenizer"
            )
        self.sot_id, self.eot_id = sot_id, eot_id
        pad = hf.token_to_id(PAD)
        self.has_pad_token, self.pad_id = pad is not None, 0 if pad is None else pad
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)
        if self.eot_id != self.vocab_size - 1:
            raise ValueError(
                f"tokenizer {source or ''}: {EOT} must be the largest id ({self.vocab_size - 1}), it is {self.eot_id}"
            )
        self.clip_style = _is_clip_bpe(hf)
        self._word_ids: dict[str, list[int]] = {}  # CLIP-style: BPE pieces of the words seen

    def _encode_all(self, texts: list[str]) -> list[list[int]]:
        if self.clip_style:
            return [self._clip_encode(clip_clean(t)) for t in texts]
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # fast: no offsets
        return [enc.ids for enc in encode(texts, add_special_tokens=False)]

    def _clip_encode(self, text: str) -> list[int]:
        """open_clip's encode on cleaned text: its word split (the `regex` module's, whose Unicode
        tables differ from the Rust split's for a few thousand rare characters), each word mapped to
        byte-level characters and merged by the BPE; <start_of_text>/<end_of_text> words are their ids."""
        ids: list[int] = []
        for word in _clip_split(text):
            pieces = self._word_ids.get(word)
            if pieces is None:
                if word in (SOT, EOT):
                    pieces = [self.sot_id if word == SOT else self.eot_id]
                else:
                    chars = word.encode("utf-8").decode("latin-1").translate(_BYTE_CHARS)
                    pieces = [tok.id for tok in self.hf.model.tokenize(chars)]
                if len(self._word_ids) >= 100_000:
                    self._word_ids.clear()
                self._word_ids[word] = pieces
            ids.extend(pieces)
        return ids

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens or truncation."""
        return self._encode_all([text])[0]

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Encode one text or a list into a LongTensor [B, context_length] (truncating, keeping EOT)."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        out[:, 0] = self.sot_id
        for row, ids in enumerate(self._encode_all(list(texts))):
            ids = ids[: length - 2]
            out[row, 1 : len(ids) + 1] = ids
            out[row, len(ids) + 1] = self.eot_id
        return torch.from_numpy(out)

    def decode(self, ids: Iterable[int] | torch.Tensor) -> str:
        """Text of a row of ids: stops at EOT, drops SOT/PAD."""
        if isinstance(ids, torch.Tensor):
            ids = ids.tolist()
        kept = []
        for i in ids:
            if i == self.eot_id:
                break
            if i != self.sot_id and not (self.has_pad_token and i == self.pad_id):
                kept.append(int(i))
        return self.hf.decode(kept, skip_special_tokens=True)

    def save(self, path: str) -> str:
        """Write the tokenizer as JSON (a directory gets tokenizer.json inside); returns the file path."""
        if os.path.isdir(path):
            path = os.path.join(path, TOKENIZER_FILE)
        tmp = f"{path}.tmp{os.getpid()}"
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(self.hf.to_str())
        os.replace(tmp, path)
        return path

    def __getstate__(self) -> dict:
        # CLIP's BPE travels by name: workers rebuild it from the packaged file, no 1.6 MB of JSON.
        hf = None if self.source == CLIP else self.hf.to_str()
        return {"json": hf, "context_length": self.context_length, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        hf = _clip_bpe() if state["json"] is None else HFTokenizer.from_str(state["json"])
        type(self).__init__(self, hf, state["context_length"], state["source"])

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, source={self.source!r})"


def _check_vocab_size(vocab_size: int) -> None:
    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + special tokens), got {vocab_size}")


def train_tokenizer(
    texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2, context_length: int = DEFAULT_CONTEXT_LENGTH
) -> Tokenizer:
    """Train a byte-level BPE on `texts`; the result has at most `vocab_size` ids (specials included)."""
    _check_vocab_size(vocab_size)
    hf = HFTokenizer(models.BPE())
    hf.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1,
        min_frequency=min_frequency,
        special_tokens=[PAD, SOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(),
        show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    hf.add_special_tokens([EOT])  # last id, so argmax over a row finds EOT
    return Tokenizer(hf, context_length)


def train_tokenizer_on_shards(
    urls, vocab_size: int, caption_key: str = "txt", min_frequency: int = 2, progress: bool = True
) -> tuple[Tokenizer, dict[str, int]]:
    """Train a byte-level BPE (train_tokenizer) on the captions of a shard set (a directory, a brace
    pattern, a comma-separated list). Returns it and counts: shards, samples, captions, no_caption,
    bad_shards (unreadable or truncated: read up to the damage, then skipped)."""
    from tqdm import tqdm

    from .decode import SkipSample, get_caption, parse_key_spec, spec_exts
    from .reader import ShardError, iter_shard
    from .shards import describe, expand_urls, read_sizes

    _check_vocab_size(vocab_size)
    spec = parse_key_spec(caption_key, "caption")
    urls = expand_urls(urls)
    sizes = read_sizes(urls)
    counts = {"shards": len(urls), "samples": 0, "captions": 0, "no_caption": 0, "bad_shards": 0}
    bar = tqdm(
        total=sum(sizes.values()) if sizes else None,
        desc="reading captions",
        unit="sample",
        disable=not progress,
        mininterval=0.5,
    )

    def captions() -> Iterable[str]:
        for url in urls:
            try:
                for sample in iter_shard(url, spec_exts(spec)):
                    counts["samples"] += 1
                    bar.update()
                    try:
                        caption = get_caption(sample, spec, {})
                    except SkipSample:
                        counts["no_caption"] += 1
                        continue
                    counts["captions"] += 1
                    yield caption
            except ShardError as exn:
                counts["bad_shards"] += 1
                bar.write(f"skipping the rest of a damaged shard: {exn}")

    tokenizer = train_tokenizer(captions(), vocab_size=vocab_size, min_frequency=min_frequency)
    bar.close()
    if not counts["captions"]:
        raise ValueError(
            f"no captions under caption key {caption_key!r} in {describe(urls)} "
            f"({counts['samples']} samples read); pass the right --caption-key (e.g. json:caption)"
        )
    return tokenizer, counts


def clip_vocab_file() -> str:
    """The path of CLIP's BPE merges file inside the installed open_clip_torch package (not imported)."""
    spec = importlib.util.find_spec("open_clip")
    folders = list(spec.submodule_search_locations or []) if spec is not None else []
    for folder in folders:
        path = os.path.join(folder, CLIP_VOCAB_FILE)
        if os.path.isfile(path):
            return path
    raise ValueError(
        f"tokenizer {CLIP!r} reads {CLIP_VOCAB_FILE} from the open_clip_torch package, "
        "which is not installed: pip install open_clip_torch"
    )


@functools.lru_cache(maxsize=1)
def _clip_bpe() -> HFTokenizer:
    """OpenAI CLIP's BPE (49,408 ids) as a `tokenizers` BPE, vocabulary and merges built as open_clip's
    SimpleTokenizer builds them; text cleaning is Tokenizer's (clip_clean), outside this object."""
    with gzip.open(clip_vocab_file()) as f:
        lines = f.read().decode("utf-8").split("\n")[1 : 49152 - 256 - 2 + 1]
        merges = cast(list[tuple[str, str]], [tuple(m.split()) for m in lines])  # each line a pair
    chars = list(_bytes_to_unicode().values())
    vocab = chars + [c + "</w>" for c in chars] + ["".join(m) for m in merges] + [SOT, EOT]
    hf = HFTokenizer(models.BPE(vocab={t: i for i, t in enumerate(vocab)}, merges=merges, end_of_word_suffix="</w>"))
    # SOT/EOT are plain vocabulary entries, not added tokens: CLIP only recognises them where its
    # split isolates them. Tokenizer splits words itself (_clip_encode); this Split, with the Rust
    # regex's Unicode tables, is for users of a saved file alone and differs on rare characters.
    hf.pre_tokenizer = pre_tokenizers.Sequence(
        [
            pre_tokenizers.Split(Regex("(?i)" + CLIP_PATTERN), behavior="removed", invert=True),
            pre_tokenizers.ByteLevel(add_prefix_space=False, use_regex=False),
        ]
    )
    hf.decoder = decoders.Sequence(
        [
            decoders.Replace("</w>", chr(256 + 32)),  # the byte-level space
            decoders.ByteLevel(),
            decoders.Strip(" ", 0, 1),
        ]
    )
    return hf


def clip_tokenizer(context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """OpenAI CLIP's BPE: the same ids as open_clip's `tokenize(texts, context_length)`, offline (the
    merges file ships with the open_clip_torch package, which is not imported)."""
    return Tokenizer(_clip_bpe(), context_length, source=CLIP)


def find_tokenizer_file(directory: str) -> str | None:
    """The tokenizer.json in a (shard) directory or its parent, or None."""
    for candidate in (os.path.join(directory, TOKENIZER_FILE), os.path.join(directory, os.pardir, TOKENIZER_FILE)):
        if os.path.isfile(candidate):
            return os.path.normpath(candidate)
    return None


def read_tokenizer(
    name_or_path: str, context_length: int = DEFAULT_CONTEXT_LENGTH, builtin_names: Sequence[str] = ()
) -> Tokenizer:
    """Load 'clip' (OpenAI CLIP's BPE), a tokenizer.json file or a directory holding one (a shard directory
    or its parent). The built-in datasets' names are data.builtin.load_tokenizer's (it knows where they
    live); `builtin_names` only completes the error message."""
    if name_or_path == CLIP:  # a bare name, as for the built-ins; write ./clip for a directory
        return clip_tokenizer(context_length)
    path = os.path.expanduser(str(name_or_path))
    if not os.path.exists(path):
        raise ValueError(
            f"tokenizer {name_or_path!r} is neither a built-in name ({', '.join([CLIP, *builtin_names])}) "
            "nor an existing tokenizer.json or directory holding one"
        )
    if os.path.isdir(path):
        found = find_tokenizer_file(path)
        if found is None:
            raise ValueError(
                f"directory {name_or_path!r} holds no {TOKENIZER_FILE} (nor does its parent); "
                "write shards with a tokenizer or pass the tokenizer file"
            )
        path = found
    try:
        hf = HFTokenizer.from_file(path)
    except Exception as exn:
        raise ValueError(f"cannot load tokenizer from {path!r}: {exn}") from exn
    return Tokenizer(hf, context_length, source=os.path.abspath(path))
