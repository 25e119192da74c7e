"""The built-in evals measure transfer: shapes' val holds unseen shape-colour pairs, prompts are unseen wording."""

import collections
import json

import pytest

import pretrain_mm.data.digits as digits_set
import pretrain_mm.data.shapes as shapes_set
from pretrain_mm.config import EvalConfig
from pretrain_mm.data import builtin_info, get_builtin, iter_shard
from pretrain_mm.data.prompts import check_unseen_prompts, fixed_text
from pretrain_mm.eval.datasets import builtin_set
from pretrain_mm.eval.report import write_report

SMALL = {"num_train": 240, "num_val": 80}


def read_meta(urls):
    """The JSON of every sample in the written shards."""
    return [json.loads(s["json"]) for url in urls for s in iter_shard(url, frozenset({"json"}))]


@pytest.fixture(scope="module")
def shapes(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("shapes"))
    meta = {split: read_meta(get_builtin("shapes", split, root=root, **SMALL)) for split in ("train", "val")}
    return meta, builtin_info("shapes", root, **SMALL)


@pytest.fixture(scope="module")
def digits(tmp_path_factory):
    root = str(tmp_path_factory.mktemp("digits"))
    return read_meta(get_builtin("digits", "train", root=root)), builtin_info("digits", root)


def pairs(samples, info):
    return {(info["classes"]["shape"][m["shape"]], info["classes"]["colour"][m["colour"]]) for m in samples}


def test_shapes_val_is_compositional(shapes):
    meta, info = shapes
    assert info["split"]["kind"] == "compositional"
    held = {tuple(p) for p in info["split"]["held_out"]}
    assert len(held) == 12 == len(info["split"]["held_out"])
    # balanced: every shape loses 2 colours, every colour 1 or 2 shapes
    assert set(collections.Counter(s for s, _ in held).values()) == {2}
    assert set(collections.Counter(c for _, c in held)) == set(info["classes"]["colour"])
    assert set(collections.Counter(c for _, c in held).values()) == {1, 2}

    train, val = pairs(meta["train"], info), pairs(meta["val"], info)
    assert not train & val and not train & held
    assert val == held  # val shows only held-out pairs (all 12 with 80 samples)
    # ... of shapes and colours that training shows, every one of them
    assert {s for s, _ in train} == set(info["classes"]["shape"]) >= {s for s, _ in val}
    assert {c for _, c in train} == set(info["classes"]["colour"]) >= {c for _, c in val}
    assert len(train) == 36
    # the other attributes stay random in both splits
    for split in ("train", "val"):
        assert {m["background"] for m in meta[split]} == set(range(len(info["classes"]["background"])))
    assert "12 shape-colour pairs never seen in training" in info["eval_note"]


def unseen(prompt_pieces, captions):
    """The pieces (of two or more words) that occur in some caption, word-bounded."""
    padded = [f" {c} " for c in captions]
    return [p for p in prompt_pieces if len(p.split()) >= 2 and any(f" {p} " in c for c in padded)]


def check_prompts(prompts, classnames, templates, captions):
    caption_set = set(captions)
    filled = [p.format(c) for p in prompts for c in classnames]
    assert filled and not caption_set & set(filled)
    # No literal piece of a prompt template, nor of the prompts as written to classes.json (the
    # other attributes filled in), occurs in a training caption.
    assert unseen([piece for t in templates for piece in fixed_text(t)], captions) == []
    assert unseen([piece.strip() for p in prompts for piece in p.split("{}")], captions) == []


def test_shapes_prompts_are_not_training_captions(shapes):
    meta, info = shapes
    captions = [m["caption"] for m in meta["train"]]
    for attr, prompts in info["prompts"].items():
        assert len(prompts) >= 3 and all(p.count("{}") == 1 and "{" not in p.replace("{}", "") for p in prompts)
        check_prompts(prompts, info["classes"][attr], shapes_set.PROMPT_TEMPLATES, captions)
    # the captions do come from the training templates, whose pieces the check would have found
    assert unseen(["at the", "background with a"], captions) == ["at the", "background with a"]
    assert "never used in training captions" in info["eval_note"]


def test_digits_prompts_are_not_training_captions(digits):
    meta, info = digits
    captions = [m["caption"] for m in meta]
    assert len(captions) == 1437
    check_prompts(info["prompts"]["label"], info["classes"]["label"], digits_set.DIGIT_PROMPT_TEMPLATES, captions)
    assert set(info["prompts"]["label"]) == set(digits_set.DIGIT_PROMPT_TEMPLATES)
    assert not set(digits_set.DIGIT_PROMPT_TEMPLATES) & set(digits_set.DIGIT_TEMPLATES)
    assert "never used in training captions" in info["eval_note"]


def test_the_build_check_rejects_training_templates():
    check = check_unseen_prompts
    check(shapes_set.PROMPT_TEMPLATES, shapes_set.FULL_TEMPLATES + shapes_set.PARTIAL_TEMPLATES)
    check(digits_set.DIGIT_PROMPT_TEMPLATES, digits_set.DIGIT_TEMPLATES)
    for bad in (
        "a {colour} {shape}",
        "a {size} {pos}",  # a training template, with its fields renamed or not
        "one {shape} at the {pos}",
        "the {bg} background with a {shape}",
    ):  # a training template's words
        with pytest.raises(AssertionError, match="training caption template"):
            check([bad], shapes_set.FULL_TEMPLATES + shapes_set.PARTIAL_TEMPLATES)
    with pytest.raises(AssertionError, match="'a handwritten digit'"):
        check(["a handwritten digit {} again"], digits_set.DIGIT_TEMPLATES)


def test_the_report_says_what_the_sets_test(tmp_path):
    e = EvalConfig(zeroshot=["shapes", "digits"], retrieval=[], classification=[])
    notes = {name: builtin_set(name, e).note for name in ("shapes", "digits")}
    assert notes == {name: builtin_info(name)["eval_note"] for name in notes}
    results = {
        "checkpoint": None,
        "run_dir": str(tmp_path),
        "created": "now",
        "world_size": 1,
        "eval_seconds": 1.0,
        "model": {"kind": "clip", "size": "tiny", "image_size": 32},
        "chance": {},
        "samples": {},
        "metrics": {"trained": {"zeroshot": {"shapes/shape": {"top1": 0.5}, "digits/label": {"top1": 0.6}}}},
        "notes": notes,
        "config": {},
    }
    out = write_report(tmp_path / "report", results, {}, tmp_path / "missing.jsonl")
    markdown = (out / "report.md").read_text()
    table, configuration = markdown.index("| zero-shot | digits/label |"), markdown.index("## Configuration")
    for name, note in notes.items():
        assert table < markdown.index(f"{name}: {note}") < configuration  # right under the numbers
    assert "shapes: val holds only the 12 shape-colour pairs never seen in training" in markdown
    assert "digits: val: a stratified random split" in (out / "report.html").read_text()
