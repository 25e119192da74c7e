"""What one batch costs: the CLIP contrastive loss (exact across ranks), CoCa's contrastive + captioning loss,
or the MAE reconstruction loss.

An objective is called as `objective(model, batch) -> loss`. `couples_batch` says whether the loss
couples the samples of a batch (contrastive: every pair is a negative), in which case it also
exposes `forward` (the model's outputs, reduced to what the loss needs per row) and `loss` (the loss of
outputs) separately, so that gradient accumulation can compute the loss of the whole batch from cached
features; `separable_loss(out, whole)` is the part of `loss` that is a sum over micro-batches (CoCa's
captioning), for one micro-batch's outputs, normalised by the whole batch's rows.
`after_step(model)` runs after every optimiser step.
"""

import torch
import torch.nn.functional as F

from pretrain_mm.config import LossConfig, ModelConfig, ModelKind
from pretrain_mm.models.clip import hard_negative_terms
from pretrain_mm.models.coca import IGNORE
from pretrain_mm.ops import distributed_contrastive_loss, distributed_row_mean, distributed_token_mean, token_total


class ContrastiveObjective:
    """The contrastive loss of the batch; where the batch has hard-negative captions (data.hard_negatives),
    plus loss.hard_negative_weight times NegCLIP's term (models.clip.hard_negative_terms)."""

    couples_batch = True

    def __init__(self, loss_cfg: LossConfig):
        self.kind, self.impl = str(loss_cfg.kind), str(loss_cfg.impl)  # plain strings for the ops (and torch.compile)
        self.hard_negative_weight = loss_cfg.hard_negative_weight

    def forward(self, model, batch) -> dict:
        if "neg_text" not in batch or not self.hard_negative_weight:
            return model(batch["image"], batch["text"])
        return dict(model(batch["image"], batch["text"], batch["neg_text"]), neg_mask=batch["neg_mask"])

    def loss(self, out: dict):
        bias = out.get("logit_bias") if self.kind == "sigmoid" else None
        loss = distributed_contrastive_loss(
            out["image_features"], out["text_features"], out["logit_scale"], bias, kind=self.kind, impl=self.impl
        )
        if "neg_text_features" in out and self.hard_negative_weight:
            loss = loss + self.hard_negative_weight * distributed_row_mean(
                hard_negative_terms(
                    out["image_features"],
                    out["text_features"],
                    out["neg_text_features"],
                    out["logit_scale"],
                    out["neg_mask"],
                )
            )
        return loss

    def separable_loss(self, out: dict, whole: dict) -> torch.Tensor | None:
        return None  # every term couples the batch (or is a row mean through the features)

    def __call__(self, model, batch):
        return self.loss(self.forward(model, batch))

    def after_step(self, model) -> None:
        model.clamp_logit_scale_()


class CocaObjective(ContrastiveObjective):
    """The contrastive loss + loss.caption_weight * the next-token cross-entropy, averaged over every caption
    token of the global batch (end-of-text included, what follows it not), with loss.caption_label_smoothing."""

    def __init__(self, loss_cfg: LossConfig):
        super().__init__(loss_cfg)
        self.caption_weight, self.label_smoothing = loss_cfg.caption_weight, loss_cfg.caption_label_smoothing

    def forward(self, model, batch) -> dict:
        """The model's outputs, the caption logits reduced to per-row sums (GradCache keeps (B,), not (B, T, vocab))."""
        out = super().forward(model, batch)
        logits, targets = out.pop("caption_logits"), out.pop("caption_targets")
        token_losses = F.cross_entropy(
            logits.transpose(1, 2).to(torch.promote_types(logits.dtype, torch.float32)),  # fp32 at least, as the op
            targets,
            ignore_index=IGNORE,
            reduction="none",
            label_smoothing=self.label_smoothing,
        )  # (B, T - 1), 0 where ignored
        out["caption_nll"] = token_losses.sum(dim=1)
        out["caption_tokens"] = (targets != IGNORE).sum(dim=1)
        return out

    def loss(self, out: dict):
        return super().loss(out) + self.separable_loss(out, out)

    def separable_loss(self, out: dict, whole: dict) -> torch.Tensor:
        """The captioning term of `out`'s rows, its token sum over the whole batch's token count (all ranks)."""
        return self.caption_weight * distributed_token_mean(out["caption_nll"], token_total(whole["caption_tokens"]))


class MaeObjective:
    couples_batch = False

    def __call__(self, model, batch):
        return model(batch["image"])["loss"]

    def after_step(self, model) -> None:
        pass


def build_objective(model_cfg: ModelConfig, loss_cfg: LossConfig) -> "ContrastiveObjective | MaeObjective":
    """The objective of the model's kind (the config's ModelKind admits no other)."""
    if model_cfg.kind == ModelKind.clip:
        return ContrastiveObjective(loss_cfg)
    if model_cfg.kind == ModelKind.coca:
        return CocaObjective(loss_cfg)
    assert model_cfg.kind == ModelKind.mae, model_cfg.kind
    return MaeObjective()
