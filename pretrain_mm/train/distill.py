"""Distillation (DistilBERT's recipe on CLIP's towers, as TinyCLIP): the teacher, the loss terms, the objective.

loss = contrastive_weight * the student's own loss (contrastive; CoCa's captioning and MLM terms added
       unweighted, as without a teacher)
     + kd_weight * T^2 * KL(teacher || student) of the image->text and text->image similarity
       distributions at temperature T, over the global batch (each row a softmax over every pair)
     + cosine_weight * (1 - cosine) between the student's features (mapped to the teacher's width by the
       student's distill heads where the widths differ) and the teacher's, images and texts.

KL, not the soft cross-entropy: the two differ by the teacher's entropy, a constant, so the gradients are
the same, and KL is zero when the student is the teacher. T^2 keeps the term's gradient scale independent
of T (Hinton et al.). Each rank computes its rows against the gathered columns (ops.gather_rows): the
(n x N) blocks of both models' logits are materialised, which the fused op avoids for the contrastive
loss; for the batches distillation is run with here that is a few MB.

The teacher is a finished run's model.safetensors (safetensors never run code), in eval mode, without
gradients, replicated on every rank (not sharded: it is not trained), run in the step's precision (bf16
autocast where the CPU or GPU has it natively). It is not part of the trained model, so it is never in
a checkpoint; resuming loads it again from distill.teacher.
"""

from __future__ import annotations

from typing import cast

import torch
import torch.nn.functional as F

from pretrain_mm.config import TEXT_KINDS, Config, DistillConfig
from pretrain_mm.data import Tokenizer
from pretrain_mm.interop.weights import load_weights_model
from pretrain_mm.models import CLIP
from pretrain_mm.ops import distributed_row_mean, gather_rows
from pretrain_mm.train.objectives import CoupledObjective
from pretrain_mm.train.warm_start import check_same_tokenizer, finished_weights


def load_teacher(cfg: Config, tokenizer: Tokenizer, device: torch.device) -> CLIP:
    """distill.teacher's model, frozen, in eval mode; a ValueError when it cannot teach this run's model."""
    weights = finished_weights(cfg.distill.teacher, "distill.teacher")
    teacher, teacher_cfg, _ = load_weights_model(weights, device)
    if teacher_cfg.model.kind not in TEXT_KINDS:
        raise ValueError(f"distill.teacher={weights} is a {teacher_cfg.model.kind} model; a teacher needs both towers")
    if teacher_cfg.data.image_size != cfg.data.image_size:
        raise ValueError(
            f"distill.teacher={weights} sees {teacher_cfg.data.image_size} px images, this run "
            f"{cfg.data.image_size} px: set data.image_size={teacher_cfg.data.image_size}"
        )
    check_same_tokenizer(teacher_cfg, tokenizer, f"distill.teacher={weights}")
    teacher.requires_grad_(False)
    return cast(CLIP, teacher.eval())


def distill_dim(student_embed_dim: int, teacher: CLIP) -> int:
    """The student's distill heads' width: the teacher's feature width where it differs, else 0 (no heads)."""
    width = cast(torch.nn.Linear, teacher.visual.head).out_features
    return width if width != student_embed_dim else 0


def kd_rows(
    student_a: torch.Tensor,
    student_b: torch.Tensor,
    teacher_a: torch.Tensor,
    teacher_b: torch.Tensor,
    student_scale: torch.Tensor,
    teacher_scale: torch.Tensor,
    temperature: float,
) -> torch.Tensor:
    """Per local row of a (n,): KL(teacher || student) of its softmax over every row of b (all ranks'), logits
    scale * cosine / temperature. Features unit-norm; in fp32 at least."""
    dtype = torch.promote_types(student_a.dtype, torch.float32)
    s_a, s_b, t_a, t_b = (x.to(dtype) for x in (student_a, student_b, teacher_a, teacher_b))
    student = F.log_softmax(student_scale.to(dtype) * s_a @ gather_rows(s_b).T / temperature, dim=-1)
    teacher = F.log_softmax(teacher_scale.to(dtype) * t_a @ gather_rows(t_b).T / temperature, dim=-1)
    return (teacher.exp() * (teacher - student)).sum(dim=-1)


