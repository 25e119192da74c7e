"""Hard-negative captions: a training caption with one word swapped for another of its group (NegCLIP).

A contrastive batch can be told apart by whatever attribute is easiest (on the built-in scenes:
colour, background, position), so an attribute the easy ones already separate gets almost no
gradient. A caption that differs from the true one in that attribute alone is a negative only it
can reject (Yuksekgonul et al., "When and why vision-language models behave like bags-of-words",
2023, swap words the same way). `data.hard_negatives` lists the groups, e.g. the shape words:

    data.hard_negatives=[[circle,square,triangle,star,cross,diamond]]

and the loss (loss.hard_negative_weight) asks each image to prefer its caption to the swapped one.
"""

from __future__ import annotations

import random
import re
from collections.abc import Sequence


class WordSwapNegatives:
    """caption, rng -> the caption with one of its group words (whole word, case-insensitive, a
    random one if several) replaced by another word of the same group, drawn uniformly; None when
    the caption has no group word."""

    def __init__(self, groups: Sequence[Sequence[str]]):
        self.group_of: dict[str, tuple[str, ...]] = {}
        for group in groups:
            words = tuple(dict.fromkeys(str(w).strip().lower() for w in group))
            if len(words) < 2 or not all(words):
                raise ValueError(
                    f"data.hard_negatives: each group needs at least two distinct words, got {list(group)}"
                )
            for word in words:
                if word in self.group_of:
                    raise ValueError(
                        f"data.hard_negatives: {word!r} is in two groups; a word can only be swapped within one"
                    )
                self.group_of[word] = words
        # Longest first, so that a multi-word entry ("top left") wins over a word inside it ("left").
        alternatives = sorted(self.group_of, key=len, reverse=True)
        self.pattern = re.compile(r"\b(" + "|".join(re.escape(w) for w in alternatives) + r")\b", re.IGNORECASE)

    def __call__(self, caption: str, rng: random.Random) -> str | None:
        matches = list(self.pattern.finditer(caption))
        if not matches:
            return None
        match = rng.choice(matches)
        word = match.group(0).lower()
        other = rng.choice([w for w in self.group_of[word] if w != word])
        return caption[: match.start()] + other + caption[match.end() :]
