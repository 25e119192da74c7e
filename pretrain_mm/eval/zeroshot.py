"""Zero-shot classification (CLIP): class names x prompt templates -> one averaged text embedding per class."""

from __future__ import annotations

import torch
import torch.nn.functional as F

from pretrain_mm.eval.features import Encoder
from pretrain_mm.eval.metrics import accuracies
from pretrain_mm.precision import inference_autocast


def fill_template(template: str, classname: str) -> str:
    """A prompt for one class: CLIP_benchmark's '{c}' or the built-in sets' '{}' replaced by the name."""
    if "{c}" not in template and "{}" not in template:
        raise ValueError(f"zero-shot template {template!r} has no '{{c}}' or '{{}}' where the class name goes")
    return template.replace("{c}", classname).replace("{}", classname)


@torch.no_grad()
def zeroshot_classifier(
    encode_text: Encoder,
    tokenizer,
    classnames: list[str],
    templates: list[str],
    device: torch.device,
    batch_size: int = 256,
    precision: str = "auto",
) -> torch.Tensor:
    """(D, C): per class, the mean of its prompts' unit-norm text embeddings, normalised again
    (CLIP's prompt ensembling: averaging in the embedding space, not the logits)."""
    if not classnames or not templates:
        raise ValueError("zero-shot classification needs class names and at least one template")
    prompts = [fill_template(t, c) for c in classnames for t in templates]
    parts = []
    for start in range(0, len(prompts), batch_size):
        tokens = tokenizer(prompts[start : start + batch_size]).to(device)
        with inference_autocast(device, precision):
            parts.append(F.normalize(encode_text(tokens).float(), dim=-1))
    per_prompt = torch.cat(parts).view(len(classnames), len(templates), -1)
    return F.normalize(per_prompt.mean(dim=1), dim=-1).T


def zeroshot_evaluate(
    image_features: torch.Tensor, labels: torch.Tensor, classifier: torch.Tensor
) -> tuple[dict, torch.Tensor]:
    """(top-1 / top-5 accuracy (top-5 only with more than 5 classes), the predicted classes)."""
    logits = F.normalize(image_features.float(), dim=-1) @ classifier
    return accuracies(logits, labels, classifier.shape[1]), logits.argmax(dim=1)
