"""The real CLI: a run ends with its report; +exp=eval evaluates a run alone, never through a pickle; bad paths
fail clearly."""

import json
import os
import pickle
import subprocess
import sys

import torch

from helpers.cpu import NATIVE_BF16

# A tiny run (32 px, a batch of 16) and an evaluation cut down to seconds.
TRAIN = [
    "trainer.max_steps=2",
    "trainer.batch_size=16",
    "trainer.log_every=1",
    "data.image_size=32",
    "data.num_workers=0",
    "data.shuffle_buffer=64",
    "optim.warmup_steps=1",
]
FAST_EVAL = [
    "eval.max_samples=64",
    "eval.batch_size=32",
    "eval.knn_k=[5,10]",
    "eval.probe.epochs=3",
    "eval.examples=1",
    "eval.reconstructions=2",
]


def run_cli(*overrides, check=True):
    cmd = [sys.executable, "-m", "pretrain_mm", *overrides]
    out = subprocess.run(
        cmd,
        capture_output=True,
        text=True,
        timeout=600,
        env=dict(os.environ, OMP_NUM_THREADS="1", PYTHONUNBUFFERED="1"),
    )
    if check and out.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} exited {out.returncode}:\n{out.stdout[-3000:]}\n{out.stderr[-5000:]}")
    return out


def test_training_ends_with_a_report_and_exp_eval_reruns_it(tmp_path):
    run = tmp_path / "mae"
    out = run_cli("+exp=mae", *TRAIN, *FAST_EVAL, f"hydra.run.dir={run}")
    assert "evaluation (" in out.stdout and "MAE reconstruction" in out.stdout
    results = json.loads((run / "report" / "results.json").read_text())
    assert results["checkpoint"] == str(run / "model.safetensors")  # the finished run's consolidated weights
    assert {"linear_probe", "knn", "reconstruction"} <= set(results["metrics"]["trained"])
    # eval.precision=auto, training's rule: bf16 on a CUDA device with bf16 or a CPU with native bf16.
    native = torch.cuda.is_bf16_supported() if torch.cuda.is_available() else bool(NATIVE_BF16)
    assert results["precision"] == ("bf16" if native else "fp32")
    assert (run / "report" / "report.html").exists() and (run / "report" / "mae_reconstructions.png").exists()

    # Alone, from the run directory: the model comes from the run's config.yaml, not from this command's.
    elsewhere = tmp_path / "again"
    run_cli(
        "+exp=eval",
        f"eval.checkpoint={run}",
        f"eval.output_dir={elsewhere}",
        "eval.random_baseline=false",
        *FAST_EVAL,
        f"hydra.run.dir={tmp_path / 'eval_job'}",
    )
    again = json.loads((elsewhere / "report" / "results.json").read_text())
    assert again["model"] == results["model"] and set(again["metrics"]) == {"trained"}
    assert again["metrics"]["trained"]["knn"] == results["metrics"]["trained"]["knn"]


def test_exp_eval_names_a_missing_checkpoint(tmp_path):
    out = run_cli(
        "+exp=eval", f"eval.checkpoint={tmp_path / 'nowhere'}", f"hydra.run.dir={tmp_path / 'job'}", check=False
    )
    assert out.returncode != 0 and f"checkpoint {tmp_path / 'nowhere'} does not exist" in out.stderr


class RunsCode:
    """What a crafted pickle does when loaded: run a shell command."""

    def __init__(self, command):
        self.command = command

    def __reduce__(self):
        return os.system, (self.command,)


def test_evaluating_a_run_someone_sent_reads_its_safetensors_never_its_pickles(tmp_path):
    run, marker = tmp_path / "sent", tmp_path / "code_ran"
    run_cli("+exp=clip", *TRAIN, "eval.enabled=false", f"hydra.run.dir={run}")
    assert (run / "model.safetensors").is_file()
    step = next((run / "checkpoints").glob("step_*"))
    crafted = pickle.dumps(RunsCode(f"touch {marker}"))
    (step / ".metadata").write_bytes(crafted)  # DCP reads this file with pickle
    (step / "rank0.pt").write_bytes(crafted)

    run_cli(
        "+exp=eval",
        f"eval.checkpoint={run}",
        "eval.random_baseline=false",
        *FAST_EVAL,
        f"hydra.run.dir={tmp_path / 'job'}",
    )
    assert not marker.exists()
    assert json.loads((run / "report" / "results.json").read_text())["checkpoint"] == str(run / "model.safetensors")

    # What the README's trust note warns of: a checkpoint directory is read through DCP's pickle.
    run_cli(
        "+exp=eval",
        f"eval.checkpoint={step}",
        "eval.random_baseline=false",
        *FAST_EVAL,
        f"hydra.run.dir={tmp_path / 'job2'}",
        check=False,
    )
    assert marker.exists()
