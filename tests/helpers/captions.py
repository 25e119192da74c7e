"""Captions as the built-in sets write them, for the tokenizer tests."""

import random

import pretrain_mm.data.builtin as builtin


def builtin_captions() -> list[str]:
    rng = random.Random(1)
    out = []
    for template in builtin.FULL_TEMPLATES + builtin.PARTIAL_TEMPLATES:
        for _ in range(20):
            attrs = {
                "shape": rng.randrange(len(builtin.SHAPES)),
                "colour": rng.randrange(len(builtin.COLOURS)),
                "size": rng.randrange(len(builtin.SHAPE_SIZES)),
                "position": rng.randrange(len(builtin.POSITIONS)),
                "background": rng.randrange(len(builtin.BACKGROUNDS)),
            }
            out.append(builtin.shapes_caption(template, attrs))
    out += [t.format(name) for t in builtin.DIGIT_TEMPLATES for name in builtin.DIGIT_NAMES]
    out += [p.format(c) for attr in ("shape", "colour") for p in builtin._prompts(attr) for c in ("red", "star")]
    return out
