"""What one batch costs: the CLIP contrastive loss (exact across ranks) or the MAE reconstruction loss."""

from pretrain_mm.ops import distributed_contrastive_loss


def clip_objective(loss_cfg):
    def loss_fn(model, batch):
        out = model(batch["image"], batch["text"])
        bias = out.get("logit_bias") if loss_cfg.kind == "sigmoid" else None
        return distributed_contrastive_loss(out["image_features"], out["text_features"], out["logit_scale"], bias,
                                            kind=loss_cfg.kind, impl=loss_cfg.impl)
    return loss_fn


def mae_objective(model, batch):
    return model(batch["image"])["loss"]


def build_objective(model_cfg, loss_cfg):
    if model_cfg.kind == "clip":
        return clip_objective(loss_cfg)
    if model_cfg.kind == "mae":
        return mae_objective
    raise ValueError(f"model.kind must be clip or mae, got {model_cfg.kind!r}")
