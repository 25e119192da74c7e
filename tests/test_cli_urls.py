"""Brace patterns of shard lists on the command line as the README prints them: the shell strips the quotes,
__main__ quotes the pattern again for Hydra's override grammar."""

import os
import re
import shlex
import subprocess
import sys
from pathlib import Path

import pytest
from hydra import compose, initialize_config_dir
from omegaconf import OmegaConf

from pretrain_mm.__main__ import CONFIG_DIR, quote_url_patterns
from test_train import FAST, metrics, summary

ROOT = Path(__file__).resolve().parents[1]


def composed(*overrides):
    """The config Hydra composes from these command-line arguments after __main__'s quoting."""
    with initialize_config_dir(config_dir=CONFIG_DIR, version_base="1.3"):
        return compose("config", overrides=quote_url_patterns(["+exp=clip", "data=wds", *overrides]))


@pytest.mark.parametrize("arg, key, value", [
    # What the shell leaves of data.train.urls='/data/cc3m/{00000..00331}.tar':
    ("data.train.urls=/data/cc3m/{00000..00331}.tar", "data.train.urls", "/data/cc3m/{00000..00331}.tar"),
    # ... of 'data.train.urls="/d/{0..9}.tar"' (quoted for Hydra by the user): left as it is.
    ('data.train.urls="/d/{0..9}.tar"', "data.train.urls", "/d/{0..9}.tar"),
    ("data.train.urls='/d/{0..9}.tar'", "data.train.urls", "/d/{0..9}.tar"),
    ("data.val.urls=/d/{0..1}.tar,/e/{2..3}.tar", "data.val.urls", "/d/{0..1}.tar,/e/{2..3}.tar"),  # a comma list
    ("eval.wds.train_urls=/w/{0..1}.tar", "eval.wds.train_urls", "/w/{0..1}.tar"),
    ("++eval.wds.test_urls=/w/{2..3}.tar", "eval.wds.test_urls", "/w/{2..3}.tar"),
    # Quotes and backslashes in the value survive Hydra's escapes.
    ("data.train.urls=/d/it's/{0..1}.tar", "data.train.urls", "/d/it's/{0..1}.tar"),
    ('data.train.urls=/d/"q"/{0..1}.tar', "data.train.urls", '/d/"q"/{0..1}.tar'),
    ("data.train.urls=/d\\'x\\/{0..1}\\", "data.train.urls", "/d\\'x\\/{0..1}\\"),
    ("data.train.urls=/plain/0.tar", "data.train.urls", "/plain/0.tar"),
])
def test_a_brace_pattern_reaches_the_config_unchanged(arg, key, value):
    assert OmegaConf.select(composed(arg), key) == value


def test_only_shard_list_overrides_are_touched():
    args = ["-m", "data.tokenizer=/t/{x}.json", "~data.train.urls", "hydra.run.dir=/r/{a}", "data.train.urls=/d.tar"]
    assert quote_url_patterns(args) == args


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
    subprocess.run([sys.executable, "-m", "pretrain_mm.data", "write", "builtin:shapes", str(shards), "--num-train",
                    "64", "--num-val", "16", "--shard-size", "32", "--image-size", "32"], check=True,
                   capture_output=True, timeout=600)
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
    command = shlex.quote(sys.executable) + command[len("python"):] + " " + " ".join(map(shlex.quote, extra))
    out = subprocess.run(["bash", "-c", command], capture_output=True, text=True, timeout=900, cwd=tmp_path,
                         env=dict(os.environ, OMP_NUM_THREADS="1"))
    assert out.returncode == 0, f"{command}\n{out.stderr[-3000:]}"
    assert summary(run)["status"] == "finished" and [m["step"] for m in metrics(run)] == [1, 2]
    assert f"urls: {pattern}" in (run / "config.yaml").read_text()
