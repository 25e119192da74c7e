"""The evaluators on tensors: k-NN, linear probe, retrieval recall, zero-shot (the probe against
scikit-learn's logistic regression: tests/integration/test_linear_probe_sklearn.py)."""

import numpy as np
import pytest
import torch
import torch.nn.functional as F

from pretrain_mm.eval.knn import knn_evaluate, knn_predict
from pretrain_mm.eval.linear_probe import linear_probe
from pretrain_mm.eval.retrieval import chance_recall, retrieval_recall
from pretrain_mm.eval.zeroshot import fill_template, zeroshot_classifier, zeroshot_evaluate


def clustered(n, dim, classes, noise, seed):
    """Features around one random centre per class, and their labels."""
    g = torch.Generator().manual_seed(seed)
    centres = torch.randn(classes, dim, generator=g)
    labels = torch.randint(0, classes, (n,), generator=g)
    return centres[labels] + noise * torch.randn(n, dim, generator=g), labels


# ----------------------------------------------------------------------------- k-NN


def brute_force_knn(train, train_labels, test, classes, k, temperature):
    """DINO's weighted vote, one test sample at a time, in float64 with Python loops."""
    train = F.normalize(train.double(), dim=-1)
    predictions = []
    for x in F.normalize(test.double(), dim=-1):
        sims = [(float(x @ t), i) for i, t in enumerate(train)]
        sims.sort(key=lambda s: -s[0])
        votes = [0.0] * classes
        for sim, i in sims[:k]:
            votes[int(train_labels[i])] += float(np.exp(sim / temperature))
        predictions.append(int(np.argmax(votes)))
    return torch.tensor(predictions)


@pytest.mark.parametrize("temperature", [0.07, 0.5])
def test_knn_matches_brute_force(temperature):
    train, train_labels = clustered(300, 16, 5, 1.5, seed=0)
    test, test_labels = clustered(60, 16, 5, 1.5, seed=1)
    ks = [1, 10, 20, 100, 500]  # 500 > the training set: every neighbour votes
    votes = knn_predict(train, train_labels, test, 5, ks, temperature)
    results = knn_evaluate(train, train_labels, test, test_labels, 5, ks, temperature)
    for k in ks:
        expected = brute_force_knn(train, train_labels, test, 5, min(k, 300), temperature)
        assert torch.equal(votes[k].argmax(dim=1), expected), k
        assert results[f"top1@k{k}"] == pytest.approx((expected == test_labels).float().mean().item())


def test_knn_chunks_do_not_change_votes():
    train, labels = clustered(200, 8, 4, 1.0, seed=2)
    test, _ = clustered(50, 8, 4, 1.0, seed=3)
    whole = knn_predict(train, labels, test, 4, [10], 0.07, chunk_size=1000)[10]
    chunked = knn_predict(train, labels, test, 4, [10], 0.07, chunk_size=7)[10]
    # The same neighbours and votes; the BLAS may round a 7-row product differently from a
    # 50-row one in the last bit, which exp(s / 0.07) magnifies to ~1e-6 relative.
    assert torch.equal(whole.argmax(dim=1), chunked.argmax(dim=1))
    torch.testing.assert_close(whole, chunked, rtol=1e-5, atol=0)


def test_knn_rejects_bad_settings():
    train, labels = clustered(20, 4, 2, 1.0, seed=0)
    with pytest.raises(ValueError, match="temperature"):
        knn_predict(train, labels, train, 2, [5], temperature=0.0)
    with pytest.raises(ValueError, match="knn_k"):
        knn_predict(train, labels, train, 2, [0])


# ----------------------------------------------------------------------------- linear probe


def test_linear_probe_is_deterministic_and_scale_free():
    train, train_labels = clustered(200, 12, 4, 1.0, seed=4)
    test, test_labels = clustered(80, 12, 4, 1.0, seed=5)
    kw = dict(epochs=20, seed=3)
    first = linear_probe(train, train_labels, test, test_labels, 4, **kw)
    again = linear_probe(train, train_labels, test, test_labels, 4, **kw)
    scaled = linear_probe(train * 1000, train_labels, test * 1000, test_labels, 4, **kw)  # BatchNorm absorbs it
    assert first[0] == again[0]
    assert abs(first[0]["top1"] - scaled[0]["top1"]) <= 0.03


# ----------------------------------------------------------------------------- retrieval


