"""The stages of the reading pipeline (data/pipeline.py puts them together): shards, split by node and worker,
read, shuffled, decoded safely (a bad sample is skipped and counted), transformed, batched."""

from __future__ import annotations

import random
from collections.abc import Iterator, Sequence
from typing import Any

import torch
import webdataset as wds
from torch.utils.data import IterableDataset

from .decode import (
    SkipCounter,
    SkipSample,
    decode_image,
    get_caption,
    get_image_bytes,
    get_label,
)
from .negatives import WordSwapNegatives
from .reader import EmptyShard, ShardError, iter_shard
from .tokenizer import Tokenizer
from .transforms import ImageAugment, Normalize, stack_uint8

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
