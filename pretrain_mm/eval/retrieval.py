"""Image <-> text retrieval recall@K, computed a block of rows at a time: memory O(chunk x N), never N x N."""

from __future__ import annotations

import torch
import torch.nn.functional as F
from torchmetrics.aggregation import MeanMetric


@torch.no_grad()
def retrieval_recall(
    image_features: torch.Tensor,
    text_features: torch.Tensor,
    text_image: torch.Tensor,
    ks=(1, 5, 10),
    chunk_size: int = 1024,
) -> dict[str, float]:
    """Recall@K both ways, as fractions: 'image_to_text_R@K' (an image's query is a hit when any of
    its captions ranks in the top K of all captions) and 'text_to_image_R@K' (a caption's own image
    in the top K of all images). Cosine similarity; text_image[j] is caption j's image row.

    A query's rank is the number of other candidates scoring higher than or equal to its positive,
    so ties count against the model (a collapsed tower, every score equal, ranks every positive
    last instead of first); a NaN score counts against it too. Text -> image: the other images
    scoring >= the caption's own image. Image -> text: the captions of other images scoring >= the
    image's best own caption (its other captions do not count against it). Only `chunk_size`
    query rows of the similarity matrix exist at any time."""
    if chunk_size < 1:
        raise ValueError(f"eval.retrieval_chunk_size must be >= 1, got {chunk_size}")
    images = F.normalize(image_features.float(), dim=-1)
    texts = F.normalize(text_features.float(), dim=-1)
    text_image = text_image.to(images.device)
    metrics = {f"{d}_R@{k}": MeanMetric().to(images.device) for d in ("image_to_text", "text_to_image") for k in ks}

    for start in range(0, texts.shape[0], chunk_size):
        scores = texts[start : start + chunk_size] @ images.T
        own = text_image[start : start + chunk_size, None]
        positive = scores.gather(1, own)
        # "not below" rather than ">=": a NaN score (either side) is then a miss, not a hit.
        against = ~(scores < positive)
        against.scatter_(1, own, False)  # the positive itself is not a competitor
        rank = against.sum(dim=1)
        for k in ks:
            metrics[f"text_to_image_R@{k}"].update((rank < k).float())

    has_caption = torch.zeros(images.shape[0], dtype=torch.bool, device=images.device)
    has_caption[text_image] = True
    for start in range(0, images.shape[0], chunk_size):
        rows = torch.arange(start, min(start + chunk_size, images.shape[0]), device=images.device)
        scores = images[rows] @ texts.T
        own = text_image[None, :] == rows[:, None]
        best = scores.masked_fill(~own, float("-inf")).max(dim=1, keepdim=True).values
        rank = (~(scores < best) & ~own).sum(dim=1)[has_caption[rows]]  # images without captions are no query
        for k in ks:
            metrics[f"image_to_text_R@{k}"].update((rank < k).float())
    return {name: float(metric.compute()) for name, metric in metrics.items()}


def chance_recall(num_images: int, num_texts: int, ks=(1, 5, 10)) -> dict[str, float]:
    """Recall@K of random scores with one caption per image (about K / candidates)."""
    per_image = max(1, round(num_texts / max(num_images, 1)))
    out = {}
    for k in ks:
        out[f"image_to_text_R@{k}"] = min(1.0, k * per_image / max(num_texts, 1))
        out[f"text_to_image_R@{k}"] = min(1.0, k / max(num_images, 1))
    return out


@torch.no_grad()
def top_matches(queries: torch.Tensor, candidates: torch.Tensor, k: int = 5) -> torch.Tensor:
    """(Q, k) indices of each query's k most similar candidates (cosine), best first."""
    scores = F.normalize(queries.float(), dim=-1) @ F.normalize(candidates.float(), dim=-1).T
    return scores.topk(min(k, candidates.shape[0]), dim=1).indices
