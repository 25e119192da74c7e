"""Feature extraction: one pass over an eval split on every rank, all towers at once, gathered to every rank."""

from __future__ import annotations

import math
from dataclasses import dataclass, field
from typing import Callable, Optional

import torch
import torch.distributed as dist

from pretrain_mm.precision import autocast as precision_autocast
from pretrain_mm.precision import resolve_precision

Encoder = Callable[[torch.Tensor], torch.Tensor]


def world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order, on every rank. Ranks may hold different
    numbers of rows (their shares of the shards differ), even none: shapes are gathered first,
    each rank's block padded to the largest, as all_gather needs equal shapes; a rank without
    rows takes the row shape of the others (its empty placeholder need only have the same ndim)."""
    size = world()[1]
    if size == 1:
        return tensor
    shape = torch.tensor(tensor.shape, device=tensor.device)
    shapes = [torch.zeros_like(shape) for _ in range(size)]
    dist.all_gather(shapes, shape)
    shapes = [s.tolist() for s in shapes]
    rows = [s[0] for s in shapes]
    trailing = next((s[1:] for s in shapes if s[0] > 0), shapes[0][1:])
    padded = tensor.new_zeros((max(rows), *trailing))
    padded[:tensor.shape[0]] = tensor
    blocks = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(blocks, padded.contiguous())
    return torch.cat([block[:n] for block, n in zip(blocks, rows)])


def gather_lists(items: list) -> list:
    """Every rank's list items (keys, captions), concatenated in rank order, on every rank."""
    if world()[1] == 1:
        return list(items)
    out: list = [None] * world()[1]
    dist.all_gather_object(out, list(items))
    return [item for part in out for item in part]


def autocast(device: torch.device):
    """bf16 autocast where training's `auto` would choose it (pretrain_mm.precision; ample for ranking), else fp32."""
    return precision_autocast(resolve_precision("auto", device), device)


@dataclass
class Features:
    """One split's features for every tower, in a fixed order (sorted by sample key, so the same
    on any number of ranks). `image[tower]` (N, D); `labels[name]` (N,) long; with captions,
    `text[tower]` (M, D), `captions` (M strings) and `text_image` (M,): each caption's image row."""
    keys: list[str]
    image: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    text: dict[str, torch.Tensor] = field(default_factory=dict)
    captions: Optional[list[str]] = None
    text_image: Optional[torch.Tensor] = None

    def __len__(self) -> int:
        return len(self.keys)


@torch.no_grad()
def extract_features(loader, image_encoders: dict[str, Encoder], device: torch.device, *,
                     max_samples: int = 0, text_encoders: Optional[dict[str, Encoder]] = None,
                     tokenizer=None, split_captions: bool = False) -> Features:
    """Run every encoder over this rank's share of `loader` (a pretrain_mm.data loader split by
    rank), then gather. max_samples caps the split over all ranks (0: no cap). With text_encoders
    (and a loader built with a tokenizer), captions are encoded too; split_captions treats each
    caption as several, one per line (CLIP_benchmark's retrieval sets)."""
    rank, world_size = world()
    budget = math.ceil(max_samples / world_size) if max_samples > 0 else None
    keys: list[str] = []
    image: dict[str, list] = {name: [] for name in image_encoders}
    text: dict[str, list] = {name: [] for name in text_encoders or {}}
    labels: list[torch.Tensor] = []
    captions: list[str] = []
    owners: list[int] = []
    for batch in loader:
        take = len(batch["key"]) if budget is None else min(len(batch["key"]), budget - len(keys))
        images = batch["image"][:take].to(device, non_blocking=True)
        with autocast(device):
            for name, encode in image_encoders.items():
                image[name].append(encode(images).float())
        if "label" in batch:
            labels.append(batch["label"][:take].to(device))
        if text_encoders:
            batch_captions = []
            for i, caption in enumerate(batch["caption"][:take]):
                group = [line.strip() for line in caption.splitlines() if line.strip()] if split_captions else [caption]
                batch_captions.extend(group)
                owners.extend([len(keys) + i] * len(group))
            captions.extend(batch_captions)
            # The loader's tokens are one row per image; split captions are tokenised here.
            tokens = tokenizer(batch_captions) if split_captions else batch["text"][:take]
            with autocast(device):
                for name, encode in text_encoders.items():
                    text[name].append(encode(tokens.to(device)).float())
        keys.extend(batch["key"][:take])
        if budget is not None and len(keys) >= budget:
            break
    return _gather(keys, image, labels, text, captions, owners, device, bool(text_encoders))


def _gather(keys, image, labels, text, captions, owners, device, with_text: bool) -> Features:
    """Gather every rank's rows, renumber caption owners globally, and sort everything by key."""
    counts = gather_rows(torch.tensor([len(keys)], device=device)).tolist()
    offset = sum(counts[:world()[0]])
    all_keys = gather_lists(keys)
    order = sorted(range(len(all_keys)), key=all_keys.__getitem__)
    perm = torch.tensor(order, dtype=torch.long, device=device)
    feats = Features(keys=[all_keys[i] for i in order], image={})
    for name, parts in image.items():
        feats.image[name] = gather_rows(torch.cat(parts) if parts else torch.zeros(0, 1, device=device))[perm]
    if any(gather_lists([bool(labels)])):  # decided together: a rank without samples must still gather
        feats.labels["label"] = gather_rows(torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long,
                                                                                         device=device))[perm]
    if with_text:
        # A caption follows its image: new row of image i = position of i in `order`.
        new_row = torch.empty_like(perm)
        new_row[perm] = torch.arange(len(order), device=device)
        owner = new_row[gather_rows(torch.tensor(owners, dtype=torch.long, device=device) + offset)]
        text_order = torch.sort(owner, stable=True).indices
        feats.text_image = owner[text_order]
        all_captions = gather_lists(captions)
        feats.captions = [all_captions[i] for i in text_order.tolist()]
        for name, parts in text.items():
            feats.text[name] = gather_rows(torch.cat(parts) if parts else torch.zeros(0, 1, device=device))[text_order]
    return feats
