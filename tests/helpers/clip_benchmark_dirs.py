"""Small directories in CLIP_benchmark's webdataset layout, for the tests of the eval data readers."""

import os

from helpers.toy_shards import toy_image
from pretrain_mm.data import ShardWriter


def write_split(directory, samples, shard_size, nshards_file=True):
    """CLIP_benchmark's names: 0.tar, 1.tar, ... and nshards.txt."""
    with ShardWriter(str(directory), shard_size, name_format="{:d}.tar") as writer:
        for key, members in samples:
            writer.write(key, members)
    os.remove(directory / "sizes.json")  # CLIP_benchmark's export writes none
    if nshards_file:
        (directory / "nshards.txt").write_text(f"{len(writer.sizes)}\n")


def classification_dir(root, with_train=True):
    root.mkdir()
    write_split(
        root / "test", [(f"s{i:04d}", {"webp": toy_image(i, fmt="WEBP"), "cls": str(i % 3)}) for i in range(10)], 4
    )
    if with_train:
        write_split(
            root / "train",
            [(f"t{i:04d}", {"png": toy_image(i, fmt="PNG"), "cls": str(i % 3)}) for i in range(12)],
            5,
            nshards_file=False,
        )
    (root / "classnames.txt").write_text("cat\ndog\nbird\n")
    (root / "zeroshot_classification_templates.txt").write_text("a photo of a {c}.\na drawing of a {c}.\n")
    return root


def retrieval_dir(root):
    root.mkdir()
    captions = {i: "\n".join(f"picture {i} caption {j}" for j in range(1 + i % 3)) for i in range(7)}
    write_split(root / "test", [(f"r{i:04d}", {"jpg": toy_image(i), "txt": captions[i]}) for i in range(7)], 3)
    return root
