"""Runs a function in W real torch.distributed (gloo) processes and collects what each returns.

Results travel through files, written before the process group is torn down: a process
that crashes in `destroy_process_group` after its work is done (seen about once in 14 runs
with gloo) cannot fail a test whose results all arrived; a process that dies before
writing its result fails it, with its exit code.
"""

import os
import pickle
import traceback

import torch.distributed as dist
import torch.multiprocessing as mp


def _worker(rank, world_size, init_file, result_dir, fn, args):
    os.environ.setdefault("OMP_NUM_THREADS", "1")
    dist.init_process_group("gloo", init_method=f"file://{init_file}", rank=rank, world_size=world_size)
    try:
        outcome = ("ok", fn(rank, world_size, *args))
    except BaseException:  # noqa: BLE001 - reported to the parent, which fails the test
        outcome = ("error", traceback.format_exc())
    with open(os.path.join(result_dir, f"{rank}.tmp"), "wb") as f:
        pickle.dump(outcome, f)
    os.replace(os.path.join(result_dir, f"{rank}.tmp"), os.path.join(result_dir, f"{rank}.pkl"))
    try:
        dist.barrier()
        dist.destroy_process_group()
    except Exception:  # noqa: BLE001 - shutdown noise after the result is safe on disk
        pass


def run_distributed(fn, world_size, tmp_path, *args, timeout=300):
    """fn(rank, world_size, *args) in world_size processes; returns the list of results."""
    ctx = mp.get_context("spawn")
    result_dir = tmp_path / f"results-{world_size}"
    result_dir.mkdir(parents=True, exist_ok=True)
    init_file = tmp_path / f"init-{world_size}"
    procs = [
        ctx.Process(target=_worker, args=(r, world_size, str(init_file), str(result_dir), fn, args))
        for r in range(world_size)
    ]
    for p in procs:
        p.start()
    for p in procs:
        p.join(timeout)
    for p in procs:
        if p.is_alive():
            p.kill()
    results = []
    for rank, p in enumerate(procs):
        path = result_dir / f"{rank}.pkl"
        if not path.exists():
            raise AssertionError(f"rank {rank} of {world_size} wrote no result (exit code {p.exitcode})")
        status, value = pickle.loads(path.read_bytes())
        if status != "ok":
            raise AssertionError(f"rank {rank} of {world_size} failed:\n{value}")
        results.append(value)
    return results
