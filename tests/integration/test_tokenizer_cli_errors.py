"""`python -m pretrain_mm.data tokenizer`'s errors: one line each, in the process and from the real command
line (the command's training: tests/unit/test_tokenizer_clip.py)."""

import os
import subprocess
import sys

from helpers.toy_shards import write_toy_shards
from pretrain_mm.data.__main__ import main as cli


def test_tokenizer_cli_errors(tmp_path, capsys):
    write_toy_shards(str(tmp_path / "shards"), 6, 3, no_caption=range(6))
    pattern = str(tmp_path / "nowhere-{000..003}.tar")
    cases = [
        ([pattern, str(tmp_path / "t.json")], "nowhere-"),  # no shards match
        ([str(tmp_path / "shards"), str(tmp_path / "t.json")], "no captions under caption key 'txt'"),
        (
            [str(tmp_path / "shards"), str(tmp_path / "t.json"), "--caption-key", "json:caption"],
            "caption key 'json:caption'",
        ),
        ([str(tmp_path / "shards"), str(tmp_path / "t.json"), "--vocab-size", "100"], "vocab_size must be >= 260"),
    ]
    for args, message in cases:
        assert cli(["tokenizer", *args]) == 1, args
        err = capsys.readouterr().err  # the progress bar, if reading began, then one line
        assert err.strip().splitlines()[-1].startswith("error: ") and err.count("error: ") == 1, err
        assert message in err.strip().splitlines()[-1] and "Traceback" not in err
    assert not os.path.exists(tmp_path / "t.json")
    # the real command line: exit status 1, one line, no traceback
    run = subprocess.run(
        [sys.executable, "-m", "pretrain_mm.data", "tokenizer", pattern, str(tmp_path / "t.json")],
        capture_output=True,
        text=True,
        timeout=120,
    )
    assert run.returncode == 1 and "Traceback" not in run.stderr
    assert [line for line in run.stderr.splitlines() if line.strip()] == [run.stderr.strip()]
    assert "nowhere-" in run.stderr
