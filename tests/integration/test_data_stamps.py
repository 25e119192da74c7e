"""The built-in `stamps` set, built once per session from the real Debian package (apt-get download or
$PRETRAIN_MM_STAMPS_DEB). The .deb reader on hand-made archives and the split: tests/unit/test_stamps_deb_reader.py."""

import io
import json
import os
import tempfile
from collections import Counter
from types import SimpleNamespace

import pytest
from PIL import Image

from pretrain_mm.data import build_loader, builtin_dir, builtin_info, get_builtin, iter_shard, load_tokenizer
from pretrain_mm.data.stamps import CLASSES, CLIP_BENCHMARK_DIR, DEB_ENV, PACKAGE, obtain_deb, unseen_prompts
from pretrain_mm.eval.datasets import builtin_set, clip_benchmark_set


@pytest.fixture(scope="session")
def root(tmp_path_factory):
    out = str(tmp_path_factory.mktemp("data"))
    with tempfile.TemporaryDirectory() as tmp:  # the 160 MB .deb is not kept with pytest's last 3 runs
        deb = os.environ.get(DEB_ENV)
        if not deb:
            try:
                deb = obtain_deb(tmp)
            except ValueError as error:
                pytest.skip(f"no {PACKAGE} package to build from: {error}")
        with pytest.MonkeyPatch.context() as mp:
            mp.setenv(DEB_ENV, deb)
            builtin_dir("stamps", out)
    return out


@pytest.fixture(scope="session")
def samples(root):
    """{split: [sample dict with decoded members]}"""
    out = {}
    for split in ("train", "val"):
        rows = []
        for url in get_builtin("stamps", split, root):
            for s in iter_shard(url):
                rows.append(
                    {
                        "key": s["__key__"],
                        "png": s["png"],
                        "txt": s["txt"].decode("utf-8"),
                        "cls": int(s["cls"]) if "cls" in s else None,
                        "json": json.loads(s["json"]),
                    }
                )
        out[split] = rows
    return out


def test_splits_samples_and_captions(root, samples):
    info = builtin_info("stamps", root)
    train, val = samples["train"], samples["val"]
    assert len(train) + len(val) > 700 and 90 <= len(val) <= 140, (len(train), len(val))
    assert info["source"]["package"] == PACKAGE and info["source"]["version"]
    assert info["params"] == {"image_size": 64, "val_fraction": 0.15, "seed": 0}
    for split, rows in samples.items():
        with open(os.path.join(builtin_dir("stamps", root), split, "sizes.json")) as f:
            sizes = json.load(f)
        assert sum(sizes.values()) == len(rows)
        for r in rows:
            img = Image.open(io.BytesIO(r["png"]))
            img.load()
            assert img.size == (64, 64) and img.mode == "RGB"
            caption = r["txt"]
            assert caption == " ".join(caption.split()) and caption == r["json"]["caption"]
            letters = [ch for ch in caption if ch.isalpha()]  # English: Latin letters (typographic quotes are fine)
            assert letters and sum(ch.isascii() for ch in letters) / len(letters) > 0.9, caption
            assert ".utf8=" not in caption and not caption[0].islower(), caption  # a sentence, not a translation
            meta = r["json"]
            assert meta["path"].endswith(".png") and not meta["path"].endswith("_mirror.png")
            assert meta["path"].split("/")[0] == meta["category"]
            if meta["category"] in CLASSES:
                assert r["cls"] == meta["label"] == list(CLASSES).index(meta["category"])
            else:
                assert r["cls"] is None and meta["label"] is None and split == "train"
    # corners are background: stamps are composited onto white
    corner = Image.open(io.BytesIO(val[0]["png"])).getpixel((0, 0))
    assert min(corner) >= 250
    # real English descriptions, not templates: many distinct captions, some long
    assert len({r["txt"] for r in train}) > 400 and max(len(r["txt"].split()) for r in train) > 15


