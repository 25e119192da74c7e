"""Built-in datasets (made on first use, cached, deterministic) and the BPE tokenizer (the digits set, built
from scikit-learn's scans in seconds: tests/integration/test_data_builtin_digits.py)."""

import hashlib
import os
import pickle

import pytest
import torch

import pretrain_mm.data.builtin as builtin
from pretrain_mm.data import build_loader, builtin_info, check_shards, get_builtin, load_tokenizer, train_tokenizer

SMALL = {"num_train": 120, "num_val": 40}


def tree_digest(root):
    out = {}
    for dirpath, _, files in os.walk(root):
        for name in files:
            path = os.path.join(dirpath, name)
            out[os.path.relpath(path, root)] = hashlib.sha256(open(path, "rb").read()).hexdigest()
    return out


def test_shapes_generate_cache_and_load(tmp_path, monkeypatch):
    monkeypatch.setenv("PRETRAIN_MM_DATA", str(tmp_path / "cache"))
    train = get_builtin("shapes", "train", **SMALL)
    val = get_builtin("shapes", "val", **SMALL)
    assert len(train) == 1 and len(val) == 1 and str(tmp_path / "cache") in train[0]
    mtime = os.path.getmtime(train[0])
    assert get_builtin("shapes", "train", **SMALL) == train and os.path.getmtime(train[0]) == mtime  # cached
    info = builtin_info("shapes", **SMALL)
    assert info["classes"]["colour"][:2] == ["red", "green"] and len(info["classes"]["shape"]) == 6
    assert all(p.count("{}") == 1 and "{}" not in p.format("red") for p in info["prompts"]["colour"])

    tokenizer = load_tokenizer(os.path.dirname(os.path.dirname(train[0])), context_length=32)
    for caption_key, attr in (("txt", "shape"), ("json:full_caption", "colour"), ("json:full_caption", "position")):
        loader = build_loader(
            val,
            batch_size=40,
            tokenizer=tokenizer,
            image_size=32,
            train=False,
            caption_key=caption_key,
            label_key=info["label_keys"][attr],
        )
        (batch,) = list(loader)
        assert batch["image"].shape == (40, 3, 32, 32) and batch["label"].max() < len(info["classes"][attr])
        for caption, label in zip(batch["caption"], batch["label"]):
            assert f" {info['classes'][attr][label]}" in caption  # every caption names the shape
        assert all(tokenizer.decode(t) == c for t, c in zip(batch["text"], batch["caption"]))
        assert len({c for c in batch["caption"]}) > 30  # varied captions
    assert not check_shards(train, label_key="json:shape", progress=False, write_sizes_json=False).bad

    # another root: the same bytes (deterministic)
    other = builtin.builtin_dir("shapes", str(tmp_path / "other"), **SMALL)
    assert tree_digest(other) == tree_digest(os.path.dirname(os.path.dirname(train[0])))


def test_interrupted_build_leaves_nothing(tmp_path, monkeypatch):
    def boom(name, out_dir, **kw):
        os.makedirs(os.path.join(out_dir, "train"))
        open(os.path.join(out_dir, "train", "00000.tar"), "wb").close()
        raise KeyboardInterrupt

    monkeypatch.setattr(builtin, "write_builtin", boom)
    with pytest.raises(KeyboardInterrupt):
        get_builtin("shapes", root=str(tmp_path), **SMALL)
    assert [n for n in os.listdir(tmp_path) if not n.endswith(".lock")] == []


def test_unknown_names_are_clear(tmp_path):
    with pytest.raises(ValueError, match="unknown built-in dataset 'cifar'"):
        get_builtin("cifar", root=str(tmp_path))
    with pytest.raises(ValueError, match="no parameter"):
        get_builtin("digits", root=str(tmp_path), num_train=5)
    with pytest.raises(ValueError, match="neither a built-in"):
        load_tokenizer("no-such-tokenizer")


def test_tokenizer_round_trip(tmp_path):
    texts = ["a small red circle at the top left", "a large blue star", "café naïve ☕ 12345"] * 20
    tok = train_tokenizer(texts, vocab_size=400, context_length=12)
    assert tok.vocab_size <= 400 and tok.pad_id == 0 and tok.eot_id == tok.vocab_size - 1
    ids = tok(texts[:3])
    assert ids.shape == (3, 12) and ids.dtype == torch.long
    assert [tok.decode(row) for row in ids[:2]] == texts[:2]
    assert tok.decode(tok(["Café NAÏVE ☕"])[0]) == "café naïve ☕"  # byte-level: any text, lower-cased
    assert (ids.argmax(-1) == (ids == tok.eot_id).int().argmax(-1)).all()  # EOT is the largest id
    long = tok(["word " * 50])[0]
    assert long[0] == tok.sot_id and long[-1] == tok.eot_id and (long != tok.pad_id).all()
    path = tok.save(str(tmp_path))
    again = load_tokenizer(path, context_length=12)
    assert again(texts).equal(tok(texts)) and load_tokenizer(str(tmp_path), 12)(texts).equal(tok(texts))
    assert pickle.loads(pickle.dumps(tok))(texts).equal(tok(texts))
    assert train_tokenizer(texts, vocab_size=400).hf.to_str() == tok.hf.to_str()  # deterministic
