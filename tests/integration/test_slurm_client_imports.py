"""launcher=slurm on a login node needs no torch: a fresh interpreter imports the submitting side alone (the
launcher's config and checks: tests/unit/test_slurm_config.py)."""

import subprocess
import sys


def test_submitting_does_not_import_torch():
    # launcher=slurm on a login node: the client pickles the task and waits; torch loads in the job.
    code = "import sys, pretrain_mm.launch.slurm; print('torch' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.strip() == "False"
