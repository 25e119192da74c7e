"""A user's mistakes on the command line end with one line `error: ...` on stderr and exit status 1, no
traceback: with one process and under torchrun; HYDRA_FULL_ERROR=1 still shows the traceback. Which
errors count as the user's: tests/unit/test_user_errors.py."""

import os
import re
import socket
import subprocess
import sys

import pytest

# Each case: the overrides and what its error line must name (the value the user gave).
MISTAKES = {
    "batch": (["+exp=clip", "trainer.batch_size=100", "trainer.grad_accum=3"], ["trainer.batch_size=100"]),
    # Unquoted braces as the shell leaves them: __main__ quotes them for Hydra, the data layer finds nothing.
    "shards": (["+exp=clip", "data=wds", "data.train.urls=/nope/{0..3}.tar"], ["'/nope/{0..3}.tar'"]),
    "tokenizer": (["+exp=clip", "data.tokenizer=/nope.json"], ["'/nope.json'"]),
    "checkpoint": (
        ["+exp=eval", "eval.checkpoint=/nope"],
        ["checkpoint /nope does not exist (eval.checkpoint)", "outputs/clip"],
    ),
}


def cli(tmp_path, *args, launcher=(sys.executable, "-m", "pretrain_mm"), full_error=False):
    # trainer.max_steps=1 and eval off: should a mistake go unnoticed, the run stays short.
    cmd = [*launcher, *args, "trainer.max_steps=1", "eval.enabled=false", f"hydra.run.dir={tmp_path / 'run'}"]
    env = {k: v for k, v in os.environ.items() if k != "HYDRA_FULL_ERROR"}
    env.update(OMP_NUM_THREADS="1", **({"HYDRA_FULL_ERROR": "1"} if full_error else {}))
    return subprocess.run(cmd, capture_output=True, text=True, timeout=900, env=env, cwd=tmp_path)


def error_lines(stderr: str) -> list[str]:
    return [line for line in stderr.splitlines() if line.startswith("error:")]


def no_project_traceback(stderr: str) -> bool:
    """No frame of this package in stderr (torchrun's own report of a failed worker has its frames)."""
    return re.search(r'File "[^"]*pretrain_mm/[^"]*\.py", line \d+', stderr) is None


@pytest.mark.slow
@pytest.mark.parametrize("case", sorted(MISTAKES))
def test_a_mistake_is_one_error_line(tmp_path, case):
    overrides, named = MISTAKES[case]
    out = cli(tmp_path, *overrides)
    assert out.returncode == 1, out.stderr[-3000:]
    lines = error_lines(out.stderr)
    assert len(lines) == 1, out.stderr[-3000:]
    for text in named:
        assert text in lines[0], lines[0]
    assert "Traceback" not in out.stderr and no_project_traceback(out.stderr), out.stderr[-3000:]
    assert "HYDRA_FULL_ERROR" not in out.stderr  # Hydra's hint comes with its traceback only


@pytest.mark.slow
def test_already_quoted_pattern_reaches_the_data_layer_intact(tmp_path):
    # What the shell leaves of 'data.train.urls="/nope/{0..3}.tar"': Hydra's own quoting, untouched.
    out = subprocess.run(
        [
            "bash",
            "-c",
            f"{sys.executable} -m pretrain_mm +exp=clip data=wds "
            "'data.train.urls=\"/nope/{0..3}.tar\"' trainer.max_steps=1 eval.enabled=false "
            f"hydra.run.dir={tmp_path / 'run'}",
        ],
        capture_output=True,
        text=True,
        timeout=900,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
        cwd=tmp_path,
    )
    assert out.returncode == 1
    lines = error_lines(out.stderr)
    assert len(lines) == 1 and "'/nope/{0..3}.tar'" in lines[0], out.stderr[-3000:]


@pytest.mark.slow
def test_hydra_full_error_shows_the_traceback(tmp_path):
    out = cli(tmp_path, "+exp=eval", "eval.checkpoint=/nope", full_error=True)
    assert out.returncode == 1
    assert "Traceback" in out.stderr and "ValueError: checkpoint /nope does not exist (eval.checkpoint)" in out.stderr
    assert not error_lines(out.stderr)


@pytest.mark.slow
@pytest.mark.parametrize("case", ["checkpoint", "batch"])
def test_under_torchrun_every_rank_says_one_line(tmp_path, case):
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    launcher = (
        sys.executable,
        "-m",
        "torch.distributed.run",
        "--nproc_per_node=2",
        f"--master_port={port}",
        "-m",
        "pretrain_mm",
    )
    overrides, named = MISTAKES[case]
    out = cli(tmp_path, *overrides, launcher=launcher)
    assert out.returncode == 1, out.stderr[-3000:]
    lines = error_lines(out.stderr)
    # A rank that another's failure stops (torchrun's SIGTERM) may say nothing: one or two lines, all alike.
    assert lines and len(lines) <= 2 and len(set(lines)) == 1, out.stderr[-3000:]
    assert all(text in lines[0] for text in named)
    assert no_project_traceback(out.stderr), out.stderr[-3000:]


@pytest.mark.slow
@pytest.mark.parametrize(
    "override, said",
    [
        ("trainer.max_stepz=3", ["Could not override 'trainer.max_stepz'", "Key 'max_stepz' not in"]),
        # A choice is an Enum in config.py: Hydra refuses it while composing, naming the choices.
        ("trainer.precision=fp16", ["Invalid value 'fp16', expected one of [auto, bf16, fp32]", "trainer.precision"]),
        ("model.mask_ratio=0.5", ["Key 'mask_ratio' not in 'ClipModelConfig'"]),  # an MAE key on a CLIP
    ],
)
def test_a_key_or_choice_the_schema_lacks_is_hydras_message_without_traceback(tmp_path, override, said):
    out = cli(tmp_path, "+exp=clip", override)
    assert out.returncode == 1
    assert all(text in out.stderr for text in said), out.stderr[-3000:]
    assert "Traceback" not in out.stderr and no_project_traceback(out.stderr)
