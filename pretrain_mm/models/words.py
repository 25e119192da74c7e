"""Caption words as image labels (SuperClass, Huang et al. 2024; CatLIP, Mehta et al. 2024): a linear head
on the image features predicts which vocabulary ids the image's caption holds.

CLIP's loss asks an image for whatever tells the batch's captions apart, so an attribute that the easy
ones already separate gets almost no gradient (on the built-in scenes colour, background and position
tell 256 captions apart, and shape went unlearnt). Here every caption word is a label of its image: the
shape word is asked for in every caption, through a linear read-out of the image features. The target is
SuperClass's: the caption's distinct ids (start, end and padding left out) as a distribution, uniform over
them; the loss is its cross-entropy with the head's softmax over the vocabulary.

On the built-in scenes it did not make shape transfer to unseen shape-colour pairs: a tower asked for colour
and shape together learns which shapes each colour came with (README, Training: benchmarks/bench_shape_stem.py
--targets words words_without_colour). So loss.word_weight is 0 by default.
"""

import torch
import torch.nn as nn
import torch.nn.functional as F

from pretrain_mm.models.text import caption_tokens


def caption_word_targets(text: torch.Tensor, pad_id: int, vocab_size: int) -> torch.Tensor:
    """(B, vocab_size) float: each row's distinct caption ids, each with mass 1 / their count. A caption's
    start (position 0), end-of-text (its last non-pad id) and padding are not words; a caption without a
    word gets a row of zeros (no loss)."""
    words = caption_tokens(text, pad_id)  # a pad id that is also a real token (CLIP's BPE's 0) stays a word
    # Counted, then made 0/1 (a plain scatter of 0s for the non-words could overwrite a word's 1: the pad id).
    counts = torch.zeros(text.shape[0], vocab_size, device=text.device).scatter_add_(1, text, words.float())
    targets = (counts > 0).float()
    return targets / targets.sum(dim=1, keepdim=True).clamp(min=1.0)


class WordHead(nn.Module):
    """The linear read-out of the caption's words from the image features (B, dim) -> logits (B, vocab)."""

    def __init__(self, dim: int, vocab_size: int):
        super().__init__()
        self.proj = nn.Linear(dim, vocab_size)
        self.init_weights()

    @torch.no_grad()
    def init_weights(self) -> None:
        nn.init.normal_(self.proj.weight, std=self.proj.in_features**-0.5)
        nn.init.zeros_(self.proj.bias)

    def forward(self, features: torch.Tensor) -> torch.Tensor:
        return self.proj(features)


def word_cross_entropy(logits: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Per row (B,): the cross-entropy of the target distribution with softmax(logits), in fp32 at least."""
    log_probs = F.log_softmax(logits.to(torch.promote_types(logits.dtype, torch.float32)), dim=-1)
    return -(targets * log_probs).sum(dim=-1)
