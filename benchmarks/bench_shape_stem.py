"""Can the image tower learn shape at all? Supervised shape labels on built-in shapes, patch embedding vs conv stem.

    python benchmarks/bench_shape_stem.py                         # 200 steps, batch 256, tiny ViT at 64 px
    python benchmarks/bench_shape_stem.py --stems patch conv --steps 300
    python benchmarks/bench_shape_stem.py --stems conv --targets shape words words_without_colour

The built-in CLIP run names colours but not shapes (README, Evaluation). This separates the
tower from the objective: the same tiny ViT (4 x 192, 64 px, ln_pre, open_clip's init) trained
with cross-entropy on the shape label of shapes/train, scored on training scenes and on val's
held-out shape-colour pairs, one row per stem, side by side in one run. A tower that reaches a
high held-out accuracy here can represent shape; if CLIP's does not, its captions and loss are
what fail to ask for it. `--targets words` trains on every word of each scene's caption instead
(SuperClass's target, models/words.py: a softmax over the vocabulary) and names the shape by the
largest of the six shape words' logits: does a label that also names colour, size and position still
teach a shape that transfers to unseen shape-colour pairs? `words_without_colour`: the same with the
colour words taken out of every label.
"""

import argparse
import json
import time


def load(split: str, limit: int):
    """(images (N, 3, 64, 64) normalised, shape labels (N,), caption ids (N, T)) of a built-in shapes split."""
    import torch

    from pretrain_mm.data import get_builtin, load_tokenizer
    from pretrain_mm.data.decode import decode_image
    from pretrain_mm.data.reader import iter_shard
    from pretrain_mm.data.transforms import image_transform

    transform, images, labels, captions = image_transform(64, train=False), [], [], []
    for url in get_builtin("shapes", split):
        for sample in iter_shard(url, frozenset({"jpg", "json", "txt"})):
            images.append(transform(decode_image(sample["jpg"])))
            labels.append(json.loads(sample["json"])["shape"])
            captions.append(sample["txt"].decode())
            if len(images) == limit:
                break
        if len(images) == limit:
            break
    return torch.stack(images), torch.tensor(labels), load_tokenizer("shapes")(captions)


def word_ids(words) -> list[int]:
    """The built-in tokenizer's id of each word (each is one token, after a space as in a caption)."""
    from pretrain_mm.data import load_tokenizer

    tokenizer = load_tokenizer("shapes")
    ids = [tokenizer.encode(" " + word) for word in words]
    assert all(len(i) == 1 for i in ids), ids
    return [i[0] for i in ids]


def train_one(stem: str, targets: str, data, steps: int, batch: int, lr: float, patch: int, seed: int) -> dict:
    import torch
    import torch.nn.functional as F

    from pretrain_mm.data import load_tokenizer
    from pretrain_mm.data.shapes import COLOURS, SHAPES
    from pretrain_mm.models.vit import VisionTransformer
    from pretrain_mm.models.words import caption_word_targets, word_cross_entropy

    (x, y, text), (xv, yv, _) = data
    tokenizer = load_tokenizer("shapes")
    words = targets != "shape"
    if words:
        word_targets = caption_word_targets(text, tokenizer.pad_id, tokenizer.vocab_size)
        if targets == "words_without_colour":  # the colour words out of every label, the rest renormalised
            word_targets[:, word_ids(COLOURS)] = 0
            word_targets /= word_targets.sum(dim=1, keepdim=True).clamp(min=1e-12)
    read = torch.tensor(word_ids(SHAPES)) if words else torch.arange(6)  # the shape logits among the outputs
    torch.manual_seed(seed)
    model = VisionTransformer(
        image_size=64,
        patch_size=patch,
        width=192,
        depth=4,
        num_heads=3,
        output_dim=tokenizer.vocab_size if words else 6,
        norm_pre=True,
        init="clip",
        stem=stem,
    )
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.1)
    generator = torch.Generator().manual_seed(seed)
    start = time.perf_counter()
    for _ in range(steps):
        idx = torch.randint(0, len(x), (batch,), generator=generator)
        logits = model(x[idx])
        loss = word_cross_entropy(logits, word_targets[idx]).mean() if words else F.cross_entropy(logits, y[idx])
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
    seconds = time.perf_counter() - start
    model.eval()
    with torch.no_grad():
        seen = (model(x[:1000])[:, read].argmax(1) == y[:1000]).float().mean().item()
        held_out = (model(xv)[:, read].argmax(1) == yv).float().mean().item()
    row = {"stem": stem, "targets": targets, "seen": 100 * seen, "held_out": 100 * held_out}
    return {**row, "s_per_step": seconds / steps}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--stems", nargs="+", default=["patch", "conv"], choices=["patch", "conv"])
    parser.add_argument("--targets", nargs="+", default=["shape"], choices=["shape", "words", "words_without_colour"])
    parser.add_argument("--steps", type=int, default=200)
    parser.add_argument("--batch", type=int, default=256)
    parser.add_argument("--lr", type=float, default=1e-3)
    parser.add_argument("--patch", type=int, default=16)
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args()
    data = load("train", 10_000), load("val", 1_000)
    rows = [
        train_one(s, t, data, args.steps, args.batch, args.lr, args.patch, args.seed)
        for s in args.stems
        for t in args.targets
    ]
    print(
        f"\nshape from its labels or caption words: tiny ViT, 64 px in {args.patch} px patches, "
        f"{args.steps} steps of {args.batch}, seed {args.seed}; chance 16.7%"
    )
    print(f"{'stem':<6} {'targets':<21} {'training scenes':>16} {'held-out pairs':>15} {'s/step':>7}")
    for r in rows:
        print(f"{r['stem']:<6} {r['targets']:<21} {r['seen']:>15.1f}% {r['held_out']:>14.1f}% {r['s_per_step']:>7.2f}")


if __name__ == "__main__":
    main()
