"""Feature extraction: one pass over an eval split on every rank, all towers at once, gathered to every rank."""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass, field

import torch

from pretrain_mm.distributed import gather_lists, gather_rows, rank_world
from pretrain_mm.precision import inference_autocast

Encoder = Callable[[torch.Tensor], torch.Tensor]


@dataclass
class Features:
    """One split's features for every tower, in a fixed order (sorted by sample key, so the same
    on any number of ranks). `image[tower]` (N, D); `labels[name]` (N,) long; with captions,
    `text[tower]` (M, D), `captions` (M strings) and `text_image` (M,): each caption's image row."""

    keys: list[str]
    image: dict[str, torch.Tensor]
    labels: dict[str, torch.Tensor] = field(default_factory=dict)
    text: dict[str, torch.Tensor] = field(default_factory=dict)
    captions: list[str] | None = None
    text_image: torch.Tensor | None = None

    def __len__(self) -> int:
        return len(self.keys)


@torch.no_grad()
def extract_features(
    loader,
    image_encoders: dict[str, Encoder],
    device: torch.device,
    *,
    max_samples: int = 0,
    text_encoders: dict[str, Encoder] | None = None,
    tokenizer=None,
    split_captions: bool = False,
    precision: str = "auto",
) -> Features:
    """Run every encoder over this rank's share of `loader` (a pretrain_mm.data loader split by
    rank), then gather. max_samples caps the split over all ranks (0: no cap). With text_encoders
    (and a loader built with a tokenizer), captions are encoded too; split_captions treats each
    caption as several, one per line (CLIP_benchmark's retrieval sets). precision: eval.precision."""
    rank, world_size = rank_world()
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
        with inference_autocast(device, precision):
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
            with inference_autocast(device, precision):
                for name, encode in text_encoders.items():
                    text[name].append(encode(tokens.to(device)).float())
        keys.extend(batch["key"][:take])
        if budget is not None and len(keys) >= budget:
            break
    return _gather(keys, image, labels, text, captions, owners, device, bool(text_encoders))


def _gather(keys, image, labels, text, captions, owners, device, with_text: bool) -> Features:
    """Gather every rank's rows, renumber caption owners globally, and sort everything by key."""
    counts = gather_rows(torch.tensor([len(keys)], device=device)).tolist()
    offset = sum(counts[: rank_world()[0]])
    all_keys = gather_lists(keys)
    order = sorted(range(len(all_keys)), key=all_keys.__getitem__)
    perm = torch.tensor(order, dtype=torch.long, device=device)
    feats = Features(keys=[all_keys[i] for i in order], image={})
    for name, parts in image.items():
        feats.image[name] = gather_rows(torch.cat(parts) if parts else torch.zeros(0, 1, device=device))[perm]
    if any(gather_lists([bool(labels)])):  # decided together: a rank without samples must still gather
        feats.labels["label"] = gather_rows(
            torch.cat(labels) if labels else torch.zeros(0, dtype=torch.long, device=device)
        )[perm]
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
