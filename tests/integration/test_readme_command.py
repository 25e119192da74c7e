"""The README's training command, brace pattern in single quotes, run through bash on two shards (how
the pattern reaches the config: tests/unit/test_cli_urls.py)."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from test_train import FAST, metrics, summary

ROOT = Path(__file__).resolve().parents[2]


def readme_training_command() -> str:
    """The README's "Training" command with data.train.urls= (continuation lines kept, comment dropped)."""
    section = (ROOT / "README.md").read_text().split("\n## Training\n", 1)[1]
    block = section.split("```\n", 2)[1]
    lines = block.splitlines()
    start = next(i for i, line in enumerate(lines) if "data.train.urls=" in line)
    command = [lines[start]]
    while command[-1].rstrip().endswith("\\"):
        command.append(lines[start + len(command)])
    command[-1] = re.sub(r"\s+#.*$", "", command[-1])
    return "\n".join(command)


@pytest.mark.slow
def test_readme_command_trains_on_shards_through_bash(tmp_path):
    shards = tmp_path / "shards"
    subprocess.run(
        [
            sys.executable,
            "-m",
            "pretrain_mm.data",
            "write",
            "builtin:shapes",
            str(shards),
            "--num-train",
            "64",
            "--num-val",
            "16",
            "--shard-size",
            "32",
            "--image-size",
            "32",
        ],
        check=True,
        capture_output=True,
        timeout=600,
    )
    assert sorted(p.name for p in (shards / "train").glob("*.tar")) == ["00000.tar", "00001.tar"]
    command = readme_training_command()
    assert command.startswith("python -m pretrain_mm ")
    # The README's form exactly (single quotes around a brace range), pointed at these two shards.
    found = re.search(r"data\.train\.urls='(\S+)/\{(\d+)\.\.(\d+)\}\.tar'", command)
    assert found, command
    first = found.group(2)
    pattern = f"{shards}/train/{{{first}..{int(first) + 1:0{len(first)}d}}}.tar"
    command = command.replace(found.group(0), f"data.train.urls='{pattern}'")
    # Until a default tokenizer is there for shards without one: the tokenizer written with these shards.
    command = re.sub(r"data\.tokenizer=\S+", f"data.tokenizer={shards}/tokenizer.json", command)
    run = tmp_path / "run"
    extra = [*FAST, "model.size=tiny", "trainer.max_steps=2", "eval.enabled=false", f"hydra.run.dir={run}"]
    command = shlex.quote(sys.executable) + command[len("python") :] + " " + " ".join(map(shlex.quote, extra))
    out = subprocess.run(
        ["bash", "-c", command],
        capture_output=True,
        text=True,
        timeout=900,
        cwd=tmp_path,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
    assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    assert summary(run)["status"] == "finished" and [m["step"] for m in metrics(run)] == [1, 2]
    assert f"urls: {pattern}" in (run / "config.yaml").read_text()
