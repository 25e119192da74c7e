"""Loaders cut and resumed on small shard sets, for the tests of the loader's state_dict / load_state_dict
(tests/unit/test_data_resume.py without worker processes, tests/integration/test_data_resume_workers.py
with them)."""

import io
import json

import torch
from PIL import Image

from helpers.toy_shards import truncate, write_toy_shards
from pretrain_mm.data import build_loader, train_tokenizer

N, BATCH, BUFFER = 40, 4, 10


def noise_jpeg(index: int, size: int = 32) -> bytes:
    """An image whose every pixel differs, so that a different crop or flip shows in the batch
    (the toy images are one colour, which any crop leaves unchanged)."""
    gen = torch.Generator().manual_seed(index)
    pixels = torch.randint(0, 256, (size, size, 3), dtype=torch.uint8, generator=gen)
    buf = io.BytesIO()
    Image.fromarray(pixels.numpy()).save(buf, format="JPEG", quality=95)
    return buf.getvalue()


def small_tokenizer():
    return train_tokenizer([f"caption {i}" for i in range(200)], vocab_size=300, context_length=8)


def write_noisy_shards(out_dir):
    """N samples whose images are noise (so that crops and flips show), in 5 shards."""
    extra = {i: {"jpg": noise_jpeg(i)} for i in range(N)}
    return write_toy_shards(str(out_dir), N, 8, extra=extra)  # 5 shards


def write_bad_shards(out):
    """Bad images and a missing caption (skipped when decoding), a truncated shard and an
    unreadable one (skipped when reading)."""
    urls = write_toy_shards(str(out), N, 8, bad_image=[1, 9, 17, 22, 26], no_caption=[5, 30])
    truncate(urls[4], 0.5)
    (out / "00005.tar").write_bytes(b"garbage" * 100)
    return urls + [str(out / "00005.tar")]


def make(urls, tokenizer, workers, resampled, **kw):
    """The training loader's arguments (pretrain_mm/builders.build_train_loader), small."""
    return build_loader(
        urls,
        batch_size=BATCH,
        tokenizer=tokenizer,
        image_size=16,
        train=True,
        num_workers=workers,
        seed=7,
        resampled=resampled,
        rank=0,
        world_size=1,
        shuffle_buffer=BUFFER,
        drop_last=True,
        **kw,
    )


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
    return {
        "reference": reference,
        "first": first,
        "resumed": resumed,
        "expected": expected[cut:],
        "got": after,
        "state": state,
    }
