"""Shard sets on disk: URL expansion, deterministic writing, the tar reader, folder/table ingestion."""

import csv
import hashlib
import json
import os
import tarfile

import pytest

from helpers.toy_shards import toy_image, truncate, write_toy_shards
from pretrain_mm.data import ShardWriter, expand_urls, iter_shard, read_sizes
from pretrain_mm.data.__main__ import main as cli
from pretrain_mm.data.ingest import write_dataset
from pretrain_mm.data.reader import ShardError, TruncatedShard


def digest(directory):
    return {
        name: hashlib.sha256(open(os.path.join(directory, name), "rb").read()).hexdigest()
        for name in sorted(os.listdir(directory))
    }


def test_expand_urls_forms(tmp_path):
    urls = write_toy_shards(str(tmp_path), 10, 2)
    assert len(urls) == 5
    assert expand_urls(str(tmp_path)) == urls
    assert expand_urls(str(tmp_path / "{00000..00004}.tar")) == urls
    assert expand_urls(str(tmp_path / "0000[0-4].tar")) == urls
    assert expand_urls(urls) == urls
    assert expand_urls(f"{urls[0]},{urls[1]}") == urls[:2]
    assert expand_urls(f"{urls[0]}::{tmp_path}/{{00003..00004}}.tar") == [urls[0], urls[3], urls[4]]


def test_expand_urls_errors_name_the_pattern(tmp_path):
    pattern = str(tmp_path / "missing-{000..009}.tar")
    with pytest.raises(ValueError, match="missing-"):
        expand_urls(pattern)
    with pytest.raises(ValueError, match="empty shard set"):
        expand_urls([])
    os.makedirs(tmp_path / "empty")
    with pytest.raises(ValueError, match="holds no .tar"):
        expand_urls(str(tmp_path / "empty"))
    write_toy_shards(str(tmp_path / "some"), 4, 2)
    with pytest.warns(UserWarning, match="1 of 3 shards"):
        assert len(expand_urls(str(tmp_path / "some" / "{00000..00002}.tar"))) == 3


def test_writer_is_deterministic_and_writes_sizes(tmp_path):
    for run in ("a", "b"):
        write_toy_shards(str(tmp_path / run), 25, 10, bad_image=[3], no_caption=[4])
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert json.loads((tmp_path / "a" / "sizes.json").read_text()) == {"00000.tar": 10, "00001.tar": 10, "00002.tar": 5}
    assert read_sizes(expand_urls(str(tmp_path / "a")))[str(tmp_path / "a" / "00002.tar")] == 5
    with tarfile.open(tmp_path / "a" / "00000.tar") as tf:
        members = tf.getmembers()
    assert [m.name for m in members[:4]] == ["000000.cls", "000000.jpg", "000000.json", "000000.txt"]
    assert {(m.mtime, m.uid, m.gid, m.uname, m.gname) for m in members} == {(0, 0, 0, "", "")}


def test_writer_rejects_bad_keys(tmp_path):
    with ShardWriter(str(tmp_path), 10) as writer:
        for key in ("a.b", "a/b", "__meta__", ""):
            with pytest.raises(ValueError, match="sample key"):
                writer.write(key, {"txt": "x"})
        writer.write("k", {"txt": "x"})
        with pytest.raises(ValueError, match="duplicate"):
            writer.write("k", {"txt": "y"})


def test_reader_reads_only_wanted_members_and_deals_samples(tmp_path):
    urls = write_toy_shards(str(tmp_path), 6, 6)
    samples = list(iter_shard(urls[0], frozenset({"txt"})))
    assert [s["__key__"] for s in samples] == [f"{i:06d}" for i in range(6)]
    assert all(set(s) == {"__key__", "__url__", "txt"} for s in samples)
    dealt = [[s["__key__"] for s in iter_shard(urls[0], None, k, 3)] for k in range(3)]
    assert dealt == [["000000", "000003"], ["000001", "000004"], ["000002", "000005"]]


