"""The `stamps` set's pieces without the real package: the pure-Python .deb reader on hand-made
archives, bad paths, and the seeded split (the set built from the real package:
tests/integration/test_data_stamps.py)."""

import io
import tarfile
from collections import Counter

import pytest
from PIL import Image

from pretrain_mm.data import builtin_dir
from pretrain_mm.data.stamps import CLASSES, DEB_ENV, PACKAGE, STAMPS_DIR, obtain_deb, read_deb, split_records


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

    members = [
        ("debian-binary", b"2.0\n"),
        ("control.tar.gz", tar_gz({"./control": f"Package: {PACKAGE}\nVersion: 0-test\n".encode()})),
        ("data.tar.gz", tar_gz(files, links)),
    ]
    out = b"!<arch>\n"
    for name, data in members:
        header = f"{name + '/':<16}{0:<12}{0:<6}{0:<6}{100644:<8}{len(data):<10}`\n".encode()
        out += header + data + b"\n" * (len(data) & 1)  # ar pads members to an even size
    path.write_bytes(out)
    return str(path)


def test_deb_reader_keeps_only_safe_stamp_files(tmp_path):
    png = io.BytesIO()
    Image.new("RGBA", (10, 20), (255, 0, 0, 255)).save(png, format="PNG")
    files = {
        f"./{STAMPS_DIR}animals/fox.png": png.getvalue(),
        f"./{STAMPS_DIR}animals/fox.txt": b"A fox.\nfr.utf8=x\n",
        f"../{STAMPS_DIR}evil.png": b"climbs out",
        f"/{STAMPS_DIR}abs.png": b"?",
        "./usr/share/doc/readme.txt": b"not a stamp",
    }
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
    records = (
        [
            {"caption": f"A {c} {i % 30}.", "category": c, "path": f"{c}/{i}.png"}
            for c in ("animals", "food")
            for i in range(60)
        ]
        + [{"caption": "A shared one.", "category": c, "path": f"{c}/s.png"} for c in ("animals", "food")]
        + [{"caption": f"A ball {i}.", "category": "sports", "path": f"sports/{i}.png"} for i in range(9)]
    )
    records += [
        {"caption": f"X {c} {i}.", "category": c, "path": f"{c}/x{i}.png"}
        for c in CLASSES
        if c not in ("animals", "food")
        for i in range(20)
    ]
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
