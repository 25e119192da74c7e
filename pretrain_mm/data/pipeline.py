"""The reading pipeline: shards -> split by node and worker -> shuffle -> safe decode -> transform -> batches."""

from __future__ import annotations

import math
import random
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader, IterableDataset

from pretrain_mm.distributed import rank_world

from .builtin import load_tokenizer
from .decode import (
    DEFAULT_CAPTION_KEY,
    DEFAULT_IMAGE_KEY,
    SkipCounter,
    SkipSample,
    decode_image,
    get_caption,
    get_image_bytes,
    get_label,
    parse_key_spec,
    spec_exts,
)
from .negatives import WordSwapNegatives
from .position import Resumable
from .reader import EmptyShard, ShardError, iter_shard
from .shards import describe, expand_urls, read_sizes
from .tokenizer import Tokenizer
from .transforms import CLIP_MEAN, CLIP_STD, ImageAugment, Normalize, stack_uint8

SKIP_REASONS = (
    "no_image",
    "bad_image",
    "no_caption",
    "no_label",
    "truncated_shard",
    "unreadable_shard",
    "empty_shard",
    "error",
)
MAX_CONSECUTIVE_SKIPS = 10_000  # a resampled stream that only meets bad data stops instead of hanging


class StreamContext:
    """State shared by the stages of one pipeline copy (one per worker process): seeds, the epoch,
    the rank, the skip counter, and where a resumed epoch starts. The Loader sets epoch, resume
    and offset before each iter() of the DataLoader, which copies them into its workers."""

    def __init__(self, seed: int, rank: int, world_size: int, limit: int | None):
        self.seed, self.rank, self.world_size, self.epoch = int(seed), int(rank), int(world_size), 0
        self.counter = SkipCounter(limit)
        # resume: worker -> (batches, raw samples) already delivered this epoch; offset: the worker
        # whose batch comes next, played by DataLoader worker 0 so the round-robin order carries on
        self.resume: dict[int, tuple[int, int]] = {}
        self.offset = 0
        self.consumed = 0  # raw samples the decode stage has taken this epoch (in this worker)

    def worker(self) -> tuple[int, int]:
        """(worker id, workers) of this pipeline copy within the rank: DataLoader worker k plays
        worker (k + offset) % W, whose shards, samples and seeds it reads."""
        info = torch.utils.data.get_worker_info()
        return ((info.id + self.offset) % info.num_workers, info.num_workers) if info is not None else (0, 1)

    def rng(self, tag: str, per_worker: bool = True) -> random.Random:
        """A generator seeded by (seed, epoch, tag) and, per_worker, the rank and worker: exact
        across runs, independent of the global RNGs. String seeds hash the same in every process."""
        parts = [self.seed, self.epoch, tag] + ([self.rank, *self.worker()] if per_worker else [])
        return random.Random("/".join(map(str, parts)))


class ShardList(IterableDataset):
    """First stage: dict(url=..., slice=(offset, stride)) per shard. Finite, in an order shuffled by
    (seed, epoch) that every rank and worker shares; or resampled: infinite, drawn with replacement
    by each rank and worker from its own generator."""

    def __init__(self, urls: Sequence[str], ctx: StreamContext, shuffle: bool, resampled: bool):
        super().__init__()
        self.urls, self.ctx, self.shuffle, self.resampled = list(urls), ctx, shuffle, resampled

    def __iter__(self) -> Iterator[dict]:
        if self.resampled:
            rng = self.ctx.rng("resample")
            while True:
                yield {"url": rng.choice(self.urls), "slice": (0, 1)}
        urls = list(self.urls)
        if self.shuffle:
            self.ctx.rng("shards", per_worker=False).shuffle(urls)
        for url in urls:
            yield {"url": url, "slice": (0, 1)}


def split_shards(items: list[dict], index: int, count: int) -> list[dict]:
    """Deal shards round-robin to `count` parts; with fewer shards than parts, every part gets all
    shards and their samples are dealt instead (sample i of a shard goes to part i % count), so
    each sample still goes to exactly one part."""
    if count <= 1:
        return items
    if len(items) >= count:
        return items[index::count]
    return [dict(item, slice=(item["slice"][0] + item["slice"][1] * index, item["slice"][1] * count)) for item in items]


