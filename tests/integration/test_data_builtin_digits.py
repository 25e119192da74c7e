"""The built-in digits set (scikit-learn's 1,797 scans, built on first use in seconds): its splits and labels,
and a mixture weight repeating its training shards (the other built-in sets and the tokenizer:
tests/unit/test_data_builtin.py)."""

import pytest
import torch

import pretrain_mm.data.builtin as builtin
from pretrain_mm.data import build_loader, builtin_info, get_builtin, load_tokenizer


def test_digits_splits_and_labels(tmp_path):
    root = str(tmp_path)
    train, val = get_builtin("digits", "train", root=root), get_builtin("digits", "val", root=root)

    def count(urls):
        return sum(len(b["key"]) for b in build_loader(urls, batch_size=256, image_size=32, train=False))

    assert count(train) == 1437 and count(val) == 360
    loader = build_loader(
        val,
        batch_size=360,
        image_size=32,
        train=False,
        label_key="cls",
        tokenizer=load_tokenizer(builtin.builtin_dir("digits", root)),
    )
    (batch,) = list(loader)
    assert all(30 <= n <= 42 for n in torch.bincount(batch["label"], minlength=10).tolist())  # stratified
    names = builtin_info("digits", root)["classes"]["label"]
    assert all(names[label] in caption for caption, label in zip(batch["caption"], batch["label"]))
    assert not set(batch["key"]) & {k for b in build_loader(train, batch_size=512, image_size=8) for k in b["key"]}


def raw_pixel_probe_accuracy(root, **overrides):
    """A logistic regression on the val images' raw pixels, fit on the train images'."""
    from sklearn.linear_model import LogisticRegression
    from sklearn.preprocessing import StandardScaler

    def pixels(split):
        urls = get_builtin("digits", split, root=root, **overrides)
        batches = list(build_loader(urls, batch_size=2048, image_size=16, train=False, label_key="cls"))
        return torch.cat([b["image"] for b in batches]).flatten(1).numpy(), torch.cat([b["label"] for b in batches])

    (x_train, y_train), (x_val, y_val) = pixels("train"), pixels("val")
    scale = StandardScaler().fit(x_train)
    probe = LogisticRegression(max_iter=2000).fit(scale.transform(x_train), y_train.numpy())
    return probe.score(scale.transform(x_val), y_val.numpy())


def test_digits_at_random_places_are_not_separable_by_raw_pixels(tmp_path):
    # What the linear probe of an image tower is for: with the scan filling the image (the old set)
    # raw pixels separate the digits (96%) and a random tower's probe scored 98%, so no tower could
    # beat it by much; at a random size and place raw pixels score 41% (chance 10%).
    assert raw_pixel_probe_accuracy(str(tmp_path), placement="fill") > 0.9
    assert raw_pixel_probe_accuracy(str(tmp_path)) < 0.5
    with pytest.raises(ValueError, match="placement must be one of"):
        get_builtin("digits", "val", root=str(tmp_path), placement="centre")


def test_a_mixture_weight_repeats_that_sets_training_shards(tmp_path):
    from types import SimpleNamespace

    from pretrain_mm.builders import builtin_names, split_urls

    def data(name):
        return SimpleNamespace(
            name=name, root=str(tmp_path), train=SimpleNamespace(urls=None), val=SimpleNamespace(urls=None)
        )

    digits = {split: get_builtin("digits", split, root=str(tmp_path)) for split in ("train", "val")}
    assert split_urls(data("digits*3"), "train") == digits["train"] * 3
    assert split_urls(data("digits*3"), "val") == digits["val"]  # evaluation reads each sample once
    assert builtin_names(data("digits*3")) == ["digits"] and builtin_names(data("/d/x.tar")) == []
    for bad in ("digits*0", "digits*x", "digits*"):
        with pytest.raises(ValueError, match="whole number"):
            split_urls(data(bad), "train")