def test_retrieval_recall_on_hand_made_embeddings():
    # 4 images along the axes. Captions 0-3 point at their own image; caption 4 belongs to image 0
    # but points at image 1 first, then image 0.
    images = torch.eye(4)
    texts = torch.tensor([[1.0, 0, 0, 0], [0, 1, 0, 0], [0, 0, 1, 0], [0, 0, 0, 1], [0.6, 0.8, 0, 0]])
    owner = torch.tensor([0, 1, 2, 3, 0])
    r = retrieval_recall(images, texts, owner, ks=(1, 2))
    assert r["text_to_image_R@1"] == pytest.approx(4 / 5)  # caption 4 ranks image 0 second
    assert r["text_to_image_R@2"] == pytest.approx(1.0)
    assert r["image_to_text_R@1"] == pytest.approx(1.0)  # each image's best caption is its own

    # Swap captions 2 and 3's owners: images 2 and 3 now find the wrong caption first, and their
    # own caption scores 0, tied with three other captions: ties count against, so rank 4.
    swapped = torch.tensor([0, 1, 3, 2, 0])
    r = retrieval_recall(images, texts, swapped, ks=(1, 2, 5))
    assert r["image_to_text_R@1"] == pytest.approx(2 / 4)
    assert r["image_to_text_R@2"] == pytest.approx(2 / 4)
    assert r["image_to_text_R@5"] == pytest.approx(1.0)
    assert r["text_to_image_R@1"] == pytest.approx(2 / 5)


def test_retrieval_ignores_feature_scale_and_images_without_captions():
    images = torch.eye(3) * torch.tensor([[1.0], [5.0], [0.1]])
    texts = torch.eye(3)[:2] * 7
    r = retrieval_recall(images, texts, torch.tensor([0, 1]), ks=(1,))
    assert r == {"image_to_text_R@1": 1.0, "text_to_image_R@1": 1.0}


def test_chunked_retrieval_equals_unchunked():
    g = torch.Generator().manual_seed(0)
    images = torch.randn(257, 32, generator=g, dtype=torch.float64)
    owner = torch.arange(257).repeat_interleave(2)[:500]  # two captions per image, some images with one
    texts = images[owner] + 2.5 * torch.randn(500, 32, generator=g, dtype=torch.float64)
    whole = retrieval_recall(images, texts, owner, chunk_size=10_000)
    assert 0.2 < whole["text_to_image_R@5"] < 0.99  # neither trivial nor hopeless
    for chunk in (1, 16, 100):
        assert retrieval_recall(images, texts, owner, chunk_size=chunk) == whole


def brute_force_recall(images, texts, owner, ks):
    """Recall@K from the whole float64 similarity matrix, one query at a time: a query's rank is
    the count of other candidates scoring >= its (best) positive."""
    sims = F.normalize(texts.double(), dim=-1) @ F.normalize(images.double(), dim=-1).T  # (T, I)
    text_ranks, image_ranks = [], []
    for j in range(texts.shape[0]):
        mine = int(owner[j])
        text_ranks.append(sum(1 for i in range(images.shape[0]) if i != mine and sims[j, i] >= sims[j, mine]))
    for i in range(images.shape[0]):
        captions = [j for j in range(texts.shape[0]) if int(owner[j]) == i]
        if not captions:
            continue
        best = max(sims[j, i] for j in captions)
        image_ranks.append(sum(1 for j in range(texts.shape[0]) if int(owner[j]) != i and sims[j, i] >= best))
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = sum(r < k for r in image_ranks) / len(image_ranks)
        out[f"text_to_image_R@{k}"] = sum(r < k for r in text_ranks) / len(text_ranks)
    return out


def tied_features(rows, dim, g):
    """Unit rows of four +-0.5 entries: every cosine is a multiple of 1/4, exact in float32 and
    float64 whatever order the matmul sums in, so exact ties are frequent and the same in both."""
    out = torch.zeros(rows, dim, dtype=torch.float64)
    for r in range(rows):
        cols = torch.randperm(dim, generator=g)[:4]
        out[r, cols] = 0.5 * (2 * torch.randint(0, 2, (4,), generator=g, dtype=torch.float64) - 1)
    return out


