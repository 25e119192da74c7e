"""Captions as the built-in sets write them, for the tokenizer tests."""

import random

import pretrain_mm.data.digits as digits_set
import pretrain_mm.data.shapes as shapes


def builtin_captions() -> list[str]:
    rng = random.Random(1)
    out = []
    for template in shapes.FULL_TEMPLATES + shapes.PARTIAL_TEMPLATES:
        for _ in range(20):
            attrs = {
                "shape": rng.randrange(len(shapes.SHAPES)),
                "colour": rng.randrange(len(shapes.COLOURS)),
                "size": rng.randrange(len(shapes.SHAPE_SIZES)),
                "position": rng.randrange(len(shapes.POSITIONS)),
                "background": rng.randrange(len(shapes.BACKGROUNDS)),
            }
            out.append(shapes.shapes_caption(template, attrs))
    out += [t.format(name) for t in digits_set.DIGIT_TEMPLATES for name in digits_set.DIGIT_NAMES]
    prompts = [p for attr in ("shape", "colour") for p in shapes.attribute_prompts(attr)]
    out += [p.format(c) for p in prompts for c in ("red", "star")]
    return out
