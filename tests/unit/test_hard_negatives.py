"""Hard-negative captions (NegCLIP): the word swap, its term against a float64 reference, and the batches that
carry them."""

import random

import pytest
import torch
import torch.nn.functional as F

from helpers.tiny_models import captions, images, tiny_clip
from helpers.toy_shards import toy_image
from pretrain_mm.data import build_loader, train_tokenizer
from pretrain_mm.data.negatives import WordSwapNegatives
from pretrain_mm.data.shards import ShardWriter
from pretrain_mm.models.clip import hard_negative_terms

SHAPES = ["circle", "square", "triangle"]


def test_one_word_of_a_group_is_swapped_for_another_of_its_group():
    swap = WordSwapNegatives([SHAPES, ["red", "blue"]])
    rng = random.Random(0)
    seen = set()
    for _ in range(200):
        out = swap("a red Circle at the top left", rng)
        words = out.split()
        changed = [(a, b) for a, b in zip("a red Circle at the top left".split(), words) if a != b]
        assert len(words) == 7 and len(changed) == 1
        before, after = changed[0]
        group = SHAPES if before.lower() in SHAPES else ["red", "blue"]
        assert after in group and after != before.lower()
        seen.add(after)
    assert seen == {"square", "triangle", "blue"}  # every alternative of every matched group is drawn
    assert swap("a digit seven", rng) is None
    assert swap("circles and squares", rng) is None  # whole words only


def test_a_multi_word_entry_is_swapped_whole():
    swap = WordSwapNegatives([["top left", "bottom right"]])
    assert swap("a star at the top left", random.Random(0)) == "a star at the bottom right"


@pytest.mark.parametrize(
    "groups,what",
    [([["circle"]], "at least two"), ([["a", "b"], ["b", "c"]], "two groups"), ([["a", ""]], "at least two")],
)
def test_bad_groups_are_refused_by_name(groups, what):
    with pytest.raises(ValueError, match=f"data.hard_negatives.*{what}"):
        WordSwapNegatives(groups)


def test_the_term_is_each_images_cross_entropy_between_its_caption_and_its_negative():
    g = torch.Generator().manual_seed(0)
    image, text, neg = (F.normalize(torch.randn(6, 8, generator=g, dtype=torch.float64), dim=-1) for _ in range(3))
    scale, mask = torch.tensor([12.5], dtype=torch.float64), torch.tensor([1, 1, 0, 1, 0, 1], dtype=torch.bool)
    got = hard_negative_terms(image.float(), text.float(), neg.float(), scale.float(), mask)
    logits = scale * torch.stack([(image * text).sum(-1), (image * neg).sum(-1)], dim=1)
    expected = -torch.log_softmax(logits, dim=1)[:, 0] * mask
    assert got.dtype == torch.float32
    torch.testing.assert_close(got.double(), expected, rtol=1e-5, atol=1e-6)
    assert (got[~mask] == 0).all() and (got[mask] > 0).all()


def test_the_model_encodes_negatives_in_the_same_text_pass():
    model = tiny_clip().eval()
    text, neg = captions(4), captions(4, seed=5)
    out = model(images(4), text, neg)
    torch.testing.assert_close(out["text_features"], model.encode_text(text))
    torch.testing.assert_close(out["neg_text_features"], model.encode_text(neg))
    assert "neg_text_features" not in model(images(4), text)


def test_training_batches_carry_negatives_where_a_caption_has_a_group_word(tmp_path):
    words = SHAPES + ["seven"]
    caps = [f"a {words[i % 4]} number {i}" for i in range(24)]
    with ShardWriter(str(tmp_path), 12) as writer:
        for i, caption in enumerate(caps):
            writer.write(f"{i:06d}", {"jpg": toy_image(i), "txt": caption})
    tokenizer = train_tokenizer(caps, vocab_size=300, context_length=12)
    urls = str(tmp_path)

    def first_batch(**kwargs):
        return next(
            iter(
                build_loader(
                    urls,
                    batch_size=24,
                    tokenizer=tokenizer,
                    image_size=32,
                    shuffle_buffer=0,
                    hard_negatives=[SHAPES],
                    **kwargs,
                )
            )
        )

    batch = first_batch()
    for caption, mask, text, neg in zip(batch["caption"], batch["neg_mask"], batch["text"], batch["neg_text"]):
        assert bool(mask) == ("seven" not in caption)
        assert torch.equal(neg, text) != bool(mask)  # a real negative differs; the rest repeat their caption
    assert "neg_text" not in first_batch(train=False)  # evaluation reads captions as they are
