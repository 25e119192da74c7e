"""Distillation: the teacher's terms vanish when the student is the teacher, match a float64 reference in value
and gradient, and the teacher is never trained."""

import copy

import pytest
import torch
import torch.nn.functional as F

from helpers.tiny_models import captions, images, tiny_clip
from pretrain_mm.config import DistillConfig, LossConfig
from pretrain_mm.train.distill import DistillationObjective, distill_dim, distillation_terms
from pretrain_mm.train.objectives import ContrastiveObjective

pytestmark = pytest.mark.usefixtures("one_thread")


def batch(n=6):
    return {"image": images(n).double(), "text": captions(n)}


def objective(teacher, **weights):
    return DistillationObjective(ContrastiveObjective(LossConfig(impl="reference")), teacher, DistillConfig(**weights))


def test_the_distillation_terms_are_zero_when_the_student_is_the_teacher():
    student = tiny_clip().double()
    teacher = copy.deepcopy(student).requires_grad_(False).eval()
    student.eval()  # (the same function: no patch dropout or drop path either)
    obj = objective(teacher, temperature=3.0)
    out = obj.forward(student, batch())
    terms = distillation_terms(out, obj.teacher_scale, 3.0)
    assert abs(terms["kd"].item()) < 1e-12 and abs(terms["cosine"].item()) < 1e-12
    only_teacher = obj.loss(out) - obj.cfg.contrastive_weight * obj.student.coupled_loss(out)
    assert abs(only_teacher.item()) < 1e-12


def reference_kd(image, text, t_image, t_text, scale, t_scale, temperature):
    """Plainly, in float64: both directions' KL(teacher || student) at temperature T, times T^2."""
    total = 0.0
    for a, b, ta, tb in ((image, text, t_image, t_text), (text, image, t_text, t_image)):
        for i in range(a.shape[0]):
            p = torch.softmax(t_scale * (tb @ ta[i]) / temperature, dim=0)
            log_q = torch.log_softmax(scale * (b @ a[i]) / temperature, dim=0)
            total = total + (p * (p.log() - log_q)).sum()
    return temperature**2 * total / (2 * image.shape[0])


def test_the_kd_term_and_its_gradient_match_a_float64_reference():
    g = torch.Generator().manual_seed(0)
    image, text, t_image, t_text = (
        F.normalize(torch.randn(7, 16, generator=g, dtype=torch.float64), dim=-1) for _ in range(4)
    )
    scale, t_scale = torch.tensor([9.0], dtype=torch.float64), torch.tensor(14.0, dtype=torch.float64)
    leaves = [x.clone().requires_grad_() for x in (image, text, scale)]
    out = {
        "image_features": leaves[0],
        "text_features": leaves[1],
        "logit_scale": leaves[2],
        "teacher_image_features": t_image,
        "teacher_text_features": t_text,
    }
    kd = distillation_terms(out, t_scale, 2.5)["kd"]
    kd.backward()
    ref_leaves = [x.clone().requires_grad_() for x in (image, text, scale)]
    ref = reference_kd(ref_leaves[0], ref_leaves[1], t_image, t_text, ref_leaves[2], t_scale, 2.5)
    ref.backward()
    assert kd.item() == pytest.approx(ref.item(), rel=1e-12)
    for got, want in zip(leaves, ref_leaves):
        torch.testing.assert_close(got.grad, want.grad, rtol=1e-10, atol=1e-14)


def test_the_teacher_gets_no_gradient_and_the_students_heads_map_to_its_width():
    teacher = tiny_clip(embed_dim=96).double().requires_grad_(False).eval()
    width = distill_dim(128, teacher)
    assert width == 96 and distill_dim(96, teacher) == 0
    student = tiny_clip(distill_dim=width).double()
    obj = objective(teacher, kd_weight=0.5, cosine_weight=2.0)
    obj(student, batch()).backward()
    assert all(p.grad is None for p in teacher.parameters())
    assert student.distill_image.weight.grad is not None and student.distill_image.weight.grad.abs().sum() > 0
    assert student.visual.head.weight.grad.abs().sum() > 0
