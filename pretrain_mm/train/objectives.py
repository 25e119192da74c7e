"""What one batch costs: the CLIP contrastive loss (exact across ranks) or the MAE reconstruction loss.

An objective is called as `objective(model, batch) -> loss`. `couples_batch` says whether the loss
couples the samples of a batch (contrastive: every pair is a negative), in which case it also
exposes `forward` (the model's outputs) and `loss` (the loss of outputs) separately, so that
gradient accumulation can compute the loss of the whole batch from cached features.
`after_step(model)` runs after every optimiser step.
"""

from pretrain_mm.config import LossConfig, ModelConfig, ModelKind
from pretrain_mm.models.clip import hard_negative_terms
from pretrain_mm.ops import distributed_contrastive_loss, distributed_row_mean


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

    def __call__(self, model, batch):
        return self.loss(self.forward(model, batch))

    def after_step(self, model) -> None:
        model.clamp_logit_scale_()


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
    assert model_cfg.kind == ModelKind.mae, model_cfg.kind
    return MaeObjective()
