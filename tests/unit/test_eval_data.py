"""Eval data: the CLIP_benchmark directory reader, the built-in sets, and feature extraction on 1 rank
(on 2 ranks: tests/integration/test_eval_data_two_ranks.py)."""

import os

import pytest
import torch

from helpers.clip_benchmark_dirs import classification_dir, retrieval_dir
from pretrain_mm.config import EvalConfig
from pretrain_mm.data import build_loader, train_tokenizer
from pretrain_mm.eval.datasets import builtin_set, clip_benchmark_set, eval_sets
from pretrain_mm.eval.features import extract_features


def test_clip_benchmark_classification_dir(tmp_path):
    ds = clip_benchmark_set(classification_dir(tmp_path / "cifar_mini"))
    assert ds.name == "cifar_mini" and ds.label_key == "cls" and ds.caption_key is None
    assert [os.path.basename(u) for u in ds.test_urls] == ["0.tar", "1.tar", "2.tar"]
    assert [os.path.basename(u) for u in ds.train_urls] == ["0.tar", "1.tar", "2.tar"]  # found without nshards.txt
    assert ds.classification and ds.classnames == ["cat", "dog", "bird"]
    task = ds.zeroshot["label"]
    assert task.label == "label" and task.templates == ["a photo of a {c}.", "a drawing of a {c}."]

    loader = build_loader(ds.test_urls, batch_size=4, image_size=16, train=False, label_key=ds.label_key)
    feats = extract_features(loader, {"mean": lambda x: x.mean(dim=(2, 3))}, torch.device("cpu"))
    assert feats.keys == [f"s{i:04d}" for i in range(10)]
    assert feats.labels["label"].tolist() == [i % 3 for i in range(10)]


def test_clip_benchmark_retrieval_dir_splits_captions(tmp_path):
    ds = clip_benchmark_set(retrieval_dir(tmp_path / "flickr_mini"))  # no dataset_type.txt: .txt only
    assert ds.caption_key == "txt" and ds.split_captions and not ds.classification and not ds.zeroshot

    tokenizer = train_tokenizer(
        [f"picture {i} caption {j}" for i in range(9) for j in range(3)], vocab_size=300, context_length=12
    )
    loader = build_loader(
        ds.test_urls, batch_size=3, tokenizer=tokenizer, image_size=16, train=False, caption_key=ds.caption_key
    )
    feats = extract_features(
        loader,
        {"t": lambda x: x.mean(dim=(2, 3))},
        torch.device("cpu"),
        text_encoders={"t": lambda tokens: tokens[:, :4].float()},
        tokenizer=tokenizer,
        split_captions=True,
    )
    assert len(feats) == 7 and len(feats.captions) == sum(1 + i % 3 for i in range(7))
    for caption, owner in zip(feats.captions, feats.text_image.tolist()):
        assert caption.startswith(f"picture {owner} ")
    assert feats.text["t"].shape == (len(feats.captions), 4)


def test_clip_benchmark_errors(tmp_path):
    with pytest.raises(ValueError, match="not a directory"):
        clip_benchmark_set(tmp_path / "nope")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match="no test"):
        clip_benchmark_set(tmp_path / "empty")
    root = classification_dir(tmp_path / "multi", with_train=False)
    (root / "dataset_type.txt").write_text("multilabel\n")
    with pytest.raises(ValueError, match="multilabel"):
        clip_benchmark_set(root)
    (root / "dataset_type.txt").unlink()
    (root / "test" / "nshards.txt").write_text("5\n")
    with pytest.raises(ValueError, match="says 5 shards"):
        clip_benchmark_set(root)


def test_clip_benchmark_dirs_join_the_eval_sets(tmp_path):
    e = EvalConfig(
        zeroshot=[],
        retrieval=[],
        classification=[],
        captioning=[],
        clip_benchmark_dirs=[str(classification_dir(tmp_path / "a")), str(retrieval_dir(tmp_path / "b"))],
    )
    assert [s.name for s in eval_sets(e)] == ["a", "b"]


def test_builtin_shapes_zero_shot_attributes():
    e = EvalConfig(classification=["digits"], shapes_attributes=["colour", "shape"])
    shapes = builtin_set("shapes", e)
    assert set(shapes.zeroshot) == {"colour", "shape"} and shapes.caption_key == "json:full_caption"
    assert shapes.zeroshot["shape"].label == "label" and shapes.zeroshot["colour"].label == "colour"
    assert shapes.json_labels == ["colour"] and not shapes.classification
    digits = builtin_set("digits", e)
    assert digits.classification and digits.label_key == "cls" and len(digits.classnames) == 10
    with pytest.raises(ValueError, match="no attribute 'hue'"):
        builtin_set("shapes", EvalConfig(shapes_attributes=["hue"]))
    with pytest.raises(ValueError, match="no attribute 'hue'"):  # captioning checks the same attributes
        builtin_set("shapes", EvalConfig(zeroshot=[], captioning=["shapes"], shapes_attributes=["hue"]))
