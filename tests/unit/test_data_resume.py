"""Loader state_dict/load_state_dict resume the exact data position; the global RNGs stay untouched; uint8 batches.
Without worker processes: the same tests with 2 DataLoader workers are in
tests/integration/test_data_resume_workers.py."""

import random
import warnings

import pytest
import torch

from helpers.loader_resume import (
    BATCH,
    assert_same,
    make,
    resume,
    small_tokenizer,
    take,
    write_bad_shards,
    write_noisy_shards,
)


@pytest.fixture(scope="module")
def tokenizer():
    return small_tokenizer()


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_noisy_shards(tmp_path_factory.mktemp("noisy"))


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    return write_bad_shards(tmp_path_factory.mktemp("bad"))


# 10 batches an epoch. Resampled: 5 per worker at W=2 (odd cuts: worker 1 is next; at 9 worker 0 is
# done). Finite: the 5 shards deal 24 + 16 samples to the W=2 workers (6 + 4 batches: worker 1
# ends first, after batch 8; at cut 9 worker 0 is next, at 10 the epoch is over but not yet ended).
@pytest.mark.parametrize("workers,resampled,cut", [(0, True, 3), (0, True, 10), (0, False, 6)])
def test_resume_delivers_what_the_uninterrupted_loader_would(shards, tokenizer, workers, resampled, cut):
    run = resume(shards, tokenizer, workers, resampled, cut, cut + 13)
    assert_same(run["got"], run["expected"])  # the rest of the epoch, the next one whole, into the one after
    state = run["state"]
    if cut % 10:  # mid-epoch: each worker's position
        assert state["epoch"] == cut // 10 and sum(p["batches"] for p in state["positions"].values()) == cut % 10
    elif resampled:  # a resampled epoch is known to be over: the state is the next one's start
        assert state["epoch"] == cut // 10 and state["positions"] == {}
    assert run["first"].skipped == run["resumed"].skipped == {}


def test_noisy_images_show_the_augmentation(shards, tokenizer):
    """The comparisons above see the crop and flip: one sample in two epochs (two augment draws)
    gives other pixels."""
    loader = make(shards, tokenizer, 0, False)
    epochs = [
        {k: img for batch in loader for k, img in zip(batch["key"], batch["image"], strict=True)} for _ in range(2)
    ]
    assert sum(not torch.equal(img, epochs[1][k]) for k, img in epochs[0].items()) > len(epochs[0]) // 2


@pytest.mark.parametrize("workers", [0])
def test_resume_counts_each_skip_once(bad_shards, tokenizer, workers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shards are few for the workers
        run = resume(bad_shards, tokenizer, workers, True, 7, 17)
    assert_same(run["got"], run["expected"])
    saved = run["state"]["skipped"]
    assert saved == run["first"].skipped and {"bad_image", "truncated_shard", "unreadable_shard"} <= set(saved)
    assert run["resumed"].skipped == run["reference"].skipped
    assert sum(run["resumed"].skipped.values()) > sum(saved.values())  # more were skipped after the cut


@pytest.mark.parametrize("workers", [0])
def test_iterating_leaves_the_global_rngs_alone(shards, tokenizer, workers):
    torch.manual_seed(0)
    random.seed(0)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    take(make(shards, tokenizer, workers, True), 12)  # across an epoch boundary
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state


@pytest.mark.parametrize("device", [None, "cpu"])
def test_uint8_batches_normalised_by_the_caller(shards, tokenizer, device):
    raw, _ = take(make(shards, tokenizer, 0, True, normalize=False, device=device), 3)
    loader = make(shards, tokenizer, 0, True)
    normalised, _ = take(loader, 3)
    for r, n in zip(raw, normalised, strict=True):
        assert r["image"].dtype == torch.uint8 and r["image"].shape == (BATCH, 3, 16, 16)
        assert n["image"].dtype == torch.float32 and torch.equal(loader.normalize(r["image"]), n["image"])
        assert r["key"] == n["key"] and torch.equal(r["text"], n["text"])
