"""What the report shows besides numbers: retrieval examples (with their images) and MAE reconstructions."""

from __future__ import annotations

import torch

from pretrain_mm.data import CLIP_MEAN, CLIP_STD, DEFAULT_IMAGE_KEY, build_loader, image_transform, iter_shard
from pretrain_mm.data.decode import decode_image
from pretrain_mm.eval.retrieval import top_matches


def to_uint8(images: torch.Tensor, mean=CLIP_MEAN, std=CLIP_STD) -> torch.Tensor:
    """Normalised (B, 3, H, W) float images back to uint8 for display."""
    mean_t = torch.tensor(mean, device=images.device).view(1, 3, 1, 1)
    std_t = torch.tensor(std, device=images.device).view(1, 3, 1, 1)
    return ((images.float() * std_t + mean_t).clamp(0, 1) * 255).round().to(torch.uint8).cpu()


def read_images(urls: list[str], keys: list[str], image_size: int) -> dict[str, torch.Tensor]:
    """{key: 3 x S x S uint8} of the samples named, read straight from the shards (the eval
    transform: resize + centre crop). Only the wanted samples' images are decoded."""
    wanted, out = set(keys), {}
    transform = image_transform(image_size)
    exts = frozenset(DEFAULT_IMAGE_KEY.split(";"))
    for url in urls:
        for sample in iter_shard(url, exts):
            if sample["__key__"] in wanted and sample["__key__"] not in out:
                data = next((sample[e] for e in DEFAULT_IMAGE_KEY.split(";") if e in sample), None)
                if data is not None:
                    out[sample["__key__"]] = to_uint8(transform(decode_image(data))[None])[0]
        if len(out) == len(wanted):
            break
    return out


def spread(count: int, n: int) -> list[int]:
    """n indices spread evenly over range(count): examples that are not all from the first shard."""
    n = min(n, count)
    return [round(i * (count - 1) / max(n - 1, 1)) for i in range(n)] if n else []


def retrieval_examples(features, tower: str, urls: list[str], image_size: int, n: int, k: int = 5) -> dict:
    """n captions with their top-k images, n images with their top-k captions (the trained tower),
    each hit flagged: {'text_to_image': [{caption, images, hits}], 'image_to_text': [{image, captions, hits}]}."""
    image, text, owner = features.image[tower], features.text[tower], features.text_image
    text_rows = spread(text.shape[0], n)
    image_rows = spread(image.shape[0], n)
    by_text = top_matches(text[text_rows], image, k).cpu() if text_rows else torch.zeros(0, k, dtype=torch.long)
    by_image = top_matches(image[image_rows], text, k).cpu() if image_rows else torch.zeros(0, k, dtype=torch.long)
    needed = {features.keys[i] for i in image_rows} | {features.keys[i] for i in by_text.flatten().tolist()}
    pictures = read_images(urls, sorted(needed), image_size)
    blank = torch.zeros(3, image_size, image_size, dtype=torch.uint8)

    def picture(row: int) -> torch.Tensor:
        return pictures.get(features.keys[row], blank)

    owner = owner.cpu()
    return {
        "text_to_image": [
            {
                "caption": features.captions[t],
                "images": [picture(i) for i in found.tolist()],
                "hits": [i == int(owner[t]) for i in found.tolist()],
            }
            for t, found in zip(text_rows, by_text)
        ],
        "image_to_text": [
            {
                "image": picture(i),
                "captions": [features.captions[j] for j in found.tolist()],
                "hits": [int(owner[j]) == i for j in found.tolist()],
            }
            for i, found in zip(image_rows, by_image)
        ],
    }


@torch.no_grad()
def mae_reconstructions(
    models: dict, urls: list[str], image_size: int, n: int, device: torch.device, seed: int = 0, pool: int = 256
) -> tuple[dict, dict]:
    """({tower: masked-patch MSE over up to `pool` images}, the trained model's grid of n images:
    {'original', 'masked', 'reconstructed'} uint8 (n, 3, S, S)). One fixed mask (seeded noise)
    for every tower. With norm_pix_loss the predictions are per-patch normalised: they are mapped
    back with each patch's own mean and variance, as MAE's visualisation does."""
    loader = build_loader(
        urls, batch_size=pool, image_size=image_size, train=False, num_workers=0, rank=0, world_size=1
    )
    images = next(iter(loader))["image"][:pool].to(device)
    trained = models["trained"]
    generator = torch.Generator().manual_seed(seed)
    noise = torch.rand(images.shape[0], trained.encoder.num_patches, generator=generator).to(device)
    losses, grid = {}, {}
    for name, model in models.items():
        out = model(images, noise=noise)
        losses[name] = {"mse": float(out["loss"])}
        if name != "trained":
            continue
        shown = images[:n]
        pred, mask = out["pred"][:n].float(), out["mask"][:n]
        if model.norm_pix_loss:
            target = model.patchify(shown)
            pred = pred * (target.var(dim=-1, keepdim=True) + 1e-6) ** 0.5 + target.mean(dim=-1, keepdim=True)
        patch_mask = mask[..., None].expand(-1, -1, pred.shape[-1])
        masked = model.unpatchify(model.patchify(shown) * (1 - patch_mask))
        pasted = model.unpatchify(model.patchify(shown) * (1 - patch_mask) + pred * patch_mask)
        grid = {"original": to_uint8(shown), "masked": to_uint8(masked), "reconstructed": to_uint8(pasted)}
    return losses, grid
