"""Loader state_dict/load_state_dict with 2 DataLoader worker processes: each worker's position resumes
exactly, skips count once, the global RNGs stay untouched, and a state saved with 2 workers loaded into 0
(the same tests without workers: tests/unit/test_data_resume.py)."""

import random
import warnings

import pytest
import torch

from helpers.loader_resume import assert_same, make, resume, small_tokenizer, take, write_bad_shards, write_noisy_shards


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
@pytest.mark.parametrize(
    "workers,resampled,cut",
    [(2, True, 7), (2, True, 9), (2, True, 10), (2, True, 12), (2, False, 3), (2, False, 9), (2, False, 10)],
)
def test_resume_delivers_what_the_uninterrupted_loader_would(shards, tokenizer, workers, resampled, cut):
    run = resume(shards, tokenizer, workers, resampled, cut, cut + 13)
    assert_same(run["got"], run["expected"])  # the rest of the epoch, the next one whole, into the one after
    state = run["state"]
    if cut % 10:  # mid-epoch: each worker's position
        assert state["epoch"] == cut // 10 and sum(p["batches"] for p in state["positions"].values()) == cut % 10
    elif resampled:  # a resampled epoch is known to be over: the state is the next one's start
        assert state["epoch"] == cut // 10 and state["positions"] == {}
    assert run["first"].skipped == run["resumed"].skipped == {}


@pytest.mark.parametrize("workers", [2])
def test_resume_counts_each_skip_once(bad_shards, tokenizer, workers):
    with warnings.catch_warnings():
        warnings.simplefilter("ignore")  # the shards are few for the workers
        run = resume(bad_shards, tokenizer, workers, True, 7, 17)
    assert_same(run["got"], run["expected"])
    saved = run["state"]["skipped"]
    assert saved == run["first"].skipped and {"bad_image", "truncated_shard", "unreadable_shard"} <= set(saved)
    assert run["resumed"].skipped == run["reference"].skipped
    assert sum(run["resumed"].skipped.values()) > sum(saved.values())  # more were skipped after the cut


def test_old_states_and_bad_states(shards, tokenizer):
    loader = make(shards, tokenizer, 0, True)
    loader.load_state_dict({"epoch": 1, "skipped": {"bad_image": 2}})  # before positions were saved
    fresh = make(shards, tokenizer, 0, True)
    fresh.set_epoch(1)
    assert_same(list(loader), list(fresh))
    assert loader.skipped == {"bad_image": 2} and loader.state_dict()["epoch"] == 2
    for bad in (
        {"positions": {}},
        {"epoch": -1},
        {"epoch": "x"},
        [1, 2],
        {"epoch": 0, "positions": {"0": {"batches": 1}}, "layout": loader.layout},
        {"epoch": 0, "positions": {"3": [1, 4]}, "layout": loader.layout},
    ):
        with pytest.raises(ValueError, match="state|worker"):
            make(shards, tokenizer, 0, True).load_state_dict(bad)
    two = make(shards, tokenizer, 2, True)
    take(two, 3)
    with pytest.warns(UserWarning, match="cannot be replayed"):
        loader.load_state_dict(two.state_dict())  # saved with 2 workers, loaded into 0
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["positions"] == {}


@pytest.mark.parametrize("workers", [2])
def test_iterating_leaves_the_global_rngs_alone(shards, tokenizer, workers):
    torch.manual_seed(0)
    random.seed(0)
    torch_state, py_state = torch.get_rng_state(), random.getstate()
    take(make(shards, tokenizer, workers, True), 12)  # across an epoch boundary
    assert torch.equal(torch.get_rng_state(), torch_state) and random.getstate() == py_state
