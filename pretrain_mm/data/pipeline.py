"""The reading pipeline: shards -> split by node and worker -> shuffle -> safe decode -> transform -> batches."""

from __future__ import annotations

import atexit
import math
import multiprocessing
import os
import signal
import warnings
from collections import Counter
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import DataLoader

from pretrain_mm.distributed import rank_world

from .builtin import load_tokenizer
from .decode import (
    DEFAULT_CAPTION_KEY,
    DEFAULT_IMAGE_KEY,
    parse_key_spec,
    spec_exts,
)
from .negatives import WordSwapNegatives
from .position import Resumable
from .shards import describe, expand_urls, read_sizes
from .stages import (
    Batcher,
    DecodeStage,
    NodeSplitter,
    ReadShards,
    SampleDecoder,
    SampleShuffle,
    ShardList,
    StreamContext,
    WorkerSplitter,
)
from .tokenizer import Tokenizer
from .transforms import CLIP_MEAN, CLIP_STD, ImageAugment, Normalize

MAX_CONSECUTIVE_SKIPS = 10_000  # a resampled stream that only meets bad data stops instead of hanging

# The signals that ask a run to stop: the trainer checkpoints on the last three, Ctrl-C (SIGINT) aborts. A shell's
# Ctrl-C, `kill -<sig> -<pgid>`, `timeout`, `pkill -f` and Slurm (under proctrack/cgroup, to every process of a job
# step) deliver them to the loader's workers too, whose default is to die of them -- and a dead worker ends the run
# before it can checkpoint. So workers leave them to the main process (WorkerSignals).
RUN_SIGNALS = (signal.SIGINT, signal.SIGTERM, signal.SIGUSR1, signal.SIGUSR2)
_exiting: Any = None  # set once this (main) process exits: see WorkerSignals


def _exiting_event() -> Any:
    global _exiting
    if _exiting is None:
        _exiting = multiprocessing.Event()
        # atexit runs last-registered first: this is set before multiprocessing's own exit hook
        # terminates (SIGTERM) and joins the workers of a loader nobody closed.
        atexit.register(_exiting.set)
    return _exiting


class WorkerSignals:
    """DataLoader worker_init_fn: the worker ignores RUN_SIGNALS, except the SIGTERM its parent sends at exit.

    A worker ends when its DataLoader says so (a stop message on its queue) or its parent dies (torch's
    watchdog); the one SIGTERM it must obey is multiprocessing's at the parent's exit, which would otherwise
    wait forever to join it."""

    def __init__(self):
        self.exiting = _exiting_event()

    def __call__(self, worker_id: int) -> None:
        for sig in RUN_SIGNALS:
            signal.signal(sig, signal.SIG_IGN)
        signal.signal(signal.SIGTERM, self._on_term)

    def _on_term(self, signum, frame) -> None:
        if self.exiting.is_set():
            signal.signal(signal.SIGTERM, signal.SIG_DFL)
            os.kill(os.getpid(), signal.SIGTERM)


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
        worker_init_fn=WorkerSignals() if num_workers > 0 else None,
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
