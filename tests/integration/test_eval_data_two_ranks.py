"""Feature extraction on 2 gloo ranks gives what 1 rank gives (the eval data readers themselves:
tests/unit/test_eval_data.py)."""

import torch

from helpers.clip_benchmark_dirs import classification_dir, retrieval_dir, write_split
from helpers.multiprocess import run_distributed
from helpers.toy_shards import toy_image
from pretrain_mm.data import build_loader, train_tokenizer
from pretrain_mm.eval.datasets import clip_benchmark_set
from pretrain_mm.eval.features import extract_features


def _extract(rank, world_size, labelled_urls, captioned_urls, single_urls, tokenizer):
    """Both kinds of split: labels (shards of unequal sizes: the ranks get 6 and 4 samples) and
    several captions per image (the owners must be renumbered across ranks); and a split of one
    sample, which leaves a rank with nothing (it must still take part in the gathers)."""
    cpu, mean = torch.device("cpu"), {"mean": lambda x: x.mean(dim=(2, 3))}
    labelled = extract_features(
        build_loader(labelled_urls, batch_size=3, image_size=16, train=False, label_key="cls"), mean, cpu
    )
    captioned = extract_features(
        build_loader(captioned_urls, batch_size=2, tokenizer=tokenizer, image_size=16, train=False),
        mean,
        cpu,
        tokenizer=tokenizer,
        split_captions=True,
        text_encoders={"mean": lambda tokens: tokens[:, :5].float()},
    )
    single = extract_features(
        build_loader(single_urls, batch_size=3, image_size=16, train=False, label_key="cls"), mean, cpu
    )
    return (
        labelled.keys,
        labelled.image["mean"],
        labelled.labels["label"],
        captioned.keys,
        captioned.captions,
        captioned.text_image,
        captioned.text["mean"],
        single.keys,
        single.image["mean"],
        single.labels["label"],
    )


def test_extraction_on_two_ranks_equals_one(tmp_path):
    labelled = clip_benchmark_set(classification_dir(tmp_path / "labelled", with_train=False)).test_urls
    captioned = clip_benchmark_set(retrieval_dir(tmp_path / "captioned")).test_urls
    tokenizer = train_tokenizer(
        [f"picture {i} caption {j}" for i in range(9) for j in range(3)], vocab_size=300, context_length=12
    )
    lonely = tmp_path / "lonely"
    lonely.mkdir()
    write_split(lonely, [("only", {"jpg": toy_image(3), "cls": "2"})], 1)
    single = _extract(0, 1, labelled, captioned, [str(lonely / "0.tar")], tokenizer)
    assert single[0] == sorted(single[0]) and len(single[4]) == 13 and single[7] == ["only"]
    for result in run_distributed(_extract, 2, tmp_path, labelled, captioned, [str(lonely / "0.tar")], tokenizer):
        for ours, theirs in zip(result, single):  # sorted by key, whatever rank read a sample
            if isinstance(ours, torch.Tensor):
                torch.testing.assert_close(ours, theirs)
            else:
                assert ours == theirs