class NodeSplitter:
    def __init__(self, ctx: StreamContext):
        self.ctx = ctx

    def __call__(self, src):
        return iter(split_shards(list(src), self.ctx.rank, self.ctx.world_size))


class WorkerSplitter:
    def __init__(self, ctx: StreamContext):
        self.ctx = ctx

    def __call__(self, src):
        return iter(split_shards(list(src), *self.ctx.worker()))


class ReadShards:
    """Open each shard and yield its samples (only the members in `exts` are read); a damaged,
    truncated or empty shard goes to the handler and the stream goes on."""

    def __init__(self, ctx: StreamContext, exts: frozenset[str]):
        self.ctx, self.exts = ctx, exts

    def __call__(self, src):
        handler = self.ctx.counter
        for item in src:
            n = 0
            try:
                for sample in iter_shard(item["url"], self.exts, *item["slice"]):
                    n += 1
                    yield sample
            except ShardError as exn:
                if not handler(exn):
                    return
                continue
            if n == 0 and item["slice"] == (0, 1) and not handler(EmptyShard(f"shard {item['url']} holds no samples")):
                return


class SampleShuffle:
    def __init__(self, ctx: StreamContext, bufsize: int, initial: int):
        self.ctx, self.bufsize, self.initial = ctx, bufsize, initial

    def __call__(self, src):
        return wds.shuffle(self.bufsize, self.initial, rng=self.ctx.rng("samples"))(src)


class SampleDecoder:
    """Raw sample -> {'image': 3 x S x S uint8 tensor, 'caption', 'label', 'key'[, 'negative']}; raises
    SkipSample. 'negative' (with `negatives` and in training): a hard-negative caption or None."""

    def __init__(
        self, image_spec, caption_spec, label_spec, augment: ImageAugment, negatives: WordSwapNegatives | None = None
    ):
        self.image_spec, self.caption_spec, self.label_spec, self.augment = (
            image_spec,
            caption_spec,
            label_spec,
            augment,
        )
        self.negatives = negatives

    def __call__(self, sample: dict, rng: random.Random | None = None) -> dict:
        key = sample["__key__"]
        data = get_image_bytes(sample, self.image_spec)
        cache: dict = {}
        caption = get_caption(sample, self.caption_spec, cache) if self.caption_spec else None
        label = get_label(sample, self.label_spec, cache) if self.label_spec else None
        try:
            img = decode_image(data)
        except Exception as exn:  # PIL raises many types for bad data
            raise SkipSample("bad_image", f"{key} in {sample.get('__url__')}: {exn}") from exn
        out = {"image": self.augment(img, rng), "caption": caption, "label": label, "key": key}
        if self.negatives is not None and rng is not None and caption is not None:
            out["negative"] = self.negatives(caption, rng)  # drawn after the augmentation: it draws as without
        return out


class DecodeStage:
    """Decode the raw samples, counting them (ctx.consumed) so that a batch can say where its worker
    stands. A resumed epoch first drops, undecoded, the raw samples its worker delivered before the
    checkpoint; the augment generator of each sample is seeded by its raw index, so the samples
    after them are augmented as in the uninterrupted run."""

    def __init__(self, ctx: StreamContext, decoder: SampleDecoder):
        self.ctx, self.decoder = ctx, decoder

    def __call__(self, src):
        ctx, counter = self.ctx, self.ctx.counter
        skip = ctx.resume.get(ctx.worker()[0], (0, 0))[1]
        ctx.consumed = 0
        for index, sample in enumerate(src):
            ctx.consumed = index + 1
            if index < skip:
                if index == skip - 1:  # what reading counted so far went out with the delivered batches
                    counter.take()
                    counter.consecutive = 0
                continue
            rng = ctx.rng(f"augment/{index}") if self.decoder.augment.train else None
            try:
                out = self.decoder(sample, rng)
            except Exception as exn:  # noqa: BLE001 - PIL and bad members raise many types; the handler decides
                if not counter(exn):
                    return
                continue
            counter.consecutive = 0
            yield out


