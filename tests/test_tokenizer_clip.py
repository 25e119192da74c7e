"""data.tokenizer=clip (OpenAI CLIP's BPE, ids as open_clip's), the default for shards without a
tokenizer.json, and `python -m pretrain_mm.data tokenizer` (a BPE trained on shards' captions)."""

import importlib.util
import logging
import os
import pickle
import random
import subprocess
import sys

import pytest
import torch

import pretrain_mm.builders as builders
import pretrain_mm.data.builtin as builtin
from pretrain_mm.config import DataConfig, SplitConfig
from pretrain_mm.data import ShardWriter, build_loader, clip_tokenizer, load_tokenizer
from pretrain_mm.data.__main__ import main as cli
from pretrain_mm.data.testing import toy_image, write_toy_shards
from pretrain_mm.data.tokenizer import clip_clean

needs_clip_file = pytest.mark.skipif(importlib.util.find_spec("open_clip") is None,
                                     reason="open_clip_torch (which ships CLIP's BPE file) is not installed")

# Pieces of captions that stress open_clip's cleaning and CLIP's split: case, contractions,
# punctuation, digits, HTML entities (some escaped twice), accents (composed and combining),
# ligatures, full-width letters, mojibake ftfy repairs, scripts, emoji, control characters,
# odd whitespace, and the special tokens' own text.
WORDS = ["a", "photo", "of", "the", "Cat", "DOG", "sitting", "On", "mat", "in", "New", "YORK", "it's", "we'll",
         "they're", "I'm", "you've", "he'd", "can't", "O'Neil", "rock'n'roll", "'s", "'", "''", "``"]
PUNCT = ["!", "!!", "?", "...", ",", ".", ";", ":", "-", "—", "–", "(", ")", "[x]", "{y}", "#tag", "@user",
         "e-mail", "50%", "$3.99", "1,000", "3.14", "2024-01-05", "10:30pm", "#1", "a/b", "x_y", "*", "~", "^_^",
         "\"quoted\"", "<b>", "</w>", "<|endoftext|>"]
ENTITIES = ["&amp;", "&lt;b&gt;", "&quot;", "&#39;", "&#x27;", "&nbsp;", "&amp;amp;", "&amp;lt;", "&copy;",
            "&eacute;", "&hellip;", "& ", "&unknown;", "AT&T", "&#8217;", "&amp;#39;"]
UNICODE = ["café", "naïve", "Ångström", "cafe\u0301", "Straße", "İstanbul", "ΣΟΦΙΑ", "Σίσυφος", "Москва", "日本語",
           "中文字幕", "한국어", "عربى", "हिन्दी", "🐱", "👍🏽", "👨‍👩‍👧", "ﬁne", "ǅungla", "ｆｕｌｌｗｉｄｔｈ", "“curly”",
           "‘single’", "cafÃ©", "â€œmojibakeâ€\x9d", "\x01ctrl", "\u200bzero", "\ufeffbom", "½", "x²", "Ⅻ", "٣",
           "ſtar", "\u212aelvin", "µm", "ﬀ", "ŉ", "ΐ", "\x1b[31mred\x1b[0m", "\ud7ff", "ẞ", "Ǳ", "ᾈ",
           "a\u0345b", "ᾳ\u0345", "a\u088fb", "x\U00011db0y"]  # split differently by Rust's regex than open_clip's
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", " \x0b ", "\x85"]
SPECIALS = ["<start_of_text>", "<end_of_text>", "!<end_of_text>", "<END_OF_TEXT>", "x<start_of_text>y",
            "<end_of_text>!", "<start_of_text><end_of_text>"]


def random_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [WORDS] * 6 + [PUNCT] * 2 + [ENTITIES, UNICODE, UNICODE, [str(rng.randrange(10 ** 6)) for _ in range(50)]]
    out = []
    for i in range(n):
        length = rng.randint(60, 120) if i % 10 == 0 else rng.randint(1, 25)  # every tenth truncates at 77
        if i % 50 == 7:
            pools_i = pools + [SPECIALS]
        else:
            pools_i = pools
        parts = []
        for _ in range(length):
            word = rng.choice(rng.choice(pools_i))
            word = rng.choice([str.lower, str.upper, str.title, lambda w: w] * 2 + [str.swapcase])(word)
            parts.append(word)
            parts.append(rng.choice(SPACES) if rng.random() < 0.8 else "")
        caption = "".join(parts)
        if i % 7 == 0:
            caption = rng.choice(SPACES) + caption + rng.choice(SPACES)
        out.append(caption)
    return out + ["", " ", "\n\t", "&amp;", "!", "a", "A" * 300, "1" * 200, "word " * 100]


