"""Launching runs: what each process of a run does (job.py) and submitting it to Slurm (slurm.py).

The shell side (a local single-node Slurm for tests, an sbatch template) is in the repository's launch/.
"""