def test_retrieval_with_exact_ties_matches_brute_force():
    g = torch.Generator().manual_seed(3)
    images = tied_features(40, 6, g)
    images[30:] = images[:10]  # duplicate images: every caption of 0-9 ties its image with another
    owner = torch.cat([torch.arange(40), torch.randint(0, 40, (25,), generator=g)])
    texts = tied_features(65, 6, g)
    texts[40:50] = images[owner[40:50]]  # some captions equal to their image (a tied best score)
    texts[50:55] = texts[:5]  # duplicate captions
    ks = (1, 3, 10)
    want = brute_force_recall(images, texts, owner, ks)
    assert 0 < want["text_to_image_R@3"] < 1 and 0 < want["image_to_text_R@3"] < 1
    for chunk in (1, 7, 64, 10_000):
        got = retrieval_recall(images, texts, owner, ks=ks, chunk_size=chunk)
        assert got.keys() == want.keys()
        for name in want:
            assert got[name] == pytest.approx(want[name], abs=1e-6), (chunk, name)


def test_collapsed_towers_score_no_better_than_chance():
    # Every score is equal, so every other candidate ties the positive and counts against it:
    # a caption's image ranks I - 1 = 19 and an image's caption T - 1 = 19 (one caption each),
    # a hit only for K > 19. Chance (K / 20) is never beaten; K < 20 scores exactly 0.
    images = torch.randn(1, 8).expand(20, 8)
    texts = torch.randn(1, 8).expand(20, 8)
    ks = (1, 5, 10, 20)
    got = retrieval_recall(images, texts, torch.arange(20), ks=ks)
    chance = chance_recall(20, 20, ks=ks)
    for name, value in got.items():
        assert value <= chance[name] + 1e-9, (name, value, chance[name])
    assert all(got[f"{d}_R@{k}"] == 0.0 for d in ("image_to_text", "text_to_image") for k in (1, 5, 10))
    assert got["image_to_text_R@20"] == got["text_to_image_R@20"] == 1.0  # K = every candidate


def test_perfect_features_score_everything():
    images = torch.randn(50, 16, generator=torch.Generator().manual_seed(4))
    owner = torch.arange(50).repeat(2)  # two identical captions per image: its own never count against it
    r = retrieval_recall(images, images[owner].clone(), owner, ks=(1, 5), chunk_size=13)
    assert r == {"image_to_text_R@1": 1.0, "image_to_text_R@5": 1.0, "text_to_image_R@1": 1.0, "text_to_image_R@5": 1.0}


def test_nan_scores_are_misses():
    images, texts = torch.eye(3), torch.eye(3)
    images[1, 0] = float("nan")
    r = retrieval_recall(images, texts, torch.arange(3), ks=(1,))
    assert r["text_to_image_R@1"] == pytest.approx(0.0)  # every caption meets a NaN image score
    assert r["image_to_text_R@1"] == pytest.approx(2 / 3)  # image 1's own score is NaN: a miss


# ----------------------------------------------------------------------------- zero-shot


def test_zeroshot_prompt_ensemble_and_accuracy():
    # A "text encoder" that maps a prompt to the one-hot of the class name it contains (plus
    # template-specific noise); images are noisy one-hots of their class.
    names = ["red", "green", "blue", "pink", "cyan", "black"]
    templates = ["a {c} thing", "the colour {}"]

    class Tok:
        def __call__(self, prompts):
            return torch.tensor([[names.index(next(n for n in names if n in p)), len(p)] for p in prompts])

    def encode_text(tokens):
        return F.one_hot(tokens[:, 0], len(names)).float() + 0.01 * tokens[:, 1:].float()

    classifier = zeroshot_classifier(encode_text, Tok(), names, templates, torch.device("cpu"))
    assert classifier.shape == (len(names), len(names))
    torch.testing.assert_close(classifier.norm(dim=0), torch.ones(len(names)))
    labels = torch.arange(60) % len(names)
    images = F.one_hot(labels, len(names)).float() + 0.1 * torch.randn(60, len(names))
    metrics, predictions = zeroshot_evaluate(images, labels, classifier)
    assert metrics["top1"] == 1.0 and metrics["top5"] == 1.0 and torch.equal(predictions, labels)


def test_fill_template_needs_a_placeholder():
    assert fill_template("a photo of a {c}.", "cat") == "a photo of a cat."
    assert fill_template("a {} on grey", "star") == "a star on grey"
    with pytest.raises(ValueError, match="no '{c}'"):
        fill_template("a photo", "cat")