def distillation_terms(out: dict, teacher_scale: torch.Tensor, temperature: float) -> dict[str, torch.Tensor]:
    """{"kd": T^2 * the mean over both directions and the global batch of kd_rows, "cosine": the mean over
    images and texts of 1 - cosine(student feature, mapped where needed; teacher feature)}."""
    image, text = out["image_features"], out["text_features"]
    t_image, t_text = out["teacher_image_features"], out["teacher_text_features"]
    scale = out["logit_scale"]
    i2t = kd_rows(image, text, t_image, t_text, scale, teacher_scale, temperature)
    t2i = kd_rows(text, image, t_text, t_image, scale, teacher_scale, temperature)
    kd = temperature**2 * distributed_row_mean((i2t + t2i) / 2)
    dtype = torch.promote_types(image.dtype, torch.float32)
    mapped_image, mapped_text = out.get("image_distill", image), out.get("text_distill", text)
    cosine = (
        F.cosine_similarity(mapped_image.to(dtype), t_image.to(dtype), dim=-1)
        + F.cosine_similarity(mapped_text.to(dtype), t_text.to(dtype), dim=-1)
    ) / 2
    return {"kd": kd, "cosine": distributed_row_mean(1 - cosine)}


class DistillationObjective(CoupledObjective):
    """The student's objective (ContrastiveObjective or CocaObjective) plus the teacher's terms (module doc).
    Couples the batch: gradient accumulation runs it through GradCache like the contrastive loss, the
    teacher's features cached as row data."""

    def __init__(self, student_objective, teacher: CLIP, distill_cfg: DistillConfig):
        if distill_cfg.temperature <= 0:
            raise ValueError(f"distill.temperature must be > 0, got {distill_cfg.temperature}")
        self.student, self.teacher, self.cfg = student_objective, teacher, distill_cfg
        self.teacher_scale = teacher.logit_scale.detach().exp()

    def prepare(self, batch: dict, step: int) -> dict:
        return self.student.prepare(batch, step)

    def forward(self, model, batch) -> dict:
        out = self.student.forward(model, batch)
        with torch.no_grad():
            out["teacher_image_features"] = self.teacher.encode_image(batch["image"])
            out["teacher_text_features"] = self.teacher.encode_text(batch["text"])
        return out

    def loss(self, out: dict) -> torch.Tensor:
        terms = distillation_terms(out, self.teacher_scale, self.cfg.temperature)
        separable = self.student.separable_loss(out, out)
        return (
            self.cfg.contrastive_weight * self.student.coupled_loss(out)
            + self.cfg.kd_weight * terms["kd"]
            + self.cfg.cosine_weight * terms["cosine"]
            + (separable if separable is not None else 0.0)
        )

    def separable_loss(self, out: dict, whole: dict) -> torch.Tensor | None:
        return self.student.separable_loss(out, whole)

    def after_step(self, model) -> None:
        self.student.after_step(model)


def with_distill_heads(cfg, teacher: CLIP):
    """`cfg` with model.args.distill_dim set to the teacher's feature width where it differs from the student's
    (written into config.yaml, so the distilled model rebuilds with its heads); else cfg as it is."""
    from omegaconf import OmegaConf

    from pretrain_mm.config import plain_config
    from pretrain_mm.models import model_arguments

    args = dict(cfg.model.get("args") or {})
    embed_dim = model_arguments(str(cfg.model.kind), cfg.model.size, **args)["embed_dim"]
    width = distill_dim(embed_dim, teacher)
    if args.get("distill_dim", 0) == width:
        return cfg
    out = OmegaConf.create(plain_config(cfg))
    out.model.args = {**args, "distill_dim": width}
    return out
