"""data.tokenizer=clip (OpenAI CLIP's BPE), the default for shards without a tokenizer.json, and
`python -m pretrain_mm.data tokenizer` (a BPE trained on shards' captions). The same ids as open_clip's
on 3,000 hard captions and the command's errors take seconds: tests/integration/test_tokenizer_*.py."""

import importlib.util
import logging
import pickle

import pytest
import torch

import pretrain_mm.builders as builders
from helpers.captions import builtin_captions
from helpers.toy_shards import toy_image, write_toy_shards
from pretrain_mm.config import DataConfig, SplitConfig
from pretrain_mm.data import ShardWriter, build_loader, load_tokenizer
from pretrain_mm.data.__main__ import main as cli

needs_clip_file = pytest.mark.skipif(
    importlib.util.find_spec("open_clip") is None,
    reason="open_clip_torch (which ships CLIP's BPE file) is not installed",
)


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
    assert (
        f"wrote {out / 'tokenizer.json'}: 300 ids, trained on {len(captions)} captions in 11 shards"
        in capsys.readouterr().out
    )
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
    assert (
        cli(
            [
                "tokenizer",
                str(out),
                str(tmp_path / "new" / "tok.json"),
                "--vocab-size",
                "270",
                "--caption-key",
                "json:missing;txt",
            ]
        )
        == 0
    )
    assert load_tokenizer(str(tmp_path / "new" / "tok.json")).vocab_size == 270


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
    batch = next(
        iter(build_loader(str(tmp_path / "shards"), batch_size=6, tokenizer=tokenizers[0], image_size=8, train=False))
    )
    assert torch.equal(batch["text"], tokenizers[0](batch["caption"]))

    # with a tokenizer.json beside the shards (or in their parent) that one is used, silently
    caplog.clear()
    monkeypatch.setattr(builders, "_said_clip_default", False)
    assert cli(["tokenizer", str(tmp_path / "shards"), str(tmp_path), "--vocab-size", "262"]) == 0
    with caplog.at_level(logging.INFO, logger="pretrain_mm"):
        tok = builders.build_tokenizer(cfg)
    assert tok.vocab_size == 262 and tok.source == str(tmp_path / "tokenizer.json")
    assert not [r for r in caplog.records if r.name == "pretrain_mm.builders"]
    assert (
        builders.build_tokenizer(
            DataConfig(name="wds", train=SplitConfig(urls=str(tmp_path / "shards")), tokenizer="clip")
        ).source
        == "clip"
    )
