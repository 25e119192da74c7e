"""The reading pipeline on real shards: an epoch, batches, skipping, safety, transforms (what needs worker
processes, splitting and shuffling among them: tests/integration/test_data_pipeline_workers.py)."""

import io
import pickle
import random

import pytest
import torch
import torchvision.transforms.v2 as T
from PIL import Image

import pretrain_mm.data.pipeline as pipeline
from helpers.toy_shards import toy_image, write_toy_shards
from pretrain_mm.data import build_loader, image_transform, train_tokenizer
from pretrain_mm.data.transforms import ImageAugment

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


@pytest.mark.parametrize("workers", [0])  # 1 and 2: tests/integration/test_data_pipeline_workers.py
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


def test_rank_defaults_to_torch_distributed(shards, monkeypatch):
    monkeypatch.setattr(torch.distributed, "is_initialized", lambda: True)
    monkeypatch.setattr(torch.distributed, "get_rank", lambda: 1)
    monkeypatch.setattr(torch.distributed, "get_world_size", lambda: 2)
    from_dist = keys_of(build_loader(shards, batch_size=4, image_size=16))
    assert from_dist == keys_of(build_loader(shards, batch_size=4, image_size=16, rank=1, world_size=2))
    assert 0 < len(from_dist) < N


def test_batch_contents(shards, tokenizer):
    loader = build_loader(shards, batch_size=5, tokenizer=tokenizer, image_size=24, train=False, label_key="json:label")
    batch = next(iter(loader))
    assert batch["image"].shape == (5, 3, 24, 24) and batch["image"].dtype == torch.float32
    assert batch["text"].shape == (5, 8) and batch["text"].dtype == torch.long
    assert (batch["text"][:, 0] == tokenizer.sot_id).all()
    assert [tokenizer.decode(t) for t in batch["text"]] == batch["caption"] == [f"caption {i}" for i in range(5)]
    assert batch["label"].tolist() == [0, 1, 2, 3, 4]
    expected = image_transform(24)(Image.open(io.BytesIO(toy_image(0))))
    assert torch.allclose(batch["image"][0], expected, atol=1e-5)
    on_device = next(
        iter(
            build_loader(
                shards,
                batch_size=5,
                tokenizer=tokenizer,
                image_size=24,
                train=False,
                label_key="json:label",
                device="cpu",
                num_workers=1,
            )
        )
    )
    assert torch.allclose(on_device["image"], batch["image"], atol=1e-5)
    image_only = next(iter(build_loader(shards, batch_size=5, image_size=24)))
    assert "text" not in image_only and "label" not in image_only


class Marker:
    def __init__(self, path):
        self.path = path

    def __reduce__(self):
        return (open, (self.path, "w"))  # unpickling this creates the file


def test_pickles_in_shards_are_never_loaded(tmp_path, tokenizer):
    marker = tmp_path / "pwned"
    payload = pickle.dumps(Marker(str(marker)))
    urls = write_toy_shards(
        str(tmp_path / "s"),
        6,
        6,
        extra={0: {"pyd": payload, "pickle": payload}, 3: {"pth": payload}, 4: {"jpg": payload}},
    )
    for key in ("image_key", "caption_key", "label_key"):
        with pytest.raises(ValueError, match="pickles"):
            build_loader(urls, batch_size=2, tokenizer=tokenizer, **{key: "pyd"})
    for workers in (0, 2):
        loader = build_loader(
            urls, batch_size=2, tokenizer=tokenizer, image_size=16, num_workers=workers, label_key="cls"
        )
        assert sorted(keys_of(loader)) == [k for k in all_keys(6) if k != "000004"]
        assert loader.skipped == {"bad_image": 1}  # a pickle named .jpg is just a bad image
    assert not marker.exists()
    pickle.loads(payload)  # the test can fail: the payload does create the marker
    assert marker.exists()


def test_resampled_stream_of_bad_data_stops_instead_of_hanging(tmp_path, monkeypatch):
    urls = write_toy_shards(str(tmp_path), 4, 2, bad_image=[0, 1, 2, 3])
    monkeypatch.setattr(pipeline, "MAX_CONSECUTIVE_SKIPS", 50)
    loader = build_loader(urls, batch_size=2, image_size=16, resampled=True, samples_per_epoch=10)
    with pytest.raises(RuntimeError, match="in a row were skipped"):
        list(loader)
    finite = build_loader(urls, batch_size=2, image_size=16)
    with pytest.raises(ValueError, match="no usable sample"):
        list(finite)


def test_user_errors_are_clear(shards, tmp_path):
    with pytest.raises(ValueError, match="nothing-here"):
        build_loader(str(tmp_path / "nothing-here-{0..3}.tar"), batch_size=2)
    with pytest.raises(ValueError, match="json:label"):
        build_loader(shards, batch_size=2, label_key="json")
    with pytest.raises(ValueError, match="rank 2"):
        build_loader(shards, batch_size=2, rank=2, world_size=2)
    with pytest.raises(ValueError, match="resampled"):
        build_loader(shards, batch_size=2, samples_per_epoch=10)


def test_pipeline_pickles_for_spawned_workers(shards, tokenizer):
    loader = build_loader(shards, batch_size=4, tokenizer=tokenizer, image_size=16)
    clone = pickle.loads(pickle.dumps(loader.dataset))
    assert sum(len(b["key"]) for b in clone if "key" in b) == N


def test_transforms_match_torchvision():
    gen = torch.Generator().manual_seed(0)
    img = torch.randint(0, 256, (3, 30, 40), dtype=torch.uint8, generator=gen)
    bicubic = dict(interpolation=T.InterpolationMode.BICUBIC, antialias=True)
    ours = ImageAugment(16, train=False)(img)
    ref = T.Compose([T.Resize(16, **bicubic), T.CenterCrop(16)])(img)
    assert ours.shape == (3, 16, 16) and ours.equal(ref)
    aug = ImageAugment(16, train=True, hflip=False)
    top, left, h, w = aug.crop_box(40, 30, random.Random(3))
    ref = T.functional.resized_crop(img, top, left, h, w, [16, 16], **bicubic)
    assert aug(img, random.Random(3)).equal(ref)
    flipped = ImageAugment(16, train=True)
    outs = {flipped(img, random.Random(s)).equal(aug(img, random.Random(s))) for s in range(20)}
    assert outs == {True, False}  # flipped about half of the time
    boxes = [aug.crop_box(40, 30, random.Random(s)) for s in range(200)]
    assert all(
        0.9 * 1200 * 0.97 <= h * w <= 1200 and 0 <= top <= 30 - h and 0 <= left <= 40 - w for top, left, h, w in boxes
    )
    pil = Image.fromarray(img.permute(1, 2, 0).numpy())
    assert torch.allclose(image_transform(16)(pil), image_transform(16)(img))
