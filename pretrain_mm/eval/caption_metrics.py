"""Caption metrics: corpus BLEU-4, CIDEr-D as coco-caption computes it, and whether captions name an attribute."""

from __future__ import annotations

import math
import re
from collections import Counter

from torchmetrics.text import BLEUScore

NGram = tuple[str, ...]

# coco-caption's PTB tokenizer splits punctuation off the words and then drops it, so punctuation acts as a word
# boundary: "circle." -> "circle", "top-left" -> "top left" (PTB would keep the hyphenated word whole).
_PUNCTUATION = re.compile(r"[^\w\s]|_")


def caption_words(text: str) -> list[str]:
    """Lowercased words of a caption with punctuation removed: the tokenisation every metric here uses."""
    return _PUNCTUATION.sub(" ", text.lower()).split()


def _check_corpus(candidates: list[str], references: list[list[str]]) -> None:
    if len(candidates) != len(references):
        raise ValueError(f"{len(candidates)} candidate captions but {len(references)} reference sets: need one each")
    if not candidates:
        raise ValueError("no captions to score: the candidate list is empty")
    for i, refs in enumerate(references):
        if not refs:
            raise ValueError(f"image {i} has no reference captions: every image needs at least one")


def bleu4(candidates: list[str], references: list[list[str]]) -> float:
    """Corpus BLEU-4 (Papineni et al. 2002): n-gram matches and lengths are pooled over the corpus before the
    uniform geometric mean and the brevity penalty, so it is not the mean of per-caption BLEU. Unsmoothed: a
    corpus without a single matching 4-gram scores 0."""
    _check_corpus(candidates, references)
    # References shortest first: torchmetrics takes the first of equally close reference lengths for the brevity
    # penalty, coco-caption the shortest.
    refs_words = [sorted((caption_words(r) for r in refs), key=len) for refs in references]
    score = BLEUScore(n_gram=4)(
        [" ".join(caption_words(c)) for c in candidates], [[" ".join(r) for r in refs] for refs in refs_words]
    )
    return float(score)


def _ngrams(words: list[str], n: int) -> Counter[NGram]:
    return Counter(tuple(words[i : i + k]) for k in range(1, n + 1) for i in range(len(words) - k + 1))


def _tfidf(
    counts: Counter[NGram], df: Counter[NGram], log_images: float, n: int
) -> tuple[list[dict[NGram, float]], list[float], int]:
    """Per n-gram order: the tf-idf vector and its norm; and the caption's length as coco-caption measures it."""
    vectors: list[dict[NGram, float]] = [{} for _ in range(n)]
    for gram, tf in counts.items():
        # max(1, df): an n-gram no reference has gets the idf of one seen in a single image, as in coco-caption.
        vectors[len(gram) - 1][gram] = tf * (log_images - math.log(max(1.0, df[gram])))
    norms = [math.sqrt(sum(v * v for v in vec.values())) for vec in vectors]
    # Length in words. coco-caption counts bigrams (words - 1), which gives the same differences except for an
    # empty caption, whose vectors are all zero (score 0 either way); words also work for n = 1.
    length = sum(tf for gram, tf in counts.items() if len(gram) == 1)
    return vectors, norms, length


def _similarity(
    cand: tuple[list[dict[NGram, float]], list[float], int],
    ref: tuple[list[dict[NGram, float]], list[float], int],
    sigma: float,
) -> list[float]:
    """Per n-gram order: clipped cosine times the Gaussian length penalty (the "-D" of CIDEr-D)."""
    (cand_vecs, cand_norms, cand_len), (ref_vecs, ref_norms, ref_len) = cand, ref
    penalty = math.exp(-((cand_len - ref_len) ** 2) / (2 * sigma**2))
    out = []
    for cvec, rvec, cnorm, rnorm in zip(cand_vecs, ref_vecs, cand_norms, ref_norms):
        # min(c, r) * r: repeating an n-gram gains nothing past the reference's own weight for it.
        dot = sum(min(c, rvec.get(g, 0.0)) * rvec.get(g, 0.0) for g, c in cvec.items())
        # An empty vector (no n-grams of this order, or all of them in every image) contributes 0, not 0/0.
        cosine = dot / (cnorm * rnorm) if cnorm and rnorm else 0.0
        out.append(cosine * penalty)
    return out


def cider_d_per_image(
    candidates: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0
) -> list[float]:
    """CIDEr-D (Vedantam et al. 2015) of each candidate, in input order, as coco-caption's CiderScorer computes
    it (its n is fixed at 4; other n follow the same formula): the document frequencies come from the reference
    sets of this corpus, so scores depend on the corpus."""
    _check_corpus(candidates, references)
    if n < 1 or sigma <= 0:
        raise ValueError(f"need n >= 1 and sigma > 0, got n={n}, sigma={sigma}")
    ref_counts = [[_ngrams(caption_words(r), n) for r in refs] for refs in references]
    # df[g]: the number of images with g in any of their references (counted once per image, not per reference).
    df: Counter[NGram] = Counter(g for counts in ref_counts for g in set().union(*counts))
    log_images = math.log(float(len(candidates)))
    scores = []
    for cand, counts in zip(candidates, ref_counts):
        cand_tfidf = _tfidf(_ngrams(caption_words(cand), n), df, log_images, n)
        per_order = [0.0] * n
        for ref in counts:
            for k, s in enumerate(_similarity(cand_tfidf, _tfidf(ref, df, log_images, n), sigma)):
                per_order[k] += s
        # Mean over n-gram orders, mean over references, times 10 (coco-caption's scale).
        scores.append(10.0 * sum(per_order) / n / len(counts))
    return scores


def cider_d(candidates: list[str], references: list[list[str]], n: int = 4, sigma: float = 6.0) -> float:
    """Corpus CIDEr-D: the mean of cider_d_per_image (0 to 10 for a one-reference corpus, 0 when the corpus
    has a single image, since every n-gram is then in every image's references)."""
    scores = cider_d_per_image(candidates, references, n, sigma)
    return sum(scores) / len(scores)


def _named_values(words: list[str], values: list[NGram]) -> set[NGram]:
    """The values a caption names as whole words; an occurrence inside a longer value's occurrence ("left" in
    "top left") names only the longer one."""
    spans = [
        (v, i, i + len(v)) for v in values for i in range(len(words) - len(v) + 1) if tuple(words[i : i + len(v)]) == v
    ]
    return {
        v for v, start, end in spans if not any(s <= start and end <= e and (s, e) != (start, end) for _, s, e in spans)
    }


def attribute_naming(captions: list[str], truth: list[str], values: list[str]) -> float:
    """Share of captions that name their true attribute value and no other value of the attribute ("a red circle"
    for a circle, but not "a red circle and a square" nor "a red shape"). Matching is on caption_words, so it is
    case- and punctuation-blind and "red" does not match "reddish"."""
    if not captions:
        raise ValueError("no captions to check: the caption list is empty")
    if len(captions) != len(truth):
        raise ValueError(f"{len(captions)} captions but {len(truth)} true values: need one each")
    value_words = [tuple(caption_words(v)) for v in values]
    if not value_words or not all(value_words):
        raise ValueError(f"the attribute values must be non-empty words, got {values!r}")
    hits = 0
    for caption, true_value in zip(captions, truth):
        true_words = tuple(caption_words(true_value))
        if true_words not in value_words:
            raise ValueError(f"true value {true_value!r} is not one of the attribute values {values!r}")
        hits += _named_values(caption_words(caption), value_words) == {true_words}
    return hits / len(captions)
