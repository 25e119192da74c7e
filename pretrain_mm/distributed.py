"""torch.distributed for train, eval and data alike: set-up from torchrun's or Slurm's variables, rank and
world size, and the few collectives the project needs (gathers of uneven rows, flags, means).

One function decides the launch, so `torchrun --nproc_per_node=2 -m pretrain_mm ...`, `srun python -m
pretrain_mm ...` and a plain `python -m pretrain_mm ...` all work: gloo on CPU, NCCL on GPU.
"""

import datetime
import os
import subprocess
from dataclasses import dataclass

import torch
import torch.distributed as dist


@dataclass(frozen=True)
class DistInfo:
    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def _first_slurm_host(nodelist: str) -> str:
    """The first host of a Slurm node list ('node[003-005,9]' -> 'node003')."""
    try:
        out = subprocess.run(
            ["scontrol", "show", "hostnames", nodelist], capture_output=True, text=True, check=True, timeout=30
        )
        return out.stdout.split()[0]
    except (OSError, subprocess.SubprocessError, IndexError):
        head = nodelist.split(",")[0]
        if "[" in head:
            prefix, ranges = head.split("[", 1)
            return prefix + ranges.rstrip("]").split("-")[0].split(",")[0]
        return head


def launch_environment(env=None) -> tuple[int, int, int]:
    """(rank, world_size, local_rank) from torchrun, else Slurm (exporting the rendezvous
    variables torch.distributed reads), else a single process."""
    env = os.environ if env is None else env
    if "RANK" in env and "WORLD_SIZE" in env:
        return int(env["RANK"]), int(env["WORLD_SIZE"]), int(env.get("LOCAL_RANK", 0))
    if "SLURM_PROCID" in env and int(env.get("SLURM_NTASKS", "1")) > 1:
        rank, world = int(env["SLURM_PROCID"]), int(env["SLURM_NTASKS"])
        env.setdefault("MASTER_ADDR", _first_slurm_host(env["SLURM_JOB_NODELIST"]))
        # A port derived from the job id: tasks of one job agree, jobs on one node differ.
        env.setdefault("MASTER_PORT", str(20000 + int(env.get("SLURM_JOB_ID", "0")) % 20000))
        env["RANK"], env["WORLD_SIZE"] = str(rank), str(world)
        env["LOCAL_RANK"] = env.get("SLURM_LOCALID", "0")
        return rank, world, int(env["LOCAL_RANK"])
    return 0, 1, 0


def init_distributed(device: str = "auto") -> DistInfo:
    rank, world, local_rank = launch_environment()
    use_cuda = torch.cuda.is_available() if device == "auto" else device == "cuda"
    if use_cuda and not torch.cuda.is_available():
        raise ValueError("trainer.device=cuda but no CUDA device is available; use trainer.device=cpu")
    if use_cuda:
        torch.cuda.set_device(local_rank % torch.cuda.device_count())
        dev = torch.device("cuda", torch.cuda.current_device())
    else:
        dev = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        dist.init_process_group(
            "nccl" if use_cuda else "gloo", rank=rank, world_size=world, timeout=datetime.timedelta(minutes=30)
        )
    return DistInfo(rank, world, local_rank, dev)


def rank_world() -> tuple[int, int]:
    """(rank, world size) of torch.distributed, (0, 1) when it is not initialised."""
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def gather_rows(tensor: torch.Tensor) -> torch.Tensor:
    """Every rank's rows, concatenated in rank order, on every rank. Ranks may hold different
    numbers of rows (their shares of the shards differ), even none: shapes are gathered first,
    each rank's block padded to the largest, as all_gather needs equal shapes; a rank without
    rows takes the row shape of the others (its empty placeholder need only have the same ndim)."""
    size = rank_world()[1]
    if size == 1:
        return tensor
    shape = torch.tensor(tensor.shape, device=tensor.device)
    shapes = [torch.zeros_like(shape) for _ in range(size)]
    dist.all_gather(shapes, shape)
    sizes = [s.tolist() for s in shapes]
    rows = [s[0] for s in sizes]
    trailing = next((s[1:] for s in sizes if s[0] > 0), sizes[0][1:])
    padded = tensor.new_zeros((max(rows), *trailing))
    padded[: tensor.shape[0]] = tensor
    blocks = [torch.empty_like(padded) for _ in rows]
    dist.all_gather(blocks, padded.contiguous())
    return torch.cat([block[:n] for block, n in zip(blocks, rows)])


def gather_lists(items: list) -> list:
    """Every rank's list items (keys, captions), concatenated in rank order, on every rank."""
    size = rank_world()[1]
    if size == 1:
        return list(items)
    out: list = [None] * size
    dist.all_gather_object(out, list(items))
    return [item for part in out for item in part]


def all_reduce_mean(value: float, info: DistInfo) -> float:
    if info.world_size == 1:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=info.device)
    dist.all_reduce(t)
    return t.item() / info.world_size


def any_rank(flag: bool, info: DistInfo) -> bool:
    """True on every rank when it is true on any: ranks must agree to stop at the same step."""
    if info.world_size == 1:
        return flag
    t = torch.tensor([int(flag)], device=info.device)
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return bool(t.item())


def barrier(info: DistInfo) -> None:
    if info.world_size > 1:
        dist.barrier()


def shutdown() -> None:
    if dist.is_initialized():
        dist.destroy_process_group()
