"""The reading pipeline with DataLoader worker processes: every sample once an epoch, ranks and workers
splitting the shards, seeded shuffling, bad data counted across workers, resampled epochs (the pipeline
without workers: tests/unit/test_data_pipeline.py)."""

import json
import subprocess
import sys

import pytest

from helpers.toy_shards import truncate, write_toy_shards
from pretrain_mm.data import build_loader, train_tokenizer

N = 40


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"caption {i}" for i in range(200)], vocab_size=300, context_length=8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    return write_toy_shards(str(tmp_path_factory.mktemp("shards")), N, 8)  # 5 shards


def keys_of(loader):
    return [k for batch in loader for k in batch["key"]]


def all_keys(n=N):
    return [f"{i:06d}" for i in range(n)]


@pytest.mark.parametrize("workers", [1, 2])
@pytest.mark.parametrize("train", [False, True])
def test_every_sample_once_per_epoch(shards, tokenizer, workers, train):
    loader = build_loader(
        shards, batch_size=6, tokenizer=tokenizer, image_size=16, train=train, num_workers=workers, label_key="cls"
    )
    for _ in range(2):  # two epochs
        seen = keys_of(loader)
        assert sorted(seen) == all_keys()
    if not train and workers == 0:
        assert seen == all_keys()  # eval order is the shard order
    assert loader.skipped == {}


def test_two_ranks_split_the_epoch(shards):
    per_rank = [
        keys_of(build_loader(shards, batch_size=4, image_size=16, num_workers=2, rank=r, world_size=2))
        for r in range(2)
    ]
    assert not set(per_rank[0]) & set(per_rank[1])
    assert sorted(per_rank[0] + per_rank[1]) == all_keys()


def test_fewer_shards_than_ranks_and_workers_still_delivers(tmp_path):
    one = write_toy_shards(str(tmp_path), 13, 100)  # a single shard
    seen = []
    for rank in range(2):
        with pytest.warns(UserWarning, match="1 shards for 2 rank"):
            loader = build_loader(one, batch_size=3, image_size=16, num_workers=2, rank=rank, world_size=2)
        seen.append(keys_of(loader))
    assert all(seen) and not set(seen[0]) & set(seen[1])
    assert sorted(seen[0] + seen[1]) == all_keys(13)


def test_shuffling_changes_order_not_content(shards):
    def order(seed, epoch=0):
        loader = build_loader(shards, batch_size=8, image_size=16, train=True, num_workers=2, seed=seed)
        loader.set_epoch(epoch)
        return keys_of(loader)

    a, b = order(0), order(1)
    assert a != b and sorted(a) == sorted(b) == all_keys()
    assert order(0) == a  # seeded: reproducible
    assert order(0, epoch=1) != a


def test_bad_data_is_skipped_and_counted_across_workers(tmp_path, tokenizer):
    urls = write_toy_shards(str(tmp_path), 40, 8, bad_image=[1, 9, 17], no_caption=[2, 30])
    truncate(urls[4], 0.5)  # samples 32..39: some survive, the rest is lost
    (tmp_path / "00005.tar").write_bytes(b"garbage" * 100)
    urls.append(str(tmp_path / "00005.tar"))
    loader = build_loader(urls, batch_size=4, tokenizer=tokenizer, image_size=16, num_workers=2)
    seen = keys_of(loader)
    survivors = [k for k in seen if k >= "000032"]
    assert sorted(k for k in seen if k < "000032") == [k for k in all_keys(32) if int(k) not in (1, 2, 9, 17, 30)]
    assert 0 < len(survivors) < 8
    assert loader.skipped == {"bad_image": 3, "no_caption": 2, "truncated_shard": 1, "unreadable_shard": 1}
    keys_of(loader)  # counts add up over epochs
    assert loader.skipped["bad_image"] == 6
    # without a tokenizer captions are not needed
    assert build_loader(urls[:1], batch_size=4, image_size=16).skipped == {}


def test_resampled_epochs_have_fixed_length(shards):
    loader = build_loader(
        shards, batch_size=4, image_size=16, num_workers=2, resampled=True, samples_per_epoch=50, rank=1, world_size=2
    )
    assert len(loader) == 8  # ceil(50 / (2 ranks * 4 * 2 workers)) = 4 batches per worker
    for _ in range(2):
        batches = list(loader)
        assert len(batches) == 8 and all(len(b["key"]) == 4 for b in batches)
    assert set(keys_of(loader)) <= set(all_keys())
    default = build_loader(shards, batch_size=8, image_size=16, resampled=True)
    assert len(default) == N // 8  # sizes.json gives the epoch


# Every worker gets each stop signal by its pid (as `pkill -f` or Slurm send them) and still delivers; the
# process then exits with its iterator never closed, where multiprocessing terminates and joins the workers.
SIGNALLED_WORKERS = """
import json, multiprocessing, os, signal, sys
from pretrain_mm.data import build_loader
from pretrain_mm.data.pipeline import RUN_SIGNALS

for sig in RUN_SIGNALS:
    signal.signal(sig, signal.SIG_IGN)  # this process stands for the trainer, which handles them
urls = json.loads(sys.argv[1])
loader = build_loader(urls, batch_size=2, image_size=16, num_workers=2, resampled=True, samples_per_epoch=400)
batches = iter(loader)
next(batches)
workers = multiprocessing.active_children()
assert len(workers) == 2, workers
for worker in workers:
    for sig in RUN_SIGNALS:
        os.kill(worker.pid, sig)
for _ in range(20):
    next(batches)
print("delivered", flush=True)
"""


def test_workers_outlive_stop_signals_and_end_with_their_process(shards):
    out = subprocess.run(
        [sys.executable, "-c", SIGNALLED_WORKERS, json.dumps(shards)], capture_output=True, text=True, timeout=60
    )
    assert out.returncode == 0 and out.stdout == "delivered\n", out.stderr[-3000:]
