"""Caption metrics on cases small enough to work out by hand: BLEU-4, CIDEr-D, attribute naming (CIDEr-D was
also checked against pycocoevalcap's CiderScorer on random corpora when written; it is not a dependency)."""

import math

import pytest

from pretrain_mm.eval.caption_metrics import attribute_naming, bleu4, caption_words, cider_d, cider_d_per_image

L = math.log(2)  # log(number of images) in the two-image corpora below: the idf of an n-gram seen in one image


def test_caption_words_lowercases_and_splits_on_punctuation():
    assert caption_words("A Red-circle, on the LEFT!") == ["a", "red", "circle", "on", "the", "left"]
    assert caption_words("  two\tspaces  ") == ["two", "spaces"]
    assert caption_words("...") == []


# ----------------------------------------------------------------------------- BLEU-4


def test_bleu4_perfect_match_is_one_whatever_the_case_and_punctuation():
    assert bleu4(["A red circle on the LEFT."], [["a red circle on the left"]]) == pytest.approx(1.0, abs=1e-6)


def test_bleu4_brevity_penalty():
    # Every n-gram of the 6-word candidate is in the 9-word reference (precisions 1), c = 6 < r = 9:
    # BP = exp(1 - r / c) = exp(1 - 9/6) = exp(-0.5).
    score = bleu4(["a red circle on the left"], [["a red circle on the left side of it"]])
    assert score == pytest.approx(math.exp(-0.5), abs=1e-6)


def test_bleu4_ngram_precisions():
    # candidate "a red circle on the right" vs "a red circle on the left", same length (BP = 1):
    # p1 = 5/6 (not "right"), p2 = 4/5 (not "the right"), p3 = 3/4, p4 = 2/3
    # BLEU = (5/6 * 4/5 * 3/4 * 2/3) ** (1/4) = (1/3) ** (1/4)
    score = bleu4(["a red circle on the right"], [["a red circle on the left"]])
    assert isinstance(score, float)
    assert score == pytest.approx((1 / 3) ** 0.25, abs=1e-6)


def test_bleu4_pools_counts_over_the_corpus():
    # The two cases above as one corpus: matches and lengths add up before the mean and the penalty.
    # p1 = (6 + 5) / (6 + 6), p2 = (5 + 4) / (5 + 5), p3 = (4 + 3) / (4 + 4), p4 = (3 + 2) / (3 + 3)
    # c = 6 + 6 = 12, r = 9 + 6 = 15: BP = exp(1 - 15/12)
    score = bleu4(
        ["a red circle on the left", "a red circle on the right"],
        [["a red circle on the left side of it"], ["a red circle on the left"]],
    )
    expected = math.exp(1 - 15 / 12) * (11 / 12 * 9 / 10 * 7 / 8 * 5 / 6) ** 0.25
    assert score == pytest.approx(expected, abs=1e-6)


def test_bleu4_equally_close_references_take_the_shorter_length():
    # The 4-word candidate is inside the 5-word reference (precisions 1); references of 5 and 3 words are
    # equally close. coco-caption takes the shorter (r = 3 < c = 4: BP = 1); the first listed would give exp(-0.25).
    score = bleu4(["a big red circle"], [["a big red circle now", "a big red"]])
    assert score == pytest.approx(1.0, abs=1e-6)


def test_bleu4_without_any_four_gram_is_zero():
    # Unsmoothed: a 2-word caption has no 4-grams, so p4 = 0 and BLEU-4 is 0 even for an exact match.
    assert bleu4(["red circle"], [["red circle"]]) == 0.0


# ----------------------------------------------------------------------------- CIDEr-D


def test_cider_d_exact_match_counts_only_the_orders_the_caption_has():
    # Images A "a red circle", B "a blue square", each candidate equal to its reference.
    # df: "a" is in both images (idf log 2 - log 2 = 0); every other n-gram is in one (idf L).
    # For A: 1-gram vectors {a: 0, red: L, circle: L} identical -> cosine 1; 2-grams and the 3-gram -> 1;
    # no 4-grams -> 0. Same length -> penalty 1. Score = 10 * (1 + 1 + 1 + 0) / 4 = 7.5; B likewise.
    refs = [["a red circle"], ["a blue square"]]
    assert cider_d_per_image(["a red circle", "a blue square"], refs) == pytest.approx([7.5, 7.5])
    assert cider_d(["a red circle", "a blue square"], refs) == pytest.approx(7.5)


def test_cider_d_is_zero_for_ngrams_every_image_has():
    # Both images have "red circle": every n-gram has df = 2 = N, idf 0, all vectors are 0.
    assert cider_d(["red circle", "red circle"], [["red circle"], ["red circle"]]) == 0.0
    # A one-image corpus: log N = 0, so the same holds for any caption.
    assert cider_d(["red circle"], [["red circle"]]) == 0.0


def test_cider_d_tfidf_by_hand():
    # A: reference "red circle", candidate "red square".  B: reference "blue square", candidate the same.
    # df = 1 for red, circle, blue, square, "red circle", "blue square"; "red square" has df 0, idf still
    # log 2 - log(max(1, 0)) = L.
    # A, 1-grams: candidate {red: L, square: L}, reference {red: L, circle: L}
    #   dot = min(L, L) * L (red) + min(L, 0) * 0 (square) = L^2, norms sqrt(2) L each -> cosine 1/2
    # A, 2-grams: {"red square": L} vs {"red circle": L} -> 0;  3- and 4-grams: none -> 0
    # A = 10 * (1/2 + 0 + 0 + 0) / 4 = 1.25;  B = 10 * (1 + 1 + 0 + 0) / 4 = 5;  corpus = (1.25 + 5) / 2
    candidates, refs = ["red square", "blue square"], [["red circle"], ["blue square"]]
    assert cider_d_per_image(candidates, refs) == pytest.approx([1.25, 5.0])
    assert cider_d(candidates, refs) == pytest.approx(3.125)