def test_reader_reports_truncation_and_damage(tmp_path):
    urls = write_toy_shards(str(tmp_path), 8, 8)
    truncate(urls[0], 0.5)
    got = []
    with pytest.raises(TruncatedShard):
        for sample in iter_shard(urls[0]):
            got.append(sample["__key__"])
    assert 0 < len(got) < 8 and got == [f"{i:06d}" for i in range(len(got))]
    (tmp_path / "junk.tar").write_bytes(b"this is not a tar file" * 50)
    with pytest.raises(ShardError, match="not a tar"):
        list(iter_shard(str(tmp_path / "junk.tar")))
    with pytest.raises(ShardError, match="cannot open"):
        list(iter_shard(str(tmp_path / "nope.tar")))


def test_reader_handles_long_and_unicode_names(tmp_path):
    path = tmp_path / "long.tar"
    with tarfile.open(path, "w", format=tarfile.PAX_FORMAT) as tf:
        for name, data in (("d" * 120 + "/ü" * 30 + ".txt", b"long"), ("x.y/k.seg.png", b"png")):
            info = tarfile.TarInfo(name)
            info.size = len(data)
            tf.addfile(info, __import__("io").BytesIO(data))
    samples = list(iter_shard(str(path)))
    assert samples[0]["txt"] == b"long" and samples[0]["__key__"].endswith("/ü")
    assert samples[1]["__key__"] == "x.y/k" and samples[1]["seg.png"] == b"png"


def make_folder(root, n=7):
    for i in range(n):
        sub = root / f"sub{i % 2}"
        sub.mkdir(parents=True, exist_ok=True)
        (sub / f"img{i}.png").write_bytes(toy_image(i, 16, "PNG"))
        if i != 5:
            (sub / f"img{i}.txt").write_text(f"picture number {i}\n")
    (root / "sub0" / "broken.jpg").write_bytes(b"not an image")
    (root / "sub0" / "broken.txt").write_text("a caption for a broken image")


def test_write_folder_is_byte_identical_and_skips_bad(tmp_path):
    make_folder(tmp_path / "src")
    results = [
        write_dataset(str(tmp_path / "src"), str(tmp_path / out), shard_size=3, vocab_size=300) for out in ("a", "b")
    ]
    assert results[0]["written"] == 6 and results[0]["skipped"] == {"bad_image": 1, "no_caption": 1}
    assert digest(tmp_path / "a") == digest(tmp_path / "b")
    assert "tokenizer.json" in os.listdir(tmp_path / "a")
    samples = [s for u in expand_urls(str(tmp_path / "a")) for s in iter_shard(u)]
    assert len(samples) == 6 and all(set(s) >= {"png", "txt", "json"} for s in samples)
    assert json.loads(samples[0]["json"])["source"] == os.path.join("sub0", "img0.png")


def test_write_table_with_named_labels(tmp_path):
    images = tmp_path / "images"
    images.mkdir()
    with open(tmp_path / "list.tsv", "w", newline="") as f:
        writer = csv.writer(f, delimiter="\t")
        writer.writerow(["file", "text", "kind"])
        for i in range(5):
            (images / f"{i}.jpg").write_bytes(toy_image(i))
            writer.writerow([f"images/{i}.jpg", f"photo {i}", ["cat", "dog"][i % 2]])
    summary = write_dataset(
        str(tmp_path / "list.tsv"), str(tmp_path / "out"), path_col="file", caption_col="text", label_col="kind"
    )
    assert summary["written"] == 5
    samples = list(iter_shard(str(tmp_path / "out" / "00000.tar")))
    assert [s["cls"] for s in samples] == [b"0", b"1", b"0", b"1", b"0"]
    assert json.loads((tmp_path / "out" / "classes.json").read_text())["classes"]["label"] == ["cat", "dog"]
    with pytest.raises(ValueError, match="no column"):
        write_dataset(str(tmp_path / "list.tsv"), str(tmp_path / "x"), caption_col="missing")


def test_cli_write_and_usage_errors(tmp_path, capsys):
    make_folder(tmp_path / "src")
    assert cli(["write", str(tmp_path / "src"), str(tmp_path / "out"), "--shard-size", "4", "--vocab-size", "0"]) == 0
    assert sorted(os.listdir(tmp_path / "out")) == ["00000.tar", "00001.tar", "sizes.json"]
    assert "wrote 6 samples in 2 shards" in capsys.readouterr().out
    assert cli(["write", str(tmp_path / "nowhere"), str(tmp_path / "o2")]) == 2
    assert "neither a folder" in capsys.readouterr().err
