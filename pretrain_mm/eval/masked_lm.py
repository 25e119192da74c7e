"""Masked-token accuracy on held-out captions, beside the unigram baseline (the training captions' most frequent
tokens, whatever the context): what masked language modelling learnt beyond word frequencies."""

from __future__ import annotations

from collections import Counter
from collections.abc import Callable
from typing import cast

import torch

from pretrain_mm.config import DataConfig
from pretrain_mm.data import Tokenizer, build_loader
from pretrain_mm.models.mlm import MaskingRule, mask_tokens, maskable
from pretrain_mm.ops import IGNORE


def caption_tokens(urls: list[str], tokenizer: Tokenizer, data_cfg: DataConfig, batch_size: int, max_samples: int):
    """The tokenised captions (B, T) of a split, batch by batch, at most max_samples (0: all) in all; the
    samples are read as training reads them (data.image_key, data.caption_key)."""
    loader = build_loader(
        urls,
        batch_size=batch_size,
        tokenizer=tokenizer,
        image_size=32,  # (decoded, not looked at)
        train=False,
        image_key=data_cfg.image_key,
        caption_key=data_cfg.caption_key,
    )
    seen = 0
    for batch in loader:
        text = batch["text"]
        if max_samples:
            text = text[: max_samples - seen]
        seen += text.shape[0]
        yield text
        if max_samples and seen >= max_samples:
            return


def masked_split(
    urls: list[str],
    tokenizer: Tokenizer,
    rule: MaskingRule,
    data_cfg: DataConfig,
    seed: int,
    batch_size: int,
    max_samples: int,
) -> list[tuple[torch.Tensor, torch.Tensor]]:
    """(inputs, targets) batches of a split's captions under one fixed draw of masks (seeded): every tower is
    scored on the same masked tokens."""
    generator = torch.Generator().manual_seed(seed)
    return [
        mask_tokens(text, rule, generator)
        for text in caption_tokens(urls, tokenizer, data_cfg, batch_size, max_samples)
    ]


@torch.no_grad()
def masked_token_accuracy(model: torch.nn.Module, batches, device: torch.device) -> dict[str, float]:
    """top-1 / top-5 accuracy of the model's predictions of the masked tokens (a model with
    `masked_token_logits`: the mlm kind, or CLIP / CoCa built with mlm=True)."""
    correct1 = correct5 = tokens = 0
    predict = cast(Callable[[torch.Tensor], torch.Tensor], model.masked_token_logits)
    for inputs, targets in batches:
        logits = predict(inputs.to(device)).float()
        targets = targets[:, : logits.shape[1]].to(device)
        chosen = targets != IGNORE
        top5 = logits.topk(min(5, logits.shape[-1]), dim=-1).indices
        correct1 += int((top5[..., 0] == targets)[chosen].sum())
        correct5 += int((top5 == targets[..., None]).any(-1)[chosen].sum())
        tokens += int(chosen.sum())
    tokens = max(tokens, 1)
    return {"top1": correct1 / tokens, "top5": correct5 / tokens}


def unigram_baseline(train_tokens, rule: MaskingRule, batches) -> dict[str, float]:
    """The accuracy of always predicting the training captions' most frequent maskable token (top-5: the five
    most frequent) on the masked tokens of `batches`."""
    counts: Counter[int] = Counter()
    for text in train_tokens:
        counts.update(text[maskable(text, rule)].tolist())
    frequent = [token for token, _ in counts.most_common(5)]
    targets = torch.cat([t[t != IGNORE] for _, t in batches])
    total = max(int(targets.numel()), 1)
    hits = [int((targets == token).sum()) for token in frequent]
    return {"top1": (hits[0] if hits else 0) / total, "top5": sum(hits) / total}
