"""Running a pretrain_mm tool's command line (`python -m pretrain_mm.<tool> ...`) in a fresh interpreter."""

import os
import subprocess
import sys


def run_tool(tool: str, *args, timeout: int = 300) -> subprocess.CompletedProcess:
    """`python -m pretrain_mm.<tool> args...` with one thread, its output captured as text."""
    return subprocess.run(
        [sys.executable, "-m", f"pretrain_mm.{tool}", *map(str, args)],
        capture_output=True,
        text=True,
        timeout=timeout,
        env=dict(os.environ, OMP_NUM_THREADS="1"),
    )
