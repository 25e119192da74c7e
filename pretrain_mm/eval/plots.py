"""The report's plots as PNG bytes (matplotlib's object API: no pyplot, no global backend state)."""

from __future__ import annotations

import io
from collections.abc import Sequence

import torch
from matplotlib.figure import Figure

HIT, MISS = "#2e9d44", "#c8c8c8"


def png(fig: Figure) -> bytes:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=100, bbox_inches="tight")
    return buf.getvalue()


def training_curves(records: list[dict]) -> bytes | None:
    """Loss and learning rate against step, from metrics.jsonl records; None without any."""
    records = [r for r in records if "step" in r and "loss" in r]
    if not records:
        return None
    steps = [r["step"] for r in records]
    fig = Figure(figsize=(9, 3.2))
    loss_ax, lr_ax = fig.subplots(1, 2)
    loss_ax.plot(steps, [r["loss"] for r in records], color="#1f5fa8")
    loss_ax.set(title="training loss", xlabel="step")
    loss_ax.grid(alpha=0.3)
    if all("lr" in r for r in records):
        lr_ax.plot(steps, [r["lr"] for r in records], color="#b5541c")
        lr_ax.set(title="learning rate", xlabel="step")
        lr_ax.grid(alpha=0.3)
    else:
        lr_ax.set_visible(False)
    return png(fig)


def knn_curve(curves: dict[str, dict[int, float]], title: str) -> bytes:
    """Top-1 accuracy (%) against k, one line per tower (trained, random)."""
    fig = Figure(figsize=(4.5, 3.2))
    ax = fig.subplots()
    for label, points in curves.items():
        ks = sorted(points)
        ax.plot(ks, [100 * points[k] for k in ks], marker="o", label=label)
    ax.set_xscale("log")
    ax.set(title=title, xlabel="k", ylabel="top-1 accuracy (%)")
    ax.grid(alpha=0.3)
    ax.legend()
    return png(fig)


def confusion(matrix: torch.Tensor, classnames: Sequence[str] | None, title: str) -> bytes:
    """A confusion matrix (rows: true class, columns: predicted), counts written in the cells."""
    n = matrix.shape[0]
    names = list(classnames) if classnames and len(classnames) == n else [str(i) for i in range(n)]
    side = min(9.0, 2.0 + 0.45 * n)
    fig = Figure(figsize=(side, side))
    ax = fig.subplots()
    ax.imshow(matrix.numpy(), cmap="Blues")
    ax.set_xticks(range(n), names, rotation=60, ha="right", fontsize=8)
    ax.set_yticks(range(n), names, fontsize=8)
    ax.set(title=title, xlabel="predicted", ylabel="true")
    if n <= 20:
        top = float(matrix.max()) or 1.0
        for i in range(n):
            for j in range(n):
                value = int(matrix[i, j])
                if value:
                    ax.text(
                        j,
                        i,
                        str(value),
                        ha="center",
                        va="center",
                        fontsize=7,
                        color="white" if value > 0.6 * top else "black",
                    )
    return png(fig)


def _show(ax, image: torch.Tensor, border: str | None = None) -> None:
    ax.imshow(image.permute(1, 2, 0).numpy(), interpolation="nearest")
    ax.set_xticks([])
    ax.set_yticks([])
    for spine in ax.spines.values():
        spine.set_visible(border is not None)
        if border:
            spine.set_color(border)
            spine.set_linewidth(4)


def image_strip(images: Sequence[torch.Tensor], hits: Sequence[bool] | None = None) -> bytes:
    """Images side by side (ranked results, best first); hits framed green, misses grey."""
    fig = Figure(figsize=(1.6 * max(len(images), 1), 1.8))
    axes = fig.subplots(1, max(len(images), 1), squeeze=False)[0]
    for rank, (ax, image) in enumerate(zip(axes, images)):
        _show(ax, image, (HIT if hits[rank] else MISS) if hits is not None else None)
        ax.set_title(f"#{rank + 1}", fontsize=9)
    return png(fig)


def image_grid(rows: dict[str, torch.Tensor]) -> bytes:
    """One row of images per entry (e.g. original / masked / reconstructed), named on the left."""
    names = list(rows)
    count = rows[names[0]].shape[0]
    fig = Figure(figsize=(1.5 * count + 1, 1.6 * len(names)))
    axes = fig.subplots(len(names), count, squeeze=False)
    for r, name in enumerate(names):
        for c in range(count):
            _show(axes[r][c], rows[name][c])
        axes[r][0].set_ylabel(name, fontsize=10)
    return png(fig)
