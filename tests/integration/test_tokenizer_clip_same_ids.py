"""data.tokenizer=clip gives open_clip's ids, cleaning and decoding on 3,000 captions made to be hard
(seconds; the tokenizer's other tests: tests/unit/test_tokenizer_clip.py)."""

import random

import pytest
import torch

from helpers.captions import builtin_captions
from pretrain_mm.data import clip_tokenizer
from pretrain_mm.data.tokenizer import clip_clean

# Pieces of captions that stress open_clip's cleaning and CLIP's split: case, contractions,
# punctuation, digits, HTML entities (some escaped twice), accents (composed and combining),
# ligatures, full-width letters, mojibake ftfy repairs, scripts, emoji, control characters,
# odd whitespace, and the special tokens' own text.
WORDS = [
    "a",
    "photo",
    "of",
    "the",
    "Cat",
    "DOG",
    "sitting",
    "On",
    "mat",
    "in",
    "New",
    "YORK",
    "it's",
    "we'll",
    "they're",
    "I'm",
    "you've",
    "he'd",
    "can't",
    "O'Neil",
    "rock'n'roll",
    "'s",
    "'",
    "''",
    "``",
]
PUNCT = [
    "!",
    "!!",
    "?",
    "...",
    ",",
    ".",
    ";",
    ":",
    "-",
    "—",
    "–",
    "(",
    ")",
    "[x]",
    "{y}",
    "#tag",
    "@user",
    "e-mail",
    "50%",
    "$3.99",
    "1,000",
    "3.14",
    "2024-01-05",
    "10:30pm",
    "#1",
    "a/b",
    "x_y",
    "*",
    "~",
    "^_^",
    '"quoted"',
    "<b>",
    "</w>",
    "<|endoftext|>",
]
ENTITIES = [
    "&amp;",
    "&lt;b&gt;",
    "&quot;",
    "&#39;",
    "&#x27;",
    "&nbsp;",
    "&amp;amp;",
    "&amp;lt;",
    "&copy;",
    "&eacute;",
    "&hellip;",
    "& ",
    "&unknown;",
    "AT&T",
    "&#8217;",
    "&amp;#39;",
]
UNICODE = [
    "café",
    "naïve",
    "Ångström",
    "cafe\u0301",
    "Straße",
    "İstanbul",
    "ΣΟΦΙΑ",
    "Σίσυφος",
    "Москва",
    "日本語",
    "中文字幕",
    "한국어",
    "عربى",
    "हिन्दी",
    "🐱",
    "👍🏽",
    "👨‍👩‍👧",
    "ﬁne",
    "ǅungla",
    "ｆｕｌｌｗｉｄｔｈ",
    "“curly”",
    "‘single’",
    "cafÃ©",
    "â€œmojibakeâ€\x9d",
    "\x01ctrl",
    "\u200bzero",
    "\ufeffbom",
    "½",
    "x²",
    "Ⅻ",
    "٣",
    "ſtar",
    "\u212aelvin",
    "µm",
    "ﬀ",
    "ŉ",
    "ΐ",
    "\x1b[31mred\x1b[0m",
    "\ud7ff",
    "ẞ",
    "Ǳ",
    "ᾈ",
    "a\u0345b",
    "ᾳ\u0345",
    "a\u088fb",
    "x\U00011db0y",
]  # split differently by Rust's regex than open_clip's
SPACES = [" ", " ", " ", "  ", "\t", "\n", "\r\n", "\u00a0", "\u3000", "\u2028", " \x0b ", "\x85"]
SPECIALS = [
    "<start_of_text>",
    "<end_of_text>",
    "!<end_of_text>",
    "<END_OF_TEXT>",
    "x<start_of_text>y",
    "<end_of_text>!",
    "<start_of_text><end_of_text>",
]


def random_captions(n: int, seed: int = 0) -> list[str]:
    rng = random.Random(seed)
    pools = [WORDS] * 6 + [PUNCT] * 2 + [ENTITIES, UNICODE, UNICODE, [str(rng.randrange(10**6)) for _ in range(50)]]
    out = []
    for i in range(n):
        length = rng.randint(60, 120) if i % 10 == 0 else rng.randint(1, 25)  # every tenth truncates at 77
        if i % 50 == 7:
            pools_i = pools + [SPECIALS]
        else:
            pools_i = pools
        parts = []
        for _ in range(length):
            word = rng.choice(rng.choice(pools_i))
            word = rng.choice([str.lower, str.upper, str.title, lambda w: w] * 2 + [str.swapcase])(word)
            parts.append(word)
            parts.append(rng.choice(SPACES) if rng.random() < 0.8 else "")
        caption = "".join(parts)
        if i % 7 == 0:
            caption = rng.choice(SPACES) + caption + rng.choice(SPACES)
        out.append(caption)
    return out + ["", " ", "\n\t", "&amp;", "!", "a", "A" * 300, "1" * 200, "word " * 100]


def test_same_ids_as_open_clip():
    open_clip_tokenizer = pytest.importorskip("open_clip.tokenizer")
    reference = open_clip_tokenizer.SimpleTokenizer()
    captions = random_captions(3000) + builtin_captions()
    ours = clip_tokenizer()
    for length in (77, 16):
        expected = open_clip_tokenizer.tokenize(captions, context_length=length)
        got = ours(captions, context_length=length)
        bad = [c for c, a, b in zip(captions, got, expected) if not torch.equal(a, b)]
        assert not bad, f"{len(bad)} of {len(captions)} captions differ at context {length}, e.g. {bad[:3]!r}"
    truncated = sum(len(reference.encode(c)) > 75 for c in captions)
    assert truncated > 200  # the long captions did exercise truncation
    for caption in captions[:500]:
        assert ours.encode(caption) == reference.encode(caption), caption
        assert clip_clean(caption) == open_clip_tokenizer._clean_lower(caption)
    for caption in [c for c in captions[:300] if "_of_text>" not in clip_clean(c)]:  # decode stops at EOT
        ids = reference.encode(caption)  # our decoder: open_clip's, without its trailing space
        assert ours.decode(ids) == reference.decode(ids).strip()
