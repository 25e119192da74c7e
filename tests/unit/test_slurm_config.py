"""launcher=slurm without a cluster: the config group, what reaches sbatch, checks that fail early, and the
requeue that survives the SIGTERM it provokes (that submitting does not import torch, in a fresh interpreter:
tests/integration/test_slurm_client_imports.py)."""

import os
import signal
import stat

import pytest
import submitit

from helpers.configs import compose_config
from pretrain_mm.launch import requeue as launch_requeue
from pretrain_mm.launch.slurm import SlurmError, check_cluster, sbatch_parameters, submit


def config(*overrides):
    return compose_config("+exp=clip", *overrides)


def test_local_is_the_default_launcher():
    assert config().launcher.name == "local"


def test_the_issue_command_asks_for_4_nodes_of_8_gpus():
    params = sbatch_parameters(config("launcher=slurm", "launcher.nodes=4", "launcher.gpus_per_node=8"))
    assert params["nodes"] == 4 and params["gpus_per_node"] == 8
    assert params["ntasks_per_node"] == 8  # one task per GPU
    assert params["cpus_per_task"] == 3  # data.num_workers (2) + 1
    assert params["job_name"] == "clip" and params["time"] == 60 and params["signal_delay_s"] == 120
    assert "mem" not in params and "partition" not in params


def test_cpu_job_and_the_other_keys():
    cfg = config(
        "launcher=slurm",
        "launcher.tasks_per_node=2",
        "launcher.cpus_per_task=4",
        "launcher.mem_gb=1.5",
        "launcher.partition=debug",
        "launcher.account=proj",
        "launcher.qos=high",
        "launcher.constraint=a100",
        "launcher.timeout_min=30",
        "launcher.signal_delay_s=90",
        "launcher.job_name=mine",
        "+launcher.sbatch_extra.exclusive=true",
        "launcher.setup=[module load cuda]",
    )
    params = sbatch_parameters(cfg)
    assert "gpus_per_node" not in params and params["ntasks_per_node"] == 2 and params["cpus_per_task"] == 4
    assert params["mem"] == "1536M" and params["time"] == 30 and params["job_name"] == "mine"
    assert (params["partition"], params["account"], params["qos"], params["constraint"]) == (
        "debug",
        "proj",
        "high",
        "a100",
    )
    assert params["additional_parameters"] == {"requeue": True, "exclusive": True}
    assert params["setup"][-1] == "module load cuda"
    # The script submitit will submit: what makes requeueing and multi-task failures work is in it.
    script = submitit.slurm.slurm._make_sbatch_string(command="python -m x", folder="/tmp/f", **params)
    for line in (
        "#SBATCH --requeue",
        "#SBATCH --signal=USR2@90",
        "#SBATCH --exclusive",
        "#SBATCH --mem=1536M",
        "#SBATCH --ntasks-per-node=2",
        "module load cuda",
        "export OMP_NUM_THREADS=",
    ):
        assert line in script
    assert "--kill-on-bad-exit=1" in next(line for line in script.splitlines() if line.startswith("srun "))


@pytest.mark.parametrize(
    "override, message",
    [
        ("launcher.nodes=0", "launcher.nodes must be at least 1"),
        ("launcher.tasks_per_node=0", "launcher.tasks_per_node must be at least 1"),
        ("launcher.signal_delay_s=3600", "leaves no time to train"),
        ("launcher.max_requeues=-1", "launcher.max_requeues must be at least 0"),
    ],
)
def test_settings_that_cannot_work_are_value_errors(override, message):
    with pytest.raises(ValueError, match=message):
        sbatch_parameters(config("launcher=slurm", override))


def test_misspelt_launcher_key_is_an_error():
    with pytest.raises(Exception, match="gpus_per_nod"):
        config("launcher=slurm", "launcher.gpus_per_nod=8")


def test_no_slurm_here_says_so(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", str(tmp_path))  # nothing on it: no sbatch
    with pytest.raises(SlurmError, match=r"no Slurm here: `sbatch` is not on PATH.*local_slurm.sh start"):
        check_cluster()


@pytest.mark.parametrize(
    "job_env",
    [
        {"SUBMITIT_EXECUTOR": "slurm", "SLURM_JOB_ID": "7"},  # a submitit job
        {"SLURM_JOB_ID": "7", "SLURM_STEP_NUM_TASKS": "8"},
    ],
)  # srun, 8 tasks
def test_submitting_from_inside_a_job_is_refused(tmp_path, monkeypatch, job_env):
    for name, value in job_env.items():
        monkeypatch.setenv(name, value)
    with pytest.raises(ValueError, match="inside a Slurm job"):
        submit(config("launcher=slurm"), tmp_path)


def fake_scontrol(tmp_path, requeue_body: str, restarts: int = 1):
    """An `scontrol` on PATH: `requeue` runs requeue_body, `show job` reports `restarts`."""
    script = tmp_path / "scontrol"
    script.write_text(
        "#!/bin/bash\n"
        f'if [ "$1" = requeue ]; then {requeue_body}; fi\n'
        f'if [ "$1" = show ]; then echo "JobId=$4 JobState=PENDING Restarts={restarts}"; fi\n'
    )
    script.chmod(script.stat().st_mode | stat.S_IEXEC)
    return script


@pytest.fixture
def in_job(tmp_path, monkeypatch):
    monkeypatch.setenv("PATH", f"{tmp_path}:{os.environ['PATH']}")
    monkeypatch.setenv("SUBMITIT_EXECUTOR", "slurm")
    monkeypatch.setenv("SLURM_JOB_ID", "41")
    monkeypatch.setenv("SLURM_RESTART_COUNT", "0")


def test_requeue_survives_the_sigterm_it_provokes(tmp_path, in_job):
    # What Slurm does to a job's processes on requeue, scontrol included; scontrol must still finish.
    fake_scontrol(tmp_path, 'kill -TERM $$; sleep 0.2; touch "$(dirname "$0")/finished"; exit 0')
    before = signal.getsignal(signal.SIGTERM)
    assert launch_requeue.requeue(max_requeues=3)
    assert (tmp_path / "finished").exists()
    assert signal.getsignal(signal.SIGTERM) is before


def test_requeue_that_failed_after_slurm_acted_counts(tmp_path, in_job):
    fake_scontrol(tmp_path, "exit 1", restarts=1)
    assert launch_requeue.requeue(max_requeues=3)
    fake_scontrol(tmp_path, "echo 'Requested operation is presently disabled' >&2; exit 1", restarts=0)
    assert not launch_requeue.requeue(max_requeues=3)


def test_no_requeue_past_max_requeues(tmp_path, in_job, monkeypatch):
    fake_scontrol(tmp_path, 'touch "$(dirname "$0")/called"')
    monkeypatch.setenv("SLURM_RESTART_COUNT", "3")
    assert not launch_requeue.requeue(max_requeues=3)
    assert not (tmp_path / "called").exists()