class Batcher:
    """Collate samples into batch dicts; each batch carries the skip counts its worker gathered
    since the previous batch (key '_skipped') and its worker's position after it (key '_position':
    worker, batches emitted this epoch, raw samples consumed), and a stream ends with a
    counts-only item ('_empty') when some were gathered after the last batch. A resumed epoch
    continues the count and stops at the same max_batches."""

    def __init__(
        self,
        ctx: StreamContext,
        batch_size: int,
        tokenizer: Tokenizer | None,
        normalize: Normalize | None,
        partial: bool,
        max_batches: int | None,
    ):
        self.ctx, self.batch_size, self.tokenizer, self.normalize = ctx, batch_size, tokenizer, normalize
        self.partial, self.max_batches = partial, max_batches

    def collate(self, samples: list[dict], position: tuple[int, int, int]) -> dict[str, Any]:
        images = stack_uint8([s["image"] for s in samples])
        batch: dict[str, Any] = {
            "image": self.normalize(images) if self.normalize else images,
            "key": [s["key"] for s in samples],
        }
        if self.tokenizer is not None:
            batch["caption"] = [s["caption"] for s in samples]
            batch["text"] = self.tokenizer(batch["caption"])
            if "negative" in samples[0]:
                # Every row gets one (its own tokens where it has none) and neg_mask says which are real.
                real = [i for i, s in enumerate(samples) if s["negative"] is not None]
                batch["neg_text"] = batch["text"].clone()
                if real:
                    batch["neg_text"][real] = self.tokenizer([samples[i]["negative"] for i in real])
                batch["neg_mask"] = torch.zeros(len(samples), dtype=torch.bool)
                batch["neg_mask"][real] = True
        if samples[0]["label"] is not None:
            batch["label"] = torch.tensor([s["label"] for s in samples], dtype=torch.long)
        batch["_skipped"] = self.ctx.counter.take()
        batch["_position"] = position
        return batch

    def __call__(self, src):
        worker = self.ctx.worker()[0]
        emitted = self.ctx.resume.get(worker, (0, 0))[0]
        if self.max_batches is not None and emitted >= self.max_batches:
            return  # this worker's share of the resumed epoch was delivered: not even read again
        buf = []
        for sample in src:
            buf.append(sample)
            if len(buf) == self.batch_size:
                emitted += 1
                yield self.collate(buf, (worker, emitted, self.ctx.consumed))
                buf = []
                if self.max_batches is not None and emitted >= self.max_batches:
                    break
        if buf and self.partial:
            emitted += 1
            yield self.collate(buf, (worker, emitted, self.ctx.consumed))
        pending = self.ctx.counter.take()
        if pending:
            yield {"_skipped": pending, "_empty": True, "_position": (worker, emitted, self.ctx.consumed)}


