"""Masked language modelling: BERT's 80/10/10 of 15% (RoBERTa's dynamic masks), a loss on the masked tokens
only, the text tower's bidirectional mode, the masked-token evaluator and its unigram baseline."""

import math

import pytest
import torch
import torch.nn.functional as F

from helpers.tiny_models import CONTEXT, MLM_RULE, VOCAB, captions, tiny_clip, tiny_mlm
from pretrain_mm.config import LossConfig, ModelKind
from pretrain_mm.eval.masked_lm import masked_token_accuracy, unigram_baseline
from pretrain_mm.models import MaskingRule, mask_tokens
from pretrain_mm.models.mlm import maskable
from pretrain_mm.ops import IGNORE
from pretrain_mm.train.objectives import TextMasking, build_objective

pytestmark = pytest.mark.usefixtures("one_thread")
RULE = MaskingRule(rate=0.15, mask_id=1000, vocab_size=1000, pad_id=0, sot_id=998, eot_id=999)


def caption_rows(n: int, seed: int = 0) -> torch.Tensor:
    """Rows as the tokenizer makes them: SOT, 3 .. 30 word ids (never special), EOT, padding."""
    g = torch.Generator().manual_seed(seed)
    text = torch.zeros(n, 32, dtype=torch.long)
    for row, length in enumerate(torch.randint(3, 31, (n,), generator=g).tolist()):
        text[row, 0] = RULE.sot_id
        text[row, 1 : length + 1] = torch.randint(1, 998, (length,), generator=g)
        text[row, length + 1] = RULE.eot_id
    return text


def binomial_close(count: int, trials: int, p: float, sigmas: float = 5.0) -> bool:
    return abs(count - trials * p) <= sigmas * math.sqrt(trials * p * (1 - p))


def test_masking_chooses_15_percent_of_caption_tokens_then_80_10_10():
    text = caption_rows(4000)
    inputs, targets = mask_tokens(text, RULE, torch.Generator().manual_seed(1))
    eligible = maskable(text, RULE)
    chosen = targets != IGNORE
    assert eligible.sum() == (text != 0).sum() - 2 * text.shape[0]  # every word token, no SOT / EOT / pad
    assert not (chosen & ~eligible).any()  # special and padding tokens are never chosen
    assert torch.equal(targets[chosen], text[chosen])  # the targets are the original ids
    assert torch.equal(inputs[~chosen], text[~chosen])  # nothing else changes
    n = int(chosen.sum())
    assert binomial_close(n, int(eligible.sum()), 0.15)
    masked = int((inputs[chosen] == RULE.mask_id).sum())
    kept = int((inputs[chosen] == text[chosen]).sum())
    replaced = n - masked - kept
    assert binomial_close(masked, n, 0.8)
    # A random replacement equals the original with probability 1/997: kept holds ~10% + 0.1% / 997.
    assert binomial_close(kept, n, 0.1 + 0.1 / 997)
    assert binomial_close(replaced, n, 0.1 - 0.1 / 997)
    randoms = inputs[chosen & (inputs != RULE.mask_id) & (inputs != text)]
    assert randoms.min() >= 1 and randoms.max() < RULE.vocab_size  # the tokenizer's ids ...
    assert not torch.isin(randoms, torch.tensor([RULE.pad_id, RULE.sot_id, RULE.eot_id])).any()  # ... but specials


def test_random_replacements_cover_every_ordinary_id_and_no_special_one():
    rule = MaskingRule(rate=0.5, mask_id=7, vocab_size=7, pad_id=0, sot_id=5, eot_id=6)
    from pretrain_mm.models.mlm import random_tokens

    drawn = random_tokens((20000,), rule, torch.Generator().manual_seed(0), "cpu")
    assert set(drawn.unique().tolist()) == {1, 2, 3, 4}


def test_a_new_mask_every_step_reproducible_by_seed():
    batch = {"text": caption_rows(64)}
    masks = {
        (seed, step, rank): TextMasking(RULE, seed, rank)(batch, step)["mlm_text"]
        for seed in (0, 1)
        for step in (0, 1)
        for rank in (0, 1)
    }
    again = TextMasking(RULE, 0, 0)(batch, 1)["mlm_text"]
    assert torch.equal(again, masks[(0, 1, 0)])  # the same seed, step and rank: the same masks
    distinct = {tuple(m.flatten().tolist()) for m in masks.values()}
    assert len(distinct) == len(masks)  # another step (the caption seen again), seed or rank: other masks


