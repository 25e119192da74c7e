"""Fine-tuning the whole image encoder with a new head: layer-wise lr decay, label smoothing, drop path."""

from __future__ import annotations

import copy
import logging
import math
from collections.abc import Iterable
from typing import cast

import torch
import torch.nn as nn
from torch.nn.parallel import DistributedDataParallel

from pretrain_mm.config import EvalConfig, FinetuneConfig
from pretrain_mm.data import build_loader
from pretrain_mm.distributed import rank_world
from pretrain_mm.eval.datasets import EvalSet
from pretrain_mm.eval.features import extract_features
from pretrain_mm.eval.metrics import accuracies
from pretrain_mm.models import no_weight_decay_names
from pretrain_mm.models.layers import Block
from pretrain_mm.models.vit import VisionTransformer
from pretrain_mm.precision import inference_autocast
from pretrain_mm.schedule import warmup_cosine

log = logging.getLogger(__name__)


def image_tower(model: nn.Module) -> VisionTransformer:
    """The VisionTransformer inside a CLIP (visual, with its projection) or an MAE (encoder)."""
    return cast(VisionTransformer, model.visual if hasattr(model, "visual") else model.encoder)


class Classifier(nn.Module):
    """tower(images) -> linear head. The head is tower.layer_id's last group, so it gets the full lr."""

    def __init__(self, tower: VisionTransformer, num_classes: int):
        super().__init__()
        self.tower = tower
        dim = tower.head.out_features if isinstance(tower.head, nn.Linear) else tower.width
        self.head = nn.Linear(dim, num_classes)
        nn.init.trunc_normal_(self.head.weight, std=2e-5)  # MAE's fine-tuning head init
        nn.init.zeros_(self.head.bias)

    def forward(self, images: torch.Tensor) -> torch.Tensor:
        return self.head(self.tower(images))

    def no_weight_decay(self) -> set[str]:
        """The tower's own rule, and the same rule for the head (its bias)."""
        return {f"tower.{name}" for name in self.tower.no_weight_decay()} | {
            f"head.{name}" for name in no_weight_decay_names(self.head)
        }


def set_drop_path(tower: VisionTransformer, rate: float) -> None:
    """Stochastic depth rising linearly from 0 at the first block to `rate` at the last (as timm)."""
    depth = len(tower.blocks)
    for i, block in enumerate(cast(Iterable[Block], tower.blocks)):
        block.drop_path = rate * i / max(depth - 1, 1)


def layer_decay_groups(model: Classifier, lr: float, weight_decay: float, layer_decay: float) -> list[dict]:
    """AdamW parameter groups: layer i of the tower (tower.layer_id) gets lr * layer_decay^(last - i),
    the head the full lr; no weight decay on the model's no_weight_decay() names (as in pretraining)."""
    tower = model.tower
    last = tower.num_layers - 1
    skip = model.no_weight_decay()
    groups: dict[tuple, dict] = {}
    for name, param in model.named_parameters():
        if not param.requires_grad:
            continue
        if name.startswith("tower."):
            inner = name[len("tower.") :]
            layer = tower.layer_id(inner)
        else:
            layer = last
        decay = name not in skip
        key = (layer, decay)
        if key not in groups:
            groups[key] = {
                "params": [],
                "lr": lr * layer_decay ** (last - layer),
                "weight_decay": weight_decay if decay else 0.0,
            }
        groups[key]["params"].append(param)
    for group in groups.values():
        group["initial_lr"] = group["lr"]
    return list(groups.values())


def finetune(
    model: nn.Module,
    ds: EvalSet,
    num_classes: int,
    num_train: int,
    finetune_cfg: FinetuneConfig,
    eval_cfg: EvalConfig,
    image_size: int,
    device: torch.device,
) -> tuple[dict, torch.Tensor, torch.Tensor]:
    """Fine-tune a copy of `model`'s image tower on ds.train_urls and test it on ds.test_urls.
    eval_cfg gives the batch size, workers, sample cap and seed. Returns
    (top-1 / top-5 accuracy, predictions, labels). Every rank trains on its share of each batch,
    with gradients averaged by DDP, so all ranks hold the same weights."""
    rank, world_size = rank_world()
    if finetune_cfg.batch_size % world_size:
        raise ValueError(
            f"eval.finetune.batch_size={finetune_cfg.batch_size} must be a multiple of the world size {world_size}"
        )
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(eval_cfg.seed)
        classifier = Classifier(copy.deepcopy(image_tower(model)), num_classes).to(device)
    set_drop_path(classifier.tower, finetune_cfg.drop_path)
    optimizer = torch.optim.AdamW(
        layer_decay_groups(classifier, finetune_cfg.lr, finetune_cfg.weight_decay, finetune_cfg.layer_decay),
        betas=(0.9, 0.999),
    )
    # Resampled: every rank gets the same number of batches, as the gradient all-reduce needs.
    loader = build_loader(
        ds.train_urls,
        batch_size=finetune_cfg.batch_size // world_size,
        image_size=image_size,
        train=True,
        num_workers=eval_cfg.num_workers,
        seed=eval_cfg.seed,
        resampled=True,
        samples_per_epoch=num_train,
        label_key=ds.label_key,
        hflip=finetune_cfg.hflip,
        drop_last=True,
        shuffle_buffer=1000,
    )
    steps_per_epoch = len(loader)
    total, warmup = finetune_cfg.epochs * steps_per_epoch, finetune_cfg.warmup_epochs * steps_per_epoch
    loss_fn = nn.CrossEntropyLoss(label_smoothing=finetune_cfg.label_smoothing)
    # DDP averages the gradients over ranks during backward (each rank trains on its share of the batch).
    trained = DistributedDataParallel(classifier) if world_size > 1 else classifier
    step = 0
    classifier.train()
    for epoch in range(finetune_cfg.epochs):
        running = 0.0
        for batch in loader:
            scale = warmup_cosine(step, warmup=warmup, total=total)
            for group in optimizer.param_groups:
                group["lr"] = group["initial_lr"] * scale
            with inference_autocast(device, eval_cfg.precision):
                loss = loss_fn(trained(batch["image"].to(device)).float(), batch["label"].to(device))
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            running += loss.item()
            step += 1
        if not math.isfinite(running):
            raise RuntimeError(f"fine-tuning diverged in epoch {epoch + 1} (loss {running}); lower eval.finetune.lr")
        if rank == 0:
            log.info(
                "fine-tune %s epoch %d/%d: loss %.4f",
                ds.name,
                epoch + 1,
                finetune_cfg.epochs,
                running / steps_per_epoch,
            )
    classifier.eval()
    test = build_loader(
        ds.test_urls,
        batch_size=eval_cfg.batch_size,
        image_size=image_size,
        train=False,
        num_workers=eval_cfg.num_workers,
        label_key=ds.label_key,
    )
    out = extract_features(
        test, {"logits": classifier}, device, max_samples=eval_cfg.max_samples, precision=eval_cfg.precision
    )
    logits, labels = out.image["logits"], out.labels["label"]
    return accuracies(logits, labels, num_classes), logits.argmax(dim=1), labels
