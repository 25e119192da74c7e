"""The built-in `stamps` set, built once per session from the real Debian package (apt-get download or
$PRETRAIN_MM_STAMPS_DEB), and the pure-Python .deb reader on hand-made archives."""

import io
import json
import os
import tarfile
import tempfile
from collections import Counter
from types import SimpleNamespace

import pytest
from PIL import Image

from pretrain_mm.data import build_loader, builtin_dir, builtin_info, get_builtin, iter_shard, load_tokenizer
from pretrain_mm.data.stamps import (CLASSES, CLIP_BENCHMARK_DIR, DEB_ENV, PACKAGE, STAMPS_DIR, obtain_deb, read_deb,
                                     split_records, unseen_prompts)
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
                rows.append({"key": s["__key__"], "png": s["png"], "txt": s["txt"].decode("utf-8"),
                             "cls": int(s["cls"]) if "cls" in s else None, "json": json.loads(s["json"])})
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
    e = SimpleNamespace(zeroshot=["stamps"], retrieval=["stamps"], classification=["stamps"], shapes_attributes=[])
    ds = builtin_set("stamps", e, root)
    assert ds.caption_key == "txt" and ds.train_urls and ds.label_key == "cls"
    assert ds.zeroshot["category"].classnames == info["classes"]["category"]
    # what zero-shot / retrieval read: val images, captions, labels; conf/data/stamps.yaml's
    # context_length (64) holds every caption whole
    tokenizer = load_tokenizer(builtin_dir("stamps", root), context_length=64)
    (batch,) = list(build_loader(ds.test_urls, batch_size=256, image_size=64, train=False, tokenizer=tokenizer,
                                 caption_key=ds.caption_key, label_key=ds.label_key))
    assert len(batch["key"]) == len(samples["val"]) and batch["label"].max() < len(CLASSES)
    assert all(tokenizer.decode(t) == c.lower() for t, c in zip(batch["text"], batch["caption"]))
    longest = max(len(tokenizer.hf.encode(r["txt"], add_special_tokens=False).ids) for rows in samples.values()
                  for r in rows)
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


def test_bad_deb_paths_are_value_errors(tmp_path, monkeypatch):
    missing = str(tmp_path / "nowhere" / "stamps.deb")
    monkeypatch.setenv(DEB_ENV, missing)
    with pytest.raises(ValueError, match=missing) as error:
        builtin_dir("stamps", str(tmp_path / "cache"))
    assert "\n" not in str(error.value)
    not_deb = tmp_path / "x.deb"
    not_deb.write_bytes(b"hello")
    with pytest.raises(ValueError, match="not a Debian package"):
        read_deb(str(not_deb))
    monkeypatch.delenv(DEB_ENV)
    monkeypatch.setenv("PATH", str(tmp_path))  # no apt-get
    with pytest.raises(ValueError, match=f"{PACKAGE}.*apt-get update.*{DEB_ENV}"):
        obtain_deb(str(tmp_path))


def _deb(path, files: dict, links=()):
    """A minimal .deb: ar of debian-binary, control.tar.gz, data.tar.gz (with symlinks `links`)."""
    def tar_gz(entries, links=()):
        buf = io.BytesIO()
        with tarfile.open(fileobj=buf, mode="w:gz") as tar:
            for name, data in entries.items():
                info = tarfile.TarInfo(name)
                info.size = len(data)
                tar.addfile(info, io.BytesIO(data))
            for name, target in links:
                info = tarfile.TarInfo(name)
                info.type, info.linkname = tarfile.SYMTYPE, target
                tar.addfile(info)
        return buf.getvalue()

    members = [("debian-binary", b"2.0\n"),
               ("control.tar.gz", tar_gz({"./control": f"Package: {PACKAGE}\nVersion: 0-test\n".encode()})),
               ("data.tar.gz", tar_gz(files, links))]
    out = b"!<arch>\n"
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + b"\n" * (len(data) & 1)  # ar pads members to an even size
    path.write_bytes(out)
    return str(path)


def test_deb_reader_keeps_only_safe_stamp_files(tmp_path):
    png = io.BytesIO()
    Image.new("RGBA", (10, 20), (255, 0, 0, 255)).save(png, format="PNG")
    files = {f"./{STAMPS_DIR}animals/fox.png": png.getvalue(), f"./{STAMPS_DIR}animals/fox.txt": b"A fox.\nfr.utf8=x\n",
             f"../{STAMPS_DIR}evil.png": b"climbs out", f"/{STAMPS_DIR}abs.png": b"?",
             "./usr/share/doc/readme.txt": b"not a stamp"}
    deb = _deb(tmp_path / "t.deb", files, links=[(f"./{STAMPS_DIR}animals/link.png", "/etc/passwd")])
    control, got = read_deb(deb)
    assert control["Version"] == "0-test"
    # an absolute name is read as relative (nothing is written anyway); '..', links, other folders are not read
    assert sorted(got) == [f"{STAMPS_DIR}abs.png", f"{STAMPS_DIR}animals/fox.png", f"{STAMPS_DIR}animals/fox.txt"]
    # a truncated download: one line naming the file
    cut = tmp_path / "cut.deb"
    cut.write_bytes((tmp_path / "t.deb").read_bytes()[:-40])
    with pytest.raises(ValueError, match=f"{cut}: cannot read it as {PACKAGE}") as error:
        read_deb(str(cut))
    assert "\n" not in str(error.value)


def test_split_is_seeded_stratified_and_grouped():
    records = [{"caption": f"A {c} {i % 30}.", "category": c, "path": f"{c}/{i}.png"}
               for c in ("animals", "food") for i in range(60)] + \
              [{"caption": "A shared one.", "category": c, "path": f"{c}/s.png"} for c in ("animals", "food")] + \
              [{"caption": f"A ball {i}.", "category": "sports", "path": f"sports/{i}.png"} for i in range(9)]
    records += [{"caption": f"X {c} {i}.", "category": c, "path": f"{c}/x{i}.png"} for c in CLASSES
                if c not in ("animals", "food") for i in range(20)]
    a, b = split_records(records, 0.15, 0), split_records(records, 0.15, 0)
    assert a == b and a != split_records(records, 0.15, 1)
    val = [records[i] for i in a["val"]]
    assert not any(r["category"] == "sports" or r["caption"] == "A shared one." for r in val)
    train_captions = {records[i]["caption"].lower() for i in a["train"]}
    assert not train_captions & {r["caption"].lower() for r in val}  # near-duplicates stay together
    counts = Counter(r["category"] for r in val)
    assert all(counts[c] == 3 for c in CLASSES if c not in ("animals", "food")) and counts["animals"] == 8
    with pytest.raises(ValueError, match="val_fraction"):
        split_records(records, 1.5, 0)