class Loader(Resumable):
    """Iterable over batch dicts {'image', 'text', 'caption', 'label', 'key'} (text/caption with a
    tokenizer, label with a label_key). Each iteration is one epoch (auto-incremented; set_epoch
    picks the next one). `skipped` holds the skip counts per reason over all epochs and workers so
    far. `num_batches` (also len()) is the batches per epoch of a resampled loader, else None;
    `num_samples` the samples in the whole shard set per sizes.json, else None. `normalize` is the
    Normalize of the images: applied in the workers (no device), on the device (with one), or by
    the caller when built with normalize=False (images stay uint8).

    state_dict() is this rank's exact position in its stream, as of the batches handed to the
    caller (not those prefetched): {"epoch": the epoch in progress (or the next to start),
    "positions": {worker: {"batches": delivered this epoch, "samples": raw samples behind them}},
    "next_worker": whose batch comes next, "layout": {rank, world_size, workers, batch_size},
    "skipped": the counts so far}. A loader built with the same arguments that loads it delivers
    what this one would have delivered next: the rest of that epoch (each worker replays its
    stream, dropping the delivered raw samples undecoded), then the following epochs; skips
    counted before the checkpoint are not counted again. A fully delivered resampled epoch is
    saved as the start of the next; a finite epoch is only known to be over when its iteration
    ends, so one saved just after its last batch resumes as an empty epoch. Each rank saves and
    loads its own state. Iterating never draws from the global torch RNG, so that a resumed
    run's model randomness (dropout, ...) is not shifted by the data."""

    def __init__(
        self,
        dataset: wds.DataPipeline,
        ctx: StreamContext,
        dataloader: DataLoader,
        urls: list[str],
        num_batches: int | None,
        num_samples: int | None = None,
        device: torch.device | None = None,
        normalize: Normalize | None = None,
        *,
        batch_size: int | None = None,
        normalize_images: bool = True,
    ):
        workers = max(1, dataloader.num_workers)  # W = 0 reads as one worker would
        super().__init__(
            {"rank": ctx.rank, "world_size": ctx.world_size, "workers": workers, "batch_size": batch_size}, num_batches
        )
        self.dataset, self.ctx, self.dataloader, self.urls = dataset, ctx, dataloader, urls
        self.num_samples, self.device = num_samples, device
        self.normalize, self.normalize_images = normalize, normalize_images

    def __len__(self) -> int:
        if self.num_batches is None:
            raise TypeError("this loader's length is unknown (not resampled with samples_per_epoch)")
        return self.num_batches

    def __iter__(self) -> Iterator[dict]:
        progress = self.begin_epoch()
        resumed = bool(progress.workers)
        # read by the stages (forked into the workers by iter() below; not changed while they run)
        self.ctx.epoch, self.ctx.resume, self.ctx.offset = progress.epoch, dict(progress.workers), progress.next_worker
        delivered = 0
        skipped: Counter[str] = Counter()
        for batch in self.dataloader:
            skipped.update(self.deliver(progress, batch))
            if batch.pop("_empty", False):
                continue
            delivered += len(batch["key"])
            if self.device is not None:
                batch = {
                    k: v.to(self.device, non_blocking=True) if isinstance(v, torch.Tensor) else v
                    for k, v in batch.items()
                }
                if self.normalize_images:
                    assert self.normalize is not None  # build_loader always gives one
                    batch["image"] = self.normalize(batch["image"])
            yield batch
        self.end_epoch(progress)
        if delivered == 0 and not resumed:
            if skipped:
                raise ValueError(
                    f"no usable sample in {describe(self.urls)} (rank {self.ctx.rank}); every one "
                    f"was skipped: {dict(skipped)}; check the shards and image_key/caption_key/label_key"
                )
            warnings.warn(f"rank {self.ctx.rank} got no samples from {describe(self.urls)} this epoch", stacklevel=2)


def _dist_rank_world(rank: int | None, world_size: int | None) -> tuple[int, int]:
    if rank is None or world_size is None:
        current_rank, current_world = rank_world()
        rank = current_rank if rank is None else rank
        world_size = current_world if world_size is None else world_size
    if not 0 <= rank < world_size:
        raise ValueError(f"rank {rank} is not in [0, world_size={world_size})")
    return rank, world_size