def test_cider_d_document_frequency_counts_images_not_references():
    # A: references "red circle", "blue circle"; B: "green square". "circle" is in one image (df 1, idf L),
    # even though two of A's references have it.
    # A vs "red circle": identical -> 1-gram 1, 2-gram 1.
    # A vs "blue circle": 1-grams {red: L, circle: L} . {blue: L, circle: L} = L^2 over 2 L^2 -> 1/2; 2-grams 0.
    # A = 10 * ((1 + 1/2) + (1 + 0) + 0 + 0) / 4 / 2 references = 3.125  (with df per reference it would be 2.5)
    refs = [["red circle", "blue circle"], ["green square"]]
    assert cider_d_per_image(["red circle", "green square"], refs) == pytest.approx([3.125, 5.0])


def test_cider_d_gaussian_length_penalty():
    # A: reference "red circle", candidate "red circle blue" ("blue" in no reference: idf L).
    # 1-grams: {red: L, circle: L, blue: L} . {red: L, circle: L} = 2 L^2 over sqrt(3) L * sqrt(2) L -> 2/sqrt(6)
    # 2-grams: {"red circle": L, "circle blue": L} . {"red circle": L} = L^2 over sqrt(2) L * L -> 1/sqrt(2)
    # 3-grams: the reference has none -> 0.  Lengths differ by 1: penalty exp(-1 / (2 sigma^2)).
    candidates, refs = ["red circle blue", "green square"], [["red circle"], ["green square"]]
    cosines = 2 / math.sqrt(6) + 1 / math.sqrt(2)
    for sigma in (6.0, 1.0):
        expected = 10 * cosines / 4 * math.exp(-1 / (2 * sigma**2))
        assert cider_d_per_image(candidates, refs, sigma=sigma) == pytest.approx([expected, 5.0])

    # n = 1: the 1-gram cosine alone, the same penalty.
    expected = 10 * 2 / math.sqrt(6) * math.exp(-1 / 72)
    assert cider_d_per_image(candidates, refs, n=1) == pytest.approx([expected, 10.0])


def test_cider_d_clips_repeated_words():
    # A: reference "red circle", candidate "red red circle": tf(red) = 2, tf-idf 2L, but min(2L, L) * L counts
    # it at the reference's weight. 1-grams: (L * L + L * L) / (sqrt(5) L * sqrt(2) L) = 2/sqrt(10)
    # (3/sqrt(10) unclipped). 2-grams: {"red red": L, "red circle": L} . {"red circle": L} -> 1/sqrt(2).
    # Lengths 3 and 2 words: penalty exp(-1/72).
    candidates, refs = ["red red circle", "green square"], [["red circle"], ["green square"]]
    expected = 10 * (2 / math.sqrt(10) + 1 / math.sqrt(2)) / 4 * math.exp(-1 / 72)
    score = cider_d_per_image(candidates, refs)[0]
    assert score == pytest.approx(expected)
    assert score < cider_d_per_image(["red circle", "green square"], refs)[0]


# ----------------------------------------------------------------------------- attribute naming


def test_attribute_naming_true_value_and_no_other():
    shapes = ["circle", "square", "triangle"]
    captions = ["a red circle", "a red circle and a square", "a red shape", "A big CIRCLE."]
    assert attribute_naming(captions, ["circle"] * 4, shapes) == 0.5


def test_attribute_naming_matches_whole_words():
    assert attribute_naming(["a reddish circle", "a red circle"], ["red", "red"], ["red", "blue"]) == 0.5


def test_attribute_naming_multiword_values():
    positions = ["top left", "top right", "bottom left", "bottom right"]
    captions = ["a circle in the top left", "a circle at the top-left corner", "on the left", "top left, bottom right"]
    assert attribute_naming(captions, ["top left"] * 4, positions) == 0.5


def test_attribute_naming_a_value_inside_a_longer_one_is_not_named():
    values = ["left", "top left"]
    assert attribute_naming(["circle at the top left"], ["top left"], values) == 1.0
    assert attribute_naming(["circle at the top left"], ["left"], values) == 0.0
    assert attribute_naming(["circle on the left"], ["left"], values) == 1.0


# ----------------------------------------------------------------------------- input checks


@pytest.mark.parametrize("metric", [bleu4, cider_d, cider_d_per_image])
def test_corpus_input_errors(metric):
    with pytest.raises(ValueError, match="2 candidate captions but 1 reference sets"):
        metric(["a", "b"], [["a"]])
    with pytest.raises(ValueError, match="image 1 has no reference captions"):
        metric(["a", "b"], [["a"], []])
    with pytest.raises(ValueError, match="candidate list is empty"):
        metric([], [])


def test_attribute_naming_input_errors():
    with pytest.raises(ValueError, match="caption list is empty"):
        attribute_naming([], [], ["circle"])
    with pytest.raises(ValueError, match="2 captions but 1 true values"):
        attribute_naming(["a", "b"], ["circle"], ["circle"])
    with pytest.raises(ValueError, match="'hexagon' is not one of the attribute values"):
        attribute_naming(["a hexagon"], ["hexagon"], ["circle", "square"])
