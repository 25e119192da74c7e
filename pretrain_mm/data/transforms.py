"""Image transforms (torchvision, on uint8 tensors): train random resized crop + flip, eval resize + centre crop,
normalise."""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import cast

import torch
import torch.utils.data
import torchvision.transforms.v2.functional as F
from PIL import Image

from .decode import pil_to_chw

CLIP_MEAN = (0.48145466, 0.4578275, 0.40821073)
CLIP_STD = (0.26862954, 0.26130258, 0.27577711)
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)

_BICUBIC = F.InterpolationMode.BICUBIC


class ImageAugment:
    """3 x H x W uint8 tensor -> 3 x size x size uint8 tensor.

    train: torchvision's RandomResizedCrop (the same parameter sampling: scale, ratio) and a
    horizontal flip with probability 0.5 when `hflip`; eval: Resize(shorter side) + CenterCrop.
    Bicubic with antialiasing, as open_clip. Random parameters come from the `rng` passed to each
    call, so that every worker's stream is exactly reproducible.
    """

    def __init__(
        self,
        image_size: int,
        train: bool,
        crop_scale: Sequence[float] = (0.9, 1.0),
        crop_ratio: Sequence[float] = (3 / 4, 4 / 3),
        hflip: bool = True,
    ):
        if image_size < 1:
            raise ValueError(f"image_size must be positive, got {image_size}")
        if not 0 < crop_scale[0] <= crop_scale[1] <= 1 or not 0 < crop_ratio[0] <= crop_ratio[1]:
            raise ValueError(
                f"crop_scale {crop_scale} must be within (0, 1] and crop_ratio {crop_ratio} positive, low <= high"
            )
        self.size, self.train = int(image_size), bool(train)
        self.scale, self.ratio, self.hflip = tuple(crop_scale), tuple(crop_ratio), bool(hflip)
        self.log_ratio = (math.log(self.ratio[0]), math.log(self.ratio[1]))

    def crop_box(self, width: int, height: int, rng: random.Random) -> tuple[int, int, int, int]:
        """(top, left, h, w) of a random resized crop; torchvision's algorithm with our generator."""
        area = width * height
        for _ in range(10):
            target_area = area * rng.uniform(*self.scale)
            aspect = math.exp(rng.uniform(*self.log_ratio))
            w = int(round(math.sqrt(target_area * aspect)))
            h = int(round(math.sqrt(target_area / aspect)))
            if 0 < w <= width and 0 < h <= height:
                return rng.randint(0, height - h), rng.randint(0, width - w), h, w
        in_ratio = width / height
        if in_ratio < min(self.ratio):
            w, h = width, int(round(width / min(self.ratio)))
        elif in_ratio > max(self.ratio):
            h, w = height, int(round(height * max(self.ratio)))
        else:
            w, h = width, height
        return (height - h) // 2, (width - w) // 2, h, w

    def __call__(self, img: torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        height, width = img.shape[-2:]
        if not self.train:
            if min(height, width) != self.size:
                img = F.resize(img, self.size, interpolation=_BICUBIC, antialias=True)
            return F.center_crop(img, [self.size, self.size])
        rng = rng or cast(random.Random, random)  # the module's functions: those of its hidden Random
        top, left, h, w = self.crop_box(width, height, rng)
        img = F.resized_crop(img, top, left, h, w, [self.size, self.size], interpolation=_BICUBIC, antialias=True)
        return F.horizontal_flip(img) if self.hflip and rng.random() < 0.5 else img


def stack_uint8(images: Sequence[torch.Tensor]) -> torch.Tensor:
    """Stack 3 x H x W uint8 tensors into B x 3 x H x W (in shared memory inside a DataLoader
    worker, as torch's default_collate does, so the batch reaches the main process uncopied)."""
    shape = (len(images), *images[0].shape)
    out = _empty_shared(shape, torch.uint8) if torch.utils.data.get_worker_info() is not None else None
    return torch.stack(list(images), out=out)


def _empty_shared(shape: Sequence[int], dtype: torch.dtype) -> torch.Tensor | None:
    try:
        storage = torch.empty(0, dtype=dtype)._typed_storage()._new_shared(math.prod(shape))
        return torch.empty(0, dtype=dtype).new(storage).view(*shape)
    except (AttributeError, RuntimeError, TypeError):  # private API moved: let the DataLoader copy
        return None


class Normalize:
    """uint8 B x 3 x H x W (on any device) -> float32 scaled to [0, 1] and normalised by mean/std."""

    def __init__(self, mean: Sequence[float] = CLIP_MEAN, std: Sequence[float] = CLIP_STD):
        mean_t = torch.tensor(mean, dtype=torch.float32).view(1, 3, 1, 1)
        std_t = torch.tensor(std, dtype=torch.float32).view(1, 3, 1, 1)
        self.scale, self.shift = 1.0 / (255.0 * std_t), -mean_t / std_t

    def __call__(self, images: torch.Tensor) -> torch.Tensor:
        assert images.dtype == torch.uint8, f"Normalize takes uint8 images, got {images.dtype} (normalised twice?)"
        scale, shift = self.scale.to(images.device), self.shift.to(images.device)
        in_worker = images.device.type == "cpu" and torch.utils.data.get_worker_info() is not None
        out = _empty_shared(images.shape, torch.float32) if in_worker else None
        if out is None:
            return images.float().mul_(scale).add_(shift)
        out.copy_(images)
        return out.mul_(scale).add_(shift)


class ImageTransform:
    """One PIL image or 3 x H x W uint8 tensor -> normalised 3 x S x S float tensor: what the loader
    does to each image, for code that has single images (evaluation, demos). Picklable."""

    def __init__(
        self,
        image_size: int,
        train: bool = False,
        mean: Sequence[float] = CLIP_MEAN,
        std: Sequence[float] = CLIP_STD,
        **augment_kw,
    ):
        self.augment = ImageAugment(image_size, train, **augment_kw)
        self.normalize = Normalize(mean, std)

    def __call__(self, img: Image.Image | torch.Tensor, rng: random.Random | None = None) -> torch.Tensor:
        if isinstance(img, Image.Image):
            img = pil_to_chw(img)
        return self.normalize(self.augment(img, rng)[None])[0]


def image_transform(image_size: int, train: bool = False, **kw) -> ImageTransform:
    """The transform build_loader applies, for one image at a time."""
    return ImageTransform(image_size, train, **kw)
