"""The config's choice Enums name exactly what the library accepts: the library owns each list (the op its loss
kinds and ways, models their kinds, precision.py its choices); config.py only mirrors them for Hydra, without
importing torch, and this keeps the two from drifting."""

from dataclasses import fields

from pretrain_mm.config import CaptionConfig, DecodingMethod, LossImpl, LossKind, ModelKind, PrecisionChoice
from pretrain_mm.models.generate import METHODS, Decoding
from pretrain_mm.models.sizes import MODEL_KINDS
from pretrain_mm.ops.contrastive import IMPLS, KINDS
from pretrain_mm.precision import CHOICES


def test_each_choice_enum_is_the_librarys_list():
    assert [str(kind) for kind in LossKind] == list(KINDS)
    assert [str(impl) for impl in LossImpl] == list(IMPLS)
    assert [str(kind) for kind in ModelKind] == list(MODEL_KINDS)
    assert [str(choice) for choice in PrecisionChoice] == list(CHOICES)
    assert [str(method) for method in DecodingMethod] == list(METHODS)


def test_eval_caption_holds_every_decoding_setting():
    """eval.caption owns the decoding defaults; generate's Decoding takes the same settings (and the seed is
    the evaluator's)."""
    assert {f.name for f in fields(CaptionConfig)} == {f.name for f in fields(Decoding)} | {"seed"}
