"""Zero-shot prompts that measure transfer: the check that no prompt template is worded like a training caption."""

from __future__ import annotations

import re


def fixed_text(template: str) -> list[str]:
    """The literal pieces of a caption or prompt template between its {fields}, stripped."""
    return [piece.strip() for piece in re.split(r"\{[^{}]*\}", template) if piece.strip()]


def check_unseen_prompts(prompts, training) -> None:
    """Assert that no zero-shot prompt template is a training caption template (fields renamed
    or not) and that none of its literal pieces of two or more words occurs in one. Single words
    ('a', 'the', 'background') are allowed: no English sentence avoids them all."""

    def form(t):
        return re.sub(r"\{[^{}]*\}", "{}", t)

    seen = {form(t) for t in training}
    pieces = [f" {p} " for t in training for p in fixed_text(t)]
    for prompt in prompts:
        assert form(prompt) not in seen, f"zero-shot prompt template {prompt!r} is a training caption template"
        for piece in fixed_text(prompt):
            assert len(piece.split()) < 2 or not any(f" {piece} " in p for p in pieces), (
                f"zero-shot prompt template {prompt!r}: {piece!r} occurs in a training caption template"
            )