def builtin_captions() -> list[str]:
    rng = random.Random(1)
    out = []
    for template in builtin.FULL_TEMPLATES + builtin.PARTIAL_TEMPLATES:
        for _ in range(20):
            attrs = {"shape": rng.randrange(len(builtin.SHAPES)), "colour": rng.randrange(len(builtin.COLOURS)),
                     "size": rng.randrange(len(builtin.SHAPE_SIZES)), "position": rng.randrange(len(builtin.POSITIONS)),
                     "background": rng.randrange(len(builtin.BACKGROUNDS))}
            out.append(builtin.shapes_caption(template, attrs))
    out += [t.format(name) for t in builtin.DIGIT_TEMPLATES for name in builtin.DIGIT_NAMES]
    out += [p.format(c) for attr in ("shape", "colour") for p in builtin._prompts(attr) for c in ("red", "star")]
    return out


def test_same_ids_as_open_clip():
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    reference = open_clip_tokenizer.SimpleTokenizer()
    captions = random_captions(3000) + builtin_captions()
    ours = clip_tokenizer()
    for length in (77, 16):
        expected = open_clip_tokenizer.tokenize(captions, context_length=length)
        got = ours(captions, context_length=length)
        bad = [c for c, a, b in zip(captions, got, expected) if not torch.equal(a, b)]
        assert not bad, f"{len(bad)} of {len(captions)} captions differ at context {length}, e.g. {bad[:3]!r}"
    truncated = sum(len(reference.encode(c)) > 75 for c in captions)
    assert truncated > 200  # the long captions did exercise truncation
    for caption in captions[:500]:
        assert ours.encode(caption) == reference.encode(caption), caption
        assert clip_clean(caption) == open_clip_tokenizer._clean_lower(caption)
    for caption in [c for c in captions[:300] if "_of_text>" not in clip_clean(c)]:  # decode stops at EOT
        ids = reference.encode(caption)  # our decoder: open_clip's, without its trailing space
        assert ours.decode(ids) == reference.decode(ids).strip()


@needs_clip_file
def test_clip_vocab_specials_and_padding(tmp_path):
    tok = load_tokenizer("clip", context_length=12)
    assert tok.vocab_size == 49408 and (tok.sot_id, tok.eot_id, tok.pad_id) == (49406, 49407, 0)
    assert tok.source == "clip" and not tok.has_pad_token
    ids = tok(["A photo of a cat!!", "word " * 40, ""])
    assert ids.shape == (3, 12) and ids.dtype == torch.long
    assert ids[0].tolist() == [49406, 320, 1125, 539, 320, 2368, 748, 49407, 0, 0, 0, 0]  # 748 is '!!'
    assert ids[1, -1] == 49407 and (ids[1, 1:-1] != 0).all()  # truncated: EOT kept last
    assert ids[2, :3].tolist() == [49406, 49407, 0]
    assert (ids.argmax(-1) == (ids == tok.eot_id).int().argmax(-1)).all()  # EOT is the largest id
    assert tok.decode(ids[0]) == "a photo of a cat !!"
    assert tok.decode(tok(["!hello !"])[0]) == "! hello !"  # id 0 ('!') is text, not padding
    clone = pickle.loads(pickle.dumps(tok))  # DataLoader workers: travels by name
    assert len(pickle.dumps(tok)) < 1000 and torch.equal(clone(["Café &amp; co"]), tok(["Café &amp; co"]))
    saved = load_tokenizer(tok.save(str(tmp_path)), context_length=12)  # a saved copy cleans text the same way
    assert saved.clip_style and torch.equal(saved(["Café &amp; CO’s"]), tok(["Café &amp; CO’s"]))
    assert torch.equal(pickle.loads(pickle.dumps(saved))(["x"]), tok(["x"]))


def test_clip_without_open_clip_says_what_to_install(monkeypatch):
    import pretrain_mm.data.tokenizer as tokenizer

    monkeypatch.setattr(tokenizer.importlib.util, "find_spec", lambda name: None)
    monkeypatch.setattr(tokenizer, "_clip_bpe", tokenizer._clip_bpe.__wrapped__)  # not the cached one
    with pytest.raises(ValueError, match="pip install open_clip_torch"):
        load_tokenizer("clip")


def write_captioned_shards(out_dir, captions, shard_size=8):
    with ShardWriter(str(out_dir), shard_size) as writer:
        for i, caption in enumerate(captions):
            writer.write(f"{i:06d}", {"jpg": toy_image(i, 8), "txt": caption, "json": '{"label": 1}'})