def build_loader(
    urls,
    *,
    batch_size: int,
    tokenizer: Tokenizer | str | None = None,
    image_size: int = 224,
    train: bool = True,
    num_workers: int = 0,
    seed: int = 0,
    resampled: bool = False,
    samples_per_epoch: int | None = None,
    rank: int | None = None,
    world_size: int | None = None,
    image_key: str = DEFAULT_IMAGE_KEY,
    caption_key: str | None = DEFAULT_CAPTION_KEY,
    label_key: str | None = None,
    shuffle_buffer: int = 1000,
    crop_scale=(0.9, 1.0),
    hflip: bool = True,
    mean=CLIP_MEAN,
    std=CLIP_STD,
    drop_last: bool = False,
    normalize: bool = True,
    device: str | torch.device | None = None,
    pin_memory: bool | None = None,
    prefetch_factor: int | None = None,
    hard_negatives: Sequence[Sequence[str]] = (),
) -> Loader:
    """A loader over WebDataset shards (see Loader). With `tokenizer` (a Tokenizer, a built-in name
    or a path) captions are required and tokenised; without, the stream is image-only.
    train: shard + sample shuffling and random crop/flip; else fixed order, resize + centre crop.
    resampled: shards drawn with replacement, infinite, cut into epochs of samples_per_epoch
    (over all ranks; default: the sizes.json total, else no end). rank/world_size default to
    torch.distributed's when initialised. device: None keeps batches on the CPU, normalised in
    the workers; a device gets uint8 images from the workers (4x less traffic) and moves and
    normalises them there (pinned memory for CUDA). normalize=False: images stay uint8
    (B x 3 x S x S, on the device if one is given) and the caller applies `loader.normalize`,
    e.g. one micro-batch at a time, holding a large batch at 1 byte per pixel instead of 4.
    hard_negatives: word groups (see negatives.WordSwapNegatives); in training with a tokenizer,
    batches then also hold 'neg_text' (B x T) and 'neg_mask' (B, bool: the caption had a group word)."""
    urls = expand_urls(urls)
    if batch_size < 1:
        raise ValueError(f"batch_size must be >= 1, got {batch_size}")
    if samples_per_epoch is not None and not resampled:
        raise ValueError("samples_per_epoch needs resampled=True (a finite stream ends with its shards)")
    rank, world_size = _dist_rank_world(rank, world_size)
    if isinstance(tokenizer, str):
        tokenizer = load_tokenizer(tokenizer)
    image_spec = parse_key_spec(image_key, "image")
    caption_spec = parse_key_spec(caption_key, "caption") if tokenizer is not None else []
    label_spec = parse_key_spec(label_key, "label")
    workers = max(1, num_workers)

    sizes = read_sizes(urls)
    num_samples = sum(sizes.values()) if sizes else None
    num_batches = per_worker = None
    if resampled:
        if samples_per_epoch is None:
            samples_per_epoch = num_samples
        if samples_per_epoch is not None:
            per_worker = max(1, math.ceil(samples_per_epoch / (world_size * batch_size * workers)))
            num_batches = per_worker * workers
    else:
        mine = len(urls[rank::world_size]) if len(urls) >= world_size else len(urls)
        if len(urls) < world_size or mine < workers:
            warnings.warn(
                f"{len(urls)} shards for {world_size} rank(s) x {workers} worker(s) ({describe(urls)}): "
                "ranks/workers short of shards share shards and deal their samples, which reads "
                "them several times; write more, smaller shards for speed",
                stacklevel=2,
            )

    ctx = StreamContext(seed, rank, world_size, MAX_CONSECUTIVE_SKIPS if resampled else None)
    augment = ImageAugment(image_size, train, crop_scale=crop_scale, hflip=hflip)
    stages: list[Any] = [ShardList(urls, ctx, shuffle=train, resampled=resampled)]
    if not resampled:
        stages += [NodeSplitter(ctx), WorkerSplitter(ctx)]
    stages.append(ReadShards(ctx, spec_exts(image_spec, caption_spec, label_spec)))
    if train and shuffle_buffer > 1:
        stages.append(SampleShuffle(ctx, shuffle_buffer, min(shuffle_buffer, max(1, shuffle_buffer // 2))))
    negatives = WordSwapNegatives(hard_negatives) if hard_negatives and train and tokenizer is not None else None
    stages.append(DecodeStage(ctx, SampleDecoder(image_spec, caption_spec, label_spec, augment, negatives)))
    norm = Normalize(mean, std)
    device = torch.device(device) if device is not None else None
    stages.append(
        Batcher(
            ctx,
            batch_size,
            tokenizer,
            norm if normalize and device is None else None,
            partial=not (drop_last or resampled),
            max_batches=per_worker,
        )
    )
    dataset = wds.DataPipeline(*stages)
    if pin_memory is None:
        pin_memory = device is not None and device.type == "cuda"
    dataloader = DataLoader(
        dataset,
        batch_size=None,
        shuffle=False,
        num_workers=num_workers,
        pin_memory=pin_memory,
        persistent_workers=False,
        prefetch_factor=(prefetch_factor or 2) if num_workers > 0 else None,
        generator=torch.Generator().manual_seed(ctx.seed % 2**63),
    )  # its own: see Loader
    return Loader(
        dataset,
        ctx,
        dataloader,
        urls,
        num_batches,
        num_samples,
        device,
        norm,
        batch_size=batch_size,
        normalize_images=normalize,
    )
