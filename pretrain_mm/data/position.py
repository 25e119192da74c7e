"""Where a Loader stands in its stream, as a checkpointable state: a resumed run continues an epoch exactly."""

from __future__ import annotations

import warnings
from collections import Counter
from collections.abc import Mapping
from typing import Any


class EpochProgress:
    """What the caller has received of one epoch: per worker (its id within this rank), the batches
    it delivered and the raw samples (after the sample shuffle, before decoding) behind them; and
    the worker whose batch comes next.

    Why per worker: each worker's stream is reproducible on its own (seeded by epoch, rank and
    worker), so replaying it, dropping its first `samples` raw samples undecoded and counting its
    batches on from `batches`, puts it exactly where it was. The DataLoader takes batches from its
    workers round-robin (worker i % W while none has ended), so the order across workers follows
    from `next_worker`: a resumed epoch starts its round-robin there."""

    def __init__(self, epoch: int, workers: Mapping[int, tuple[int, int]] | None = None, next_worker: int = 0):
        self.epoch, self.next_worker = int(epoch), int(next_worker)
        self.workers: dict[int, tuple[int, int]] = dict(workers or {})

    def record(self, position, num_workers: int) -> None:
        """A batch (or a counts-only item) tagged (worker, batches, samples) reached the caller."""
        worker, batches, samples = (int(v) for v in position)
        self.workers[worker] = (batches, samples)
        self.next_worker = (worker + 1) % num_workers

    @property
    def batches(self) -> int:
        return sum(b for b, _ in self.workers.values())

    def complete(self, num_batches: int | None) -> bool:
        """Known to be over: every batch of a fixed-length (resampled) epoch was delivered. A finite
        epoch is only known to be over when its iteration ends."""
        return num_batches is not None and self.batches >= num_batches

    def state(self, layout: Mapping[str, int | None]) -> dict[str, Any]:
        return {
            "epoch": self.epoch,
            "positions": {w: {"batches": b, "samples": s} for w, (b, s) in sorted(self.workers.items())},
            "next_worker": self.next_worker,
            "layout": dict(layout),
        }


def parse_state(
    state: Mapping, layout: Mapping[str, int | None], num_batches: int | None
) -> tuple[int, EpochProgress | None]:
    """A Loader state -> (the epoch to start, or the EpochProgress to continue). Accepts the old
    {"epoch", "skipped"} form (start of that epoch) and JSON round trips (string keys, lists).
    A state saved under another layout (rank, world size, workers, batch size) cannot be replayed:
    its epoch is skipped, with a warning, as a resumed run did before positions were saved."""
    if not isinstance(state, Mapping) or "epoch" not in state:
        raise ValueError(f"a Loader state is a dict with an 'epoch' (from Loader.state_dict()), got {state!r:.200}")
    epoch = _count(state["epoch"], "epoch")
    positions = state.get("positions") or {}
    if not positions:
        return epoch, None
    saved = dict(state.get("layout") or {})
    if saved != dict(layout):
        warnings.warn(
            f"the data position was saved with {saved}, this loader has {dict(layout)}: it cannot be "
            f"replayed, so the rest of epoch {epoch} is skipped and epoch {epoch + 1} starts",
            stacklevel=3,
        )
        return epoch + 1, None
    num_workers = _workers(layout)
    workers = {}
    for key, value in positions.items():
        worker = _count(key, "positions worker")
        if worker >= num_workers:
            raise ValueError(f"the data position names worker {worker}, but the loader has {layout['workers']}")
        if isinstance(value, Mapping):
            value = (value.get("batches"), value.get("samples"))
        if not isinstance(value, (list, tuple)) or len(value) != 2:
            raise ValueError(f"positions[{key!r}] must be {{'batches': int, 'samples': int}}, got {value!r}")
        workers[worker] = (_count(value[0], "batches"), _count(value[1], "samples"))
    next_worker = _count(state.get("next_worker", 0), "next_worker")
    progress = EpochProgress(epoch, workers, next_worker % num_workers)
    if progress.complete(num_batches):
        return epoch + 1, None
    return epoch, progress


def _workers(layout: Mapping[str, int | None]) -> int:
    """The loader's worker count, which its layout always holds (the batch size may be unknown: None)."""
    workers = layout["workers"]
    assert workers is not None
    return workers


def _count(value, what: str) -> int:
    try:
        number = int(value)
    except (TypeError, ValueError):
        number = -1
    if number < 0 or (isinstance(value, float) and not value.is_integer()):
        raise ValueError(f"{what} in a Loader state must be a count >= 0, got {value!r}")
    return number


class Resumable:
    """The epoch, position and skip-count bookkeeping of a Loader (see its docstring for the
    state): `epoch` is the next epoch to start; an iteration calls begin_epoch(), deliver() on
    each item from the DataLoader, in order, and end_epoch() when the DataLoader is exhausted."""

    def __init__(self, layout: Mapping[str, int | None], num_batches: int | None):
        self.layout, self.num_batches, self.epoch = dict(layout), num_batches, 0
        self._skipped: Counter = Counter()
        self._progress: EpochProgress | None = None  # the epoch being iterated, until it ends
        self._resume: EpochProgress | None = None  # loaded: continued by the next iteration

    @property
    def skipped(self) -> dict[str, int]:
        return dict(self._skipped)

    def set_epoch(self, epoch: int) -> None:
        """The next iteration starts epoch `epoch` from its beginning (a loaded position is dropped)."""
        self.epoch, self._progress, self._resume = int(epoch), None, None

    def state_dict(self) -> dict:
        progress = self._resume or self._progress
        if progress is None or progress.complete(self.num_batches):
            progress = EpochProgress(self.epoch)  # begin_epoch() advanced self.epoch past the one delivered
        return {**progress.state(self.layout), "skipped": dict(self._skipped)}

    def load_state_dict(self, state: Mapping) -> None:
        epoch, progress = parse_state(state, self.layout, self.num_batches)
        self.set_epoch(epoch)
        self._resume = progress
        self._skipped = Counter(state.get("skipped") or {})

    def begin_epoch(self) -> EpochProgress:
        progress = self._resume or EpochProgress(self.epoch)
        self._resume, self._progress, self.epoch = None, progress, progress.epoch + 1
        return progress

    def deliver(self, progress: EpochProgress, item: dict) -> dict[str, int]:
        """Take the bookkeeping keys off an item about to reach the caller; returns its skip counts."""
        counts = item.pop("_skipped", None) or {}
        self._skipped.update(counts)
        progress.record(item.pop("_position"), _workers(self.layout))
        return counts

    def end_epoch(self, progress: EpochProgress) -> None:
        if self._progress is progress:  # over: the state now names the next epoch
            self._progress = None