def test_the_loss_counts_the_masked_positions_only():
    """The MLM objective against a plain float64 cross-entropy over the chosen positions; the targets
    elsewhere (IGNORE) and the padding length change nothing."""
    model = tiny_mlm().double()
    objective = build_objective(ModelKind.mlm, LossConfig(), TextMasking(MLM_RULE, 0, 0))
    batch = objective.prepare({"text": captions(8)}, step=0)
    loss = objective(model, batch)
    logits = model(batch["mlm_text"])["mlm_logits"]
    labels = batch["mlm_labels"][:, : logits.shape[1]]
    chosen = labels != IGNORE
    expected = F.cross_entropy(logits[chosen], labels[chosen], reduction="sum") / chosen.sum()
    assert loss.item() == pytest.approx(expected.item(), rel=1e-12)
    assert objective.step_tokens == chosen.sum()

    wider = {k: torch.cat([v, torch.zeros(8, 4, dtype=v.dtype)], dim=1) for k, v in batch.items()}
    wider["mlm_labels"][:, -4:] = IGNORE
    model.text.context_length += 4  # (the trimmed columns are never embedded)
    assert objective(model, wider).item() == pytest.approx(loss.item(), rel=1e-12)


def test_clip_adds_mlm_weight_times_the_masked_token_loss():
    model = tiny_clip(mlm=True).double()
    loss_cfg = LossConfig(impl="reference", mlm_weight=0.25)
    objective = build_objective(ModelKind.clip, loss_cfg, TextMasking(MLM_RULE, 0, 0))
    batch = objective.prepare({"image": torch.randn(6, 3, 32, 32).double(), "text": captions(6)}, step=2)
    out = objective.forward(model, batch)
    plain = build_objective(ModelKind.clip, LossConfig(impl="reference"))
    logits = model.masked_token_logits(batch["mlm_text"])
    labels = batch["mlm_labels"][:, : logits.shape[1]]
    mlm = F.cross_entropy(logits[labels != IGNORE], labels[labels != IGNORE])
    expected = plain(model, batch) + 0.25 * mlm
    assert objective.loss(out).item() == pytest.approx(expected.item(), rel=1e-12)


def test_the_bidirectional_tower_sees_later_tokens_but_never_the_padding():
    model = tiny_mlm().double().eval()
    text = captions(3, min_len=6)
    logits = model(text)["mlm_logits"]
    later = text.clone()
    later[:, 4] = (later[:, 4] % (VOCAB - 3)) + 2  # another word at position 4
    changed = model(later)["mlm_logits"]
    assert not torch.allclose(changed[:, :4], logits[:, :4])  # earlier positions see it: not causal
    # A short caption's positions are the same alone (trimmed to its length) and beside a long one (which
    # leaves it padding columns to attend to, unless the key mask hides them).
    short, long = torch.zeros(1, CONTEXT, dtype=torch.long), captions(1, seed=6, min_len=CONTEXT)
    short[0, :6] = torch.tensor([1, 10, 11, 12, 13, VOCAB - 2])
    alone = model(short)["mlm_logits"][0]
    beside = model(torch.cat([short, long]))["mlm_logits"][0, : alone.shape[0]]
    assert alone.shape[0] == 6 and model(torch.cat([short, long]))["mlm_logits"].shape[1] == CONTEXT
    torch.testing.assert_close(beside, alone, rtol=0, atol=1e-12)


def test_masked_token_accuracy_and_the_unigram_baseline_by_hand():
    class Oracle(torch.nn.Module):
        """Predicts token 5 everywhere: its top-1 accuracy is the share of targets equal to 5."""

        def masked_token_logits(self, inputs):
            logits = torch.zeros(*inputs.shape, 8)
            logits[..., 5] = 1.0
            logits[..., 6] = 0.5  # second choice: top-5 also counts 6 (and three ties that never match)
            return logits

    targets = torch.full((2, 4), IGNORE)
    targets[0, 1], targets[0, 2], targets[1, 1] = 5, 6, 3
    batches = [(torch.ones(2, 4, dtype=torch.long), targets)]
    got = masked_token_accuracy(Oracle(), batches, torch.device("cpu"))
    assert got["top1"] == pytest.approx(1 / 3)
    rule = MaskingRule(rate=0.15, mask_id=8, vocab_size=8, pad_id=0, sot_id=1, eot_id=7)
    train = [torch.tensor([[1, 3, 3, 3, 5, 7, 0], [1, 5, 3, 6, 7, 0, 0]])]  # 3 is the most frequent word
    base = unigram_baseline(train, rule, batches)
    assert base["top1"] == pytest.approx(1 / 3)  # one target of three is 3
    assert base["top5"] == pytest.approx(1.0)  # 3, 5, 6 are all among the five most frequent
