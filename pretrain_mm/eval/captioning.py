"""Captioning evaluation (CoCa): a caption for every image of an eval split, scored against the split's own
captions (BLEU-4, CIDEr-D) and, where the set names attributes (the built-in shapes), by the share of captions
that name each attribute's true value and no other."""

from __future__ import annotations

import json
from collections.abc import Callable
from dataclasses import dataclass

import torch

from pretrain_mm.config import CaptionConfig
from pretrain_mm.data import Tokenizer, build_loader, iter_shard
from pretrain_mm.distributed import gather_lists, rank_world
from pretrain_mm.eval.caption_metrics import attribute_naming, bleu4, cider_d
from pretrain_mm.models.coca import CoCa
from pretrain_mm.models.generate import Decoding, generate
from pretrain_mm.precision import inference_autocast


def decoding_of(caption_cfg: CaptionConfig) -> Decoding:
    """The config's decoding settings (eval.caption, or the caption CLI's) as models.generate's."""
    c = caption_cfg
    return Decoding(str(c.method), c.max_length, c.beam_width, c.length_penalty, c.top_p, c.temperature)


def captioner(
    model: CoCa, tokenizer: Tokenizer, caption_cfg: CaptionConfig, device: torch.device, prompt: str = ""
) -> Callable[[torch.Tensor], list[str]]:
    """A function from a batch of normalised images to their captions as text, decoded by caption_cfg (top_p's
    samples from its seed), each starting with `prompt` (if any): the report's and the caption CLI's."""
    decoding = decoding_of(caption_cfg)
    generator = torch.Generator(device=device).manual_seed(caption_cfg.seed)
    prompt_ids = tokenizer.encode(prompt) if prompt else None

    def caption(images: torch.Tensor) -> list[str]:
        ids = generate(
            model,
            images.to(device),
            tokenizer.sot_id,
            tokenizer.eot_id,
            decoding,
            generator=generator,
            prompt=prompt_ids,
        )
        return [tokenizer.decode(row) for row in ids]

    return caption


@dataclass
class References:
    """Per sample key: its reference captions, and the attribute values (names) its JSON gives; every value
    each attribute can take (a caption naming two of them names the attribute wrongly)."""

    captions: dict[str, list[str]]
    attributes: dict[str, dict[str, str]]
    values: dict[str, list[str]]


def read_references(
    urls: list[str], caption_key: str, split_captions: bool, attribute_names: dict[str, list[str]]
) -> References:
    """Every sample's references, read straight from the shards: its caption (`caption_key`: 'txt' or
    'json:<field>'; one per line with split_captions), plus the JSON's `caption` and `full_caption` where
    present (the built-in shapes'); and for each attribute of attribute_names, the name of its JSON index."""
    captions: dict[str, list[str]] = {}
    attributes: dict[str, dict[str, str]] = {}
    for url in urls:
        for sample in iter_shard(url, frozenset({"txt", "json"})):
            key = sample["__key__"]
            meta = json.loads(sample.get("json") or b"{}")
            found = []
            if caption_key == "txt" and sample.get("txt") is not None:
                text = sample["txt"].decode("utf-8")
                found += [line.strip() for line in text.splitlines()] if split_captions else [text.strip()]
            for field in (caption_key.removeprefix("json:"), "caption", "full_caption"):
                if isinstance(meta.get(field), str):
                    found.append(meta[field].strip())
            captions[key] = list(dict.fromkeys(c for c in found if c))
            attributes[key] = {a: names[int(meta[a])] for a, names in attribute_names.items() if a in meta}
    return References(captions, attributes, attribute_names)


@torch.no_grad()
def caption_split(
    model: CoCa,
    urls: list[str],
    tokenizer: Tokenizer,
    image_size: int,
    caption_cfg: CaptionConfig,
    device: torch.device,
    batch_size: int,
    max_samples: int = 0,
    precision: str = "auto",
) -> dict[str, str]:
    """{sample key: generated caption} for the split's images (each rank captions its share, all ranks get
    all), at most max_samples over all ranks (0: all)."""
    _, world = rank_world()
    budget = -(-max_samples // world) if max_samples > 0 else None
    caption = captioner(model, tokenizer, caption_cfg, device)
    loader = build_loader(urls, batch_size=batch_size, image_size=image_size, train=False)
    keys: list[str] = []
    texts: list[str] = []
    for batch in loader:
        take = len(batch["key"]) if budget is None else min(len(batch["key"]), budget - len(keys))
        with inference_autocast(device, precision):
            texts += caption(batch["image"][:take])
        keys += batch["key"][:take]
        if budget is not None and len(keys) >= budget:
            break
    return dict(zip(gather_lists(keys), gather_lists(texts)))


def captioning_metrics(generated: dict[str, str], references: References) -> dict[str, float]:
    """bleu4, cider_d over the captioned samples, and `names_<attribute>` for each attribute the references give."""
    keys = sorted(k for k in generated if references.captions.get(k))
    if not keys:
        raise ValueError("no captioned image has a reference caption to score against")
    candidates = [generated[k] for k in keys]
    refs = [references.captions[k] for k in keys]
    out = {"bleu4": bleu4(candidates, refs), "cider_d": cider_d(candidates, refs)}
    for attr, values in references.values.items():
        have = [k for k in keys if attr in references.attributes.get(k, {})]
        if have:
            truth = [references.attributes[k][attr] for k in have]
            out[f"names_{attr}"] = attribute_naming([generated[k] for k in have], truth, values)
    return out