def test_tokenizer_cli_trains_on_shards(tmp_path, capsys):
    captions = builtin_captions()[:80] + ["Café crème brûlée", "naïve &amp; co"]
    write_captioned_shards(tmp_path / "shards", captions)
    out = tmp_path / "shards"
    assert cli(["tokenizer", str(out), str(out), "--vocab-size", "300"]) == 0
    assert f"wrote {out / 'tokenizer.json'}: 300 ids, trained on {len(captions)} captions in 11 shards" \
        in capsys.readouterr().out
    tok = load_tokenizer(str(out), context_length=64)  # where build_tokenizer finds it
    assert tok.vocab_size == 300 and tok.eot_id == 299 and tok.pad_id == 0
    assert tok.decode(tok([captions[0]])[0]) == captions[0]

    # refuses to overwrite, to a file path too; --force does
    before = (out / "tokenizer.json").read_bytes()
    assert cli(["tokenizer", str(out), str(out), "--vocab-size", "280"]) == 1
    err = capsys.readouterr().err
    assert err.count("\n") == 1 and "exists" in err and "--force" in err
    assert cli(["tokenizer", f"{out}/{{00000..00003}}.tar", str(out / "tokenizer.json"), "--vocab-size", "280"]) == 1
    assert (out / "tokenizer.json").read_bytes() == before
    assert cli(["tokenizer", f"{out}/{{00000..00003}}.tar", str(out), "--vocab-size", "280", "--force"]) == 0
    assert "on 32 captions in 4 shards" in capsys.readouterr().out
    assert load_tokenizer(str(out)).vocab_size <= 280

    # a new file path (parents made), another caption key
    assert cli(["tokenizer", str(out), str(tmp_path / "new" / "tok.json"), "--vocab-size", "270",
                "--caption-key", "json:missing;txt"]) == 0
    assert load_tokenizer(str(tmp_path / "new" / "tok.json")).vocab_size == 270


def test_tokenizer_cli_errors(tmp_path, capsys):
    write_toy_shards(str(tmp_path / "shards"), 6, 3, no_caption=range(6))
    pattern = str(tmp_path / "nowhere-{000..003}.tar")
    cases = [([pattern, str(tmp_path / "t.json")], "nowhere-"),  # no shards match
             ([str(tmp_path / "shards"), str(tmp_path / "t.json")], "no captions under caption key 'txt'"),
             ([str(tmp_path / "shards"), str(tmp_path / "t.json"), "--caption-key", "json:caption"],
              "caption key 'json:caption'"),
             ([str(tmp_path / "shards"), str(tmp_path / "t.json"), "--vocab-size", "100"], "vocab_size must be >= 260")]
    for args, message in cases:
        assert cli(["tokenizer", *args]) == 1, args
        err = capsys.readouterr().err  # the progress bar, if reading began, then one line
        assert err.strip().splitlines()[-1].startswith("error: ") and err.count("error: ") == 1, err
        assert message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not os.path.exists(tmp_path / "t.json")
    # the real command line: exit status 1, one line, no traceback
    run = subprocess.run([sys.executable, "-m", "pretrain_mm.data", "tokenizer", pattern, str(tmp_path / "t.json")],
                         capture_output=True, text=True, timeout=120)
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if line.strip()] == [run.stderr.strip()]
    assert "nowhere-" in run.stderr


@needs_clip_file
def test_shards_without_tokenizer_default_to_clip(tmp_path, monkeypatch, caplog):
    write_toy_shards(str(tmp_path / "shards"), 6, 3)
    cfg = DataConfig(name="wds", train=SplitConfig(urls=str(tmp_path / "shards")), context_length=77)
    monkeypatch.setattr(builders, "_said_clip_default", False)
    with caplog.at_level(logging.INFO, logger="pretrain_mm"):
        tokenizers = [builders.build_tokenizer(cfg) for _ in range(3)]
    lines = [r for r in caplog.records if r.name == "pretrain_mm.builders"]
    assert len(lines) == 1 and "data.tokenizer=clip" in lines[0].getMessage()
    assert str(tmp_path / "shards") in lines[0].getMessage()
    assert all(t.source == "clip" and t.vocab_size == 49408 for t in tokenizers)
    batch = next(iter(build_loader(str(tmp_path / "shards"), batch_size=6, tokenizer=tokenizers[0], image_size=8,
                                   train=False)))
    assert torch.equal(batch["text"], tokenizers[0](batch["caption"]))

    # with a tokenizer.json beside the shards (or in their parent) that one is used, silently
    caplog.clear()
    monkeypatch.setattr(builders, "_said_clip_default", False)
    assert cli(["tokenizer", str(tmp_path / "shards"), str(tmp_path), "--vocab-size", "262"]) == 0
    with caplog.at_level(logging.INFO, logger="pretrain_mm"):
        tok = builders.build_tokenizer(cfg)
    assert tok.vocab_size == 262 and tok.source == str(tmp_path / "tokenizer.json")
    assert not [r for r in caplog.records if r.name == "pretrain_mm.builders"]
    assert builders.build_tokenizer(DataConfig(name="wds", train=SplitConfig(urls=str(tmp_path / "shards")),
                                               tokenizer="clip")).source == "clip"
