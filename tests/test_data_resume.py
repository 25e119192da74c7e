"""Loader state_dict/load_state_dict resume the exact data position; the global RNGs stay untouched; uint8 batches."""

import io
import json
import random
import warnings

import pytest
import torch
from PIL import Image

from pretrain_mm.data import build_loader, train_tokenizer
from pretrain_mm.data.testing import truncate, write_toy_shards

N, BATCH, BUFFER = 40, 4, 10


def noise_jpeg(index: int, size: int = 32) -> bytes:
    """An image whose every pixel differs, so that a different crop or flip shows in the batch
    (the toy images are one colour, which any crop leaves unchanged)."""
    gen = torch.Generator().manual_seed(index)
    pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=gen)
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


@pytest.fixture(scope="module")
def tokenizer():
    return train_tokenizer([f"caption {i}" for i in range(200)], vocab_size=300, context_length=8)


@pytest.fixture(scope="module")
def shards(tmp_path_factory):
    extra = {i: {"jpg": noise_jpeg(i)} for i in range(N)}
    return write_toy_shards(str(tmp_path_factory.mktemp("noisy")), N, 8, extra=extra)  # 5 shards


@pytest.fixture(scope="module")
def bad_shards(tmp_path_factory):
    """Bad images and a missing caption (skipped when decoding), a truncated shard and an
    unreadable one (skipped when reading)."""
    out = tmp_path_factory.mktemp("bad")
    urls = write_toy_shards(str(out), N, 8, bad_image=[1, 9, 17, 22, 26], no_caption=[5, 30])
    truncate(urls[4], 0.5)
    (out / "00005.tar").write_bytes(b"garbage" * 100)
    return urls + [str(out / "00005.tar")]


def make(urls, tokenizer, workers, resampled, **kw):
    """The training loader's arguments (pretrain_mm/builders.build_train_loader), small."""
    return build_loader(urls, batch_size=BATCH, tokenizer=tokenizer, image_size=16, train=True,
                        num_workers=workers, seed=7, resampled=resampled, rank=0, world_size=1,
                        shuffle_buffer=BUFFER, drop_last=True, **kw)


def take(loader, n, batches=None):
    """The next n batches as the trainer gets them: next() on an epoch's iterator, a new iter()
    (the next epoch) when one ends. Returns them and the live iterator."""
    out, batches = [], batches or iter(loader)
    while len(out) < n:
        batch = next(batches, None)
        if batch is None:
            batches = iter(loader)
            continue
        out.append(batch)
    return out, batches


def assert_same(got, expected):
    assert [b["key"] for b in got] == [b["key"] for b in expected]
    for g, e in zip(got, expected, strict=True):
        assert g["image"].dtype == e["image"].dtype and torch.equal(g["image"], e["image"])
        assert torch.equal(g["text"], e["text"]) and g["caption"] == e["caption"]


def resume(urls, tokenizer, workers, resampled, cut, total, **kw):
    """Run an uninterrupted loader for `total` batches, and another for `cut` batches whose state
    a third, new loader loads and runs for the rest. Returns the three loaders, their batches
    and the state."""
    reference = make(urls, tokenizer, workers, resampled, **kw)
    expected, _ = take(reference, total)
    first = make(urls, tokenizer, workers, resampled, **kw)
    before, _ = take(first, cut)
    assert_same(before, expected[:cut])
    state = json.loads(json.dumps(first.state_dict()))  # also survives JSON (string keys, lists)
    resumed = make(urls, tokenizer, workers, resampled, **kw)
    resumed.load_state_dict(state)
    assert resumed.state_dict() == first.state_dict()
    after, _ = take(resumed, total - cut)
    return {"reference": reference, "first": first, "resumed": resumed, "expected": expected[cut:], "got": after,
            "state": state}


# 10 batches an epoch. Resampled: 5 per worker at W=2 (odd cuts: worker 1 is next; at 9 worker 0 is
# done). Finite: the 5 shards deal 24 + 16 samples to the W=2 workers (6 + 4 batches: worker 1
# ends first, after batch 8; at cut 9 worker 0 is next, at 10 the epoch is over but not yet ended).
@pytest.mark.parametrize("workers,resampled,cut", [
    (0, True, 3), (0, True, 10), (2, True, 7), (2, True, 9), (2, True, 10), (2, True, 12),
    (0, False, 6), (2, False, 3), (2, False, 9), (2, False, 10)])
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
    epochs = [{k: img for batch in loader for k, img in zip(batch["key"], batch["image"], strict=True)}
              for _ in range(2)]
    assert sum(not torch.equal(img, epochs[1][k]) for k, img in epochs[0].items()) > len(epochs[0]) // 2


@pytest.mark.parametrize("workers", [0, 2])
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
    for bad in ({"positions": {}}, {"epoch": -1}, {"epoch": "x"}, [1, 2],
                {"epoch": 0, "positions": {"0": {"batches": 1}}, "layout": loader.layout},
                {"epoch": 0, "positions": {"3": [1, 4]}, "layout": loader.layout}):
        with pytest.raises(ValueError, match="state|worker"):
            make(shards, tokenizer, 0, True).load_state_dict(bad)
    two = make(shards, tokenizer, 2, True)
    take(two, 3)
    with pytest.warns(UserWarning, match="cannot be replayed"):
        loader.load_state_dict(two.state_dict())  # saved with 2 workers, loaded into 0
    assert loader.state_dict()["epoch"] == 1 and loader.state_dict()["positions"] == {}


@pytest.mark.parametrize("workers", [0, 2])
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
