"""The caption-word head (models/words.py): its targets by hand, its loss against float64 written plainly,
and CLIP's objective adding word_weight times its mean over the batch's rows."""

import pytest
import torch

from helpers.tiny_models import VOCAB, captions, clip_loss, images, tiny_clip
from pretrain_mm.config import LossConfig, ModelKind
from pretrain_mm.models.words import caption_word_targets, word_cross_entropy
from pretrain_mm.train.objectives import build_objective

SOT, EOT, PAD = 1, 9, 0


def test_targets_are_the_captions_distinct_words_each_with_equal_mass():
    text = torch.tensor(
        [
            [SOT, 5, 7, 5, EOT, PAD, PAD],  # 5 twice: one word
            [SOT, 4, PAD, 6, EOT, PAD, PAD],  # the pad id inside a caption is a token (CLIP's BPE's 0 is "!")
            [SOT, EOT, PAD, PAD, PAD, PAD, PAD],  # no word: no loss
        ]
    )
    targets = caption_word_targets(text, pad_id=PAD, vocab_size=10)
    expected = torch.zeros(3, 10)
    expected[0, [5, 7]] = 1 / 2
    expected[1, [4, PAD, 6]] = 1 / 3
    assert torch.equal(targets, expected)


def test_word_cross_entropy_is_the_float64_cross_entropy_with_the_target_distribution():
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(5, 12, generator=g, dtype=torch.float64)
    targets = caption_word_targets(captions(5)[:, :8] % 12, pad_id=0, vocab_size=12).double()
    probs = logits.exp() / logits.exp().sum(dim=1, keepdim=True)
    expected = [-sum(targets[b, v] * torch.log(probs[b, v]) for v in range(12)) for b in range(5)]
    assert torch.allclose(word_cross_entropy(logits, targets), torch.stack(expected), rtol=1e-12, atol=0)
    assert word_cross_entropy(logits, torch.zeros_like(targets)).abs().max() == 0


@pytest.mark.parametrize("kind", ["softmax", "sigmoid"])
def test_clip_adds_word_weight_times_the_mean_word_loss_over_rows(kind):
    model = tiny_clip(loss_kind=kind, word_head=True).double()
    image, text = images(6).double(), captions(6)
    objective = build_objective(ModelKind.clip, LossConfig(kind=kind, word_weight=0.3))
    out = model(image, text)
    logits = model.word_head(out["image_features"])  # the head reads the unit-norm image features
    words = word_cross_entropy(logits, caption_word_targets(text, model.text.pad_id, VOCAB)).mean()
    expected = clip_loss(out, kind) + 0.3 * words
    assert objective(model, {"image": image, "text": text}).item() == pytest.approx(expected.item(), rel=1e-12)
    assert words.item() > 0.5  # a term that moves the sum

    # Its gradient reaches the image tower through the head (the word term alone: no text tower gradient).
    model.zero_grad()
    only_words = build_objective(ModelKind.clip, LossConfig(kind=kind, word_weight=1.0))
    (only_words(model, {"image": image, "text": text}) - clip_loss(model(image, text), kind)).backward()
    assert model.visual.head.weight.grad.abs().max() > 0
    assert model.text.proj.weight.grad.abs().max() < 1e-12


def test_a_clip_without_the_head_has_no_word_term():
    model = tiny_clip(loss_kind="softmax").double()
    image, text = images(4).double(), captions(4)
    objective = build_objective(ModelKind.clip, LossConfig(word_weight=0.3))
    out = model(image, text)
    assert "word_logits" not in out
    assert objective(model, {"image": image, "text": text}).item() == pytest.approx(clip_loss(out).item(), rel=1e-12)
