"""Eval data: the CLIP_benchmark directory reader, the built-in sets, and feature extraction on 1 and 2 ranks."""

import os

import pytest
import torch
from multiprocess import run_distributed

from pretrain_mm.data import ShardWriter, build_loader, train_tokenizer
from pretrain_mm.data.testing import toy_image
from pretrain_mm.config import EvalConfig
from pretrain_mm.eval.datasets import builtin_set, clip_benchmark_set, eval_sets
from pretrain_mm.eval.features import extract_features


def write_split(directory, samples, shard_size, nshards_file=True):
    """CLIP_benchmark's names: 0.tar, 1.tar, ... and nshards.txt."""
    with ShardWriter(str(directory), shard_size, name_format="{:d}.tar") as writer:
        for key, members in samples:
            writer.write(key, members)
    os.remove(directory / "sizes.json")  # CLIP_benchmark's export writes none
    if nshards_file:
        (directory / "nshards.txt").write_text(f"{len(writer.sizes)}\n")


def classification_dir(root, with_train=True):
    root.mkdir()
    write_split(root / "test", [(f"s{i:04d}", {"webp": toy_image(i, fmt="WEBP"), "cls": str(i % 3)})
                                for i in range(10)], 4)
    if with_train:
        write_split(root / "train", [(f"t{i:04d}", {"png": toy_image(i, fmt="PNG"), "cls": str(i % 3)})
                                     for i in range(12)], 5, nshards_file=False)
    (root / "classnames.txt").write_text("cat\ndog\nbird\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    return root


def retrieval_dir(root):
    root.mkdir()
    captions = {i: "\n".join(f"picture {i} caption {j}" for j in range(1 + i % 3)) for i in range(7)}
    write_split(root / "test", [(f"r{i:04d}", {"jpg": toy_image(i), "txt": captions[i]}) for i in range(7)], 3)
    return root


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

    tokenizer = train_tokenizer([f"picture {i} caption {j}" for i in range(9) for j in range(3)], vocab_size=300,
                                context_length=12)
    loader = build_loader(ds.test_urls, batch_size=3, tokenizer=tokenizer, image_size=16, train=False,
                          caption_key=ds.caption_key)
    feats = extract_features(loader, {"t": lambda x: x.mean(dim=(2, 3))}, torch.device("cpu"),
                             text_encoders={"t": lambda tokens: tokens[:, :4].float()}, tokenizer=tokenizer,
                             split_captions=True)
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
    e = EvalConfig(zeroshot=[], retrieval=[], classification=[],
                   clip_benchmark_dirs=[str(classification_dir(tmp_path / "a")), str(retrieval_dir(tmp_path / "b"))])
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


def _extract(rank, world_size, labelled_urls, captioned_urls, single_urls, tokenizer):
    """Both kinds of split: labels (shards of unequal sizes: the ranks get 6 and 4 samples) and
    several captions per image (the owners must be renumbered across ranks); and a split of one
    sample, which leaves a rank with nothing (it must still take part in the gathers)."""
    cpu, mean = torch.device("cpu"), {"mean": lambda x: x.mean(dim=(2, 3))}
    labelled = extract_features(build_loader(labelled_urls, batch_size=3, image_size=16, train=False,
                                             label_key="cls"), mean, cpu)
    captioned = extract_features(build_loader(captioned_urls, batch_size=2, tokenizer=tokenizer, image_size=16,
                                              train=False), mean, cpu, tokenizer=tokenizer, split_captions=True,
                                 text_encoders={"mean": lambda tokens: tokens[:, :5].float()})
    single = extract_features(build_loader(single_urls, batch_size=3, image_size=16, train=False, label_key="cls"),
                              mean, cpu)
    return (labelled.keys, labelled.image["mean"], labelled.labels["label"], captioned.keys, captioned.captions,
            captioned.text_image, captioned.text["mean"], single.keys, single.image["mean"], single.labels["label"])


def test_extraction_on_two_ranks_equals_one(tmp_path):
    labelled = clip_benchmark_set(classification_dir(tmp_path / "labelled", with_train=False)).test_urls
    captioned = clip_benchmark_set(retrieval_dir(tmp_path / "captioned")).test_urls
    tokenizer = train_tokenizer([f"picture {i} caption {j}" for i in range(9) for j in range(3)], vocab_size=300,
                                context_length=12)
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    write_split(lonely, [("only", {"jpg": toy_image(3), "cls": "2"})], 1)
    single = _extract(0, 1, labelled, captioned, [str(lonely / "0.tar")], tokenizer)
    assert single[0] == sorted(single[0]) and len(single[4]) == 13 and single[7] == ["only"]
    for result in run_distributed(_extract, 2, tmp_path, labelled, captioned, [str(lonely / "0.tar")], tokenizer):
        for ours, theirs in zip(result, single):  # sorted by key, whatever rank read a sample
            if isinstance(ours, torch.Tensor):
                torch.testing.assert_close(ours, theirs)
            else:
                assert ours == theirs