def test_classes_balanced_across_splits(root, samples):
    info = builtin_info("stamps", root)
    assert info["classes"]["category"] == list(CLASSES.values()) and info["label_keys"] == {"category": "cls"}
    train = Counter(r["json"]["category"] for r in samples["train"] if r["cls"] is not None)
    val = Counter(r["json"]["category"] for r in samples["val"])
    assert set(val) == set(CLASSES) == set(train)
    for category in CLASSES:
        share = val[category] / (val[category] + train[category])
        assert val[category] >= 2 and 0.08 <= share <= 0.22, (category, val[category], train[category])
    assert info["counts"]["val"] == {c: val.get(c, 0) for c in info["counts"]["val"]}


def test_val_disjoint_from_train(samples):
    train_keys = {r["key"] for r in samples["train"]}
    val_keys = {r["key"] for r in samples["val"]}
    assert val_keys and not train_keys & val_keys
    assert not {r["txt"].lower() for r in samples["train"]} & {r["txt"].lower() for r in samples["val"]}
    assert not {r["json"]["path"] for r in samples["train"]} & {r["json"]["path"] for r in samples["val"]}


def test_prompts_unseen_in_training_captions(root, samples):
    prompts = builtin_info("stamps", root)["prompts"]["category"]
    captions = [r["txt"].lower() for r in samples["train"]]
    assert len(prompts) >= 4 and all(p.count("{}") == 1 for p in prompts)
    for p in prompts:
        fixed = " ".join(p.replace("{}", " ").split()).strip(" .:").lower()
        assert not any(fixed in c for c in captions), p
    # the check drops a template whose wording a caption holds
    seen = "A US 25 cent piece ($.25) called a quarter."
    assert unseen_prompts(["a drawing of a {}.", "{} called a quarter."], [seen]) == ["a drawing of a {}."]


def test_eval_sets_read_back(root, samples):
    info = builtin_info("stamps", root)
    e = SimpleNamespace(
        zeroshot=["stamps"],
        retrieval=["stamps"],
        classification=["stamps"],
        captioning=["stamps"],
        shapes_attributes=[],
    )
    ds = builtin_set("stamps", e, root)
    assert ds.caption_key == "txt" and ds.train_urls and ds.label_key == "cls"
    assert ds.retrieval and ds.captioning and ds.attribute_names == {}  # a CoCa captions it, against its .txt
    assert ds.zeroshot["category"].classnames == info["classes"]["category"]
    # what zero-shot / retrieval read: val images, captions, labels; conf/data/stamps.yaml's
    # context_length (64) holds every caption whole
    tokenizer = load_tokenizer(builtin_dir("stamps", root), context_length=64)
    (batch,) = list(
        build_loader(
            ds.test_urls,
            batch_size=256,
            image_size=64,
            train=False,
            tokenizer=tokenizer,
            caption_key=ds.caption_key,
            label_key=ds.label_key,
        )
    )
    assert len(batch["key"]) == len(samples["val"]) and batch["label"].max() < len(CLASSES)
    assert all(tokenizer.decode(t) == c.lower() for t, c in zip(batch["text"], batch["caption"]))
    longest = max(
        len(tokenizer.hf.encode(r["txt"], add_special_tokens=False).ids) for rows in samples.values() for r in rows
    )
    assert longest + 2 <= 64

    bench = clip_benchmark_set(os.path.join(builtin_dir("stamps", root), CLIP_BENCHMARK_DIR))
    assert bench.classnames == list(CLASSES.values()) and bench.train_urls is None and len(bench.test_urls) == 1
    templates = bench.zeroshot["label"].templates
    assert templates == [p.replace("{}", "{c}") for p in info["prompts"]["category"]]
    loader = build_loader(bench.test_urls, batch_size=256, image_size=64, train=False, label_key="cls")
    (batch,) = list(loader)
    truth = {r["key"]: r["cls"] for r in samples["val"]}
    assert batch["image"].shape == (len(truth), 3, 64, 64)
    assert dict(zip(batch["key"], batch["label"].tolist())) == truth
