"""The shard checker: exact counts per problem and per shard, sizes.json, exit status."""

import json
import os

import pytest

from helpers.toy_shards import truncate, write_toy_shards
from pretrain_mm.data import check_shards
from pretrain_mm.data.__main__ import main as cli


@pytest.fixture
def damaged(tmp_path):
    urls = write_toy_shards(str(tmp_path), 30, 10, bad_image=[3, 14], no_caption=[4, 14, 15])
    os.remove(tmp_path / "sizes.json")
    truncate(urls[2], 0.5)
    (tmp_path / "00003.tar").write_bytes(b"")
    return tmp_path


def test_counts_are_exact(damaged):
    report = check_shards(str(damaged), progress=False)
    by_name = {os.path.basename(s.url): s for s in report.shards}
    assert [by_name[n].status for n in sorted(by_name)] == ["ok", "ok", "truncated", "unreadable"]
    first, second, third = by_name["00000.tar"], by_name["00001.tar"], by_name["00002.tar"]
    assert (first.samples, first.ok) == (10, 8)
    assert first.problems == {"no_image": [], "bad_image": ["000003"], "no_caption": ["000004"], "no_label": []}
    assert (second.samples, second.ok) == (10, 8)
    assert second.problems["bad_image"] == ["000014"] and second.problems["no_caption"] == ["000014", "000015"]
    assert 0 < third.samples < 10 and third.ok == third.samples
    totals = report.totals()
    assert totals["bad_image"] == 2 and totals["no_caption"] == 3 and totals["ok"] == 16 + third.samples
    assert totals["truncated_shards"] == 1 and totals["unreadable_shards"] == 1
    sizes = json.loads((damaged / "sizes.json").read_text())
    assert sizes == {"00000.tar": 10, "00001.tar": 10, "00002.tar": third.samples, "00003.tar": 0}
    assert report.bad and "BAD" in report.format()
    parallel = check_shards(str(damaged), progress=False, workers=2, write_sizes_json=False)
    assert [(s.url, s.samples, s.ok, s.problems, s.status) for s in parallel.shards] == [
        (s.url, s.samples, s.ok, s.problems, s.status) for s in report.shards
    ]


def test_labels_checked_when_asked(tmp_path):
    write_toy_shards(str(tmp_path), 5, 5)
    assert not check_shards(str(tmp_path), label_key="cls", progress=False).bad
    report = check_shards(str(tmp_path), label_key="json:missing", progress=False)
    assert report.totals()["no_label"] == 5


def test_cli_exit_status(damaged, tmp_path_factory, capsys):
    good = tmp_path_factory.mktemp("good")
    write_toy_shards(str(good), 12, 5)
    expected_sizes = (good / "sizes.json").read_text()
    os.remove(good / "sizes.json")
    assert cli(["check", str(good / "{00000..00002}.tar"), "--json"]) == 0
    out = capsys.readouterr().out
    assert "OK: every sample is usable" in out and json.loads(out.strip().splitlines()[-1])["samples"] == 12
    assert (good / "sizes.json").read_text() == expected_sizes  # the writer's sizes.json, byte for byte
    assert cli(["check", str(damaged)]) == 1
    assert "truncated" in capsys.readouterr().out
    assert cli(["check", str(damaged / "nothing-{0..9}.tar")]) == 2
    assert "nothing-{0..9}.tar" in capsys.readouterr().err
    assert cli(["check", str(good), "--caption-key", "pickle"]) == 2
