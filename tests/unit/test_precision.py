"""trainer.precision: `auto` is bf16 only where this hardware multiplies bf16 natively (a run saying what it
chose: tests/integration/test_precision_run.py)."""

import pytest
import torch

from helpers.cpu import NATIVE_BF16
from pretrain_mm.precision import cpu_bf16_features, inference_autocast, resolve_precision


def test_auto_on_this_cpu_follows_its_bf16_features():
    """What /proc/cpuinfo says decides: an AVX2-only CPU (AMD Zen 3) computes in fp32, a CPU with
    AVX512-BF16 (AMD Zen 5) or AMX (Intel Sapphire Rapids) in bf16."""
    assert cpu_bf16_features() == NATIVE_BF16
    chosen = resolve_precision("auto", torch.device("cpu"))
    assert chosen.bf16 == bool(NATIVE_BF16)
    if NATIVE_BF16:
        assert chosen.name == "bf16" and NATIVE_BF16[0] in chosen.reason
    else:
        assert chosen.name == "fp32" and "no native bf16" in chosen.reason


@pytest.mark.parametrize("asked,bf16", [("bf16", True), ("fp32", False)])
def test_an_explicit_precision_is_kept(asked, bf16):
    chosen = resolve_precision(asked, torch.device("cpu"))
    assert chosen.bf16 == bf16 and chosen.reason == f"trainer.precision={asked}"


def test_a_precision_that_does_not_exist_names_the_key():
    with pytest.raises(ValueError, match="trainer.precision must be auto, bf16 or fp32; got 'fp16'"):
        resolve_precision("fp16", torch.device("cpu"))


@pytest.mark.parametrize("asked", ["auto", "bf16", "fp32"])
def test_evaluation_computes_in_eval_precision(asked):
    """eval.precision: `auto` as training's rule, fp32 to score as CLIP_benchmark does on a CPU (no bf16 rounding)."""
    with inference_autocast(torch.device("cpu"), asked):
        enabled = torch.is_autocast_enabled("cpu")
        out = torch.nn.functional.linear(torch.ones(2, 3), torch.ones(4, 3))
    expect_bf16 = asked == "bf16" or (asked == "auto" and bool(NATIVE_BF16))
    assert enabled == expect_bf16
    assert out.dtype == (torch.bfloat16 if expect_bf16 else torch.float32)


def test_a_wrong_eval_precision_names_its_key():
    with pytest.raises(ValueError, match="eval.precision must be auto, bf16 or fp32; got 'half'"):
        with inference_autocast(torch.device("cpu"), "half"):
            pass
