"""Byte-level BPE tokenizer (Hugging Face `tokenizers`): training, saving, loading, CLIP-style encoding."""

from __future__ import annotations

import os
from typing import Iterable, Sequence

# Tokenizing short captions gains nothing from Rust threads, and threads used before a
# DataLoader forks its workers make `tokenizers` warn and disable them anyway.
os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")

import numpy as np  # noqa: E402
import torch  # noqa: E402
from tokenizers import Tokenizer as HFTokenizer  # noqa: E402
from tokenizers import decoders, models, normalizers, pre_tokenizers, trainers  # noqa: E402

PAD, SOT, EOT = "<pad>", "<start_of_text>", "<end_of_text>"
TOKENIZER_FILE = "tokenizer.json"
DEFAULT_CONTEXT_LENGTH = 77


class Tokenizer:
    """Fixed-length CLIP-style encoding: [SOT] tokens... [EOT] then PAD up to context_length.

    pad_id is 0 and eot_id is the largest id, so `text.argmax(-1)` finds the EOT position as in
    CLIP. Texts are NFC-normalised and lower-cased. Picklable (for DataLoader workers).
    """

    def __init__(self, hf: HFTokenizer, context_length: int = DEFAULT_CONTEXT_LENGTH, source: str = ""):
        if context_length < 3:
            raise ValueError(f"context_length must be >= 3 (SOT, one token, EOT), got {context_length}")
        self.hf, self.context_length, self.source = hf, int(context_length), source
        ids = [hf.token_to_id(t) for t in (PAD, SOT, EOT)]
        if None in ids:
            raise ValueError(f"tokenizer {source or ''} lacks the special tokens {PAD}, {SOT}, {EOT}; "
                             "train one with pretrain_mm.data.train_tokenizer")
        self.pad_id, self.sot_id, self.eot_id = ids
        self.vocab_size = hf.get_vocab_size(with_added_tokens=True)

    def encode(self, text: str) -> list[int]:
        """Token ids of `text`, without special tokens or truncation."""
        return self.hf.encode(text, add_special_tokens=False).ids

    def __call__(self, texts: str | Sequence[str], context_length: int | None = None) -> torch.Tensor:
        """Encode one text or a list into a LongTensor [B, context_length] (truncating, keeping EOT)."""
        if isinstance(texts, str):
            texts = [texts]
        length = context_length or self.context_length
        out = np.full((len(texts), length), self.pad_id, dtype=np.int64)
        out[:, 0] = self.sot_id
        encode = getattr(self.hf, "encode_batch_fast", self.hf.encode_batch)  # fast: no offsets
        for row, enc in enumerate(encode(list(texts), add_special_tokens=False)):
            ids = enc.ids[: length - 2]
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
            if i not in (self.sot_id, self.pad_id):
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
        return {"json": self.hf.to_str(), "context_length": self.context_length, "source": self.source}

    def __setstate__(self, state: dict) -> None:
        self.__init__(HFTokenizer.from_str(state["json"]), state["context_length"], state["source"])

    def __repr__(self) -> str:
        return f"Tokenizer(vocab_size={self.vocab_size}, context_length={self.context_length}, source={self.source!r})"


def train_tokenizer(texts: Iterable[str], vocab_size: int = 1024, min_frequency: int = 2,
                    context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """Train a byte-level BPE on `texts`; the result has at most `vocab_size` ids (specials included)."""
    if vocab_size < 260:
        raise ValueError(f"vocab_size must be >= 260 (256 bytes + special tokens), got {vocab_size}")
    hf = HFTokenizer(models.BPE())
    hf.normalizer = normalizers.Sequence([normalizers.NFC(), normalizers.Lowercase()])
    hf.pre_tokenizer = pre_tokenizers.ByteLevel(add_prefix_space=False)
    hf.decoder = decoders.ByteLevel()
    trainer = trainers.BpeTrainer(
        vocab_size=vocab_size - 1, min_frequency=min_frequency, special_tokens=[PAD, SOT],
        initial_alphabet=pre_tokenizers.ByteLevel.alphabet(), show_progress=False,
    )
    hf.train_from_iterator(texts, trainer)
    hf.add_special_tokens([EOT])  # last id, so argmax over a row finds EOT
    return Tokenizer(hf, context_length)


def load_tokenizer(name_or_path: str, context_length: int = DEFAULT_CONTEXT_LENGTH) -> Tokenizer:
    """Load a tokenizer by built-in dataset name ('shapes', 'digits': created on first use), or from
    a tokenizer.json file or a directory holding one (a shard directory or its parent)."""
    from .builtin import BUILTINS, builtin_dir

    path = os.path.expanduser(str(name_or_path))
    if name_or_path in BUILTINS:  # a bare name; write ./shapes for a directory of that name
        path = builtin_dir(name_or_path)
    elif not os.path.exists(path):
        raise ValueError(f"tokenizer {name_or_path!r} is neither a built-in name ({', '.join(BUILTINS)}) "
                         "nor an existing tokenizer.json or directory holding one")
    if os.path.isdir(path):
        for candidate in (os.path.join(path, TOKENIZER_FILE), os.path.join(path, os.pardir, TOKENIZER_FILE)):
            if os.path.isfile(candidate):
                path = candidate
                break
        else:
            raise ValueError(f"directory {name_or_path!r} holds no {TOKENIZER_FILE} (nor does its parent); "
                             "write shards with a tokenizer or pass the tokenizer file")
    try:
        hf = HFTokenizer.from_file(path)
    except Exception as exn:
        raise ValueError(f"cannot load tokenizer from {path!r}: {exn}") from exn
    return Tokenizer(hf, context_length, source=os.path.abspath(path))
