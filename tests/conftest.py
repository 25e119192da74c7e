"""Shared by tests/unit and tests/integration: the report header (the CPU, the ways the fused loss
multiplies, auto's precision), fixtures, and a `unit` / `integration` marker from each test's folder
(so `pytest -m "not integration"` works from the repository root too)."""

from pathlib import Path

import pytest
import torch

TESTS = Path(__file__).resolve().parent


def pytest_report_header(config):
    from pretrain_mm.ops import _extension
    from pretrain_mm.precision import resolve_precision

    precision = resolve_precision("auto", torch.device("cpu"))
    return [
        f"cpu: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
        f"pretrain_mm build: {_extension.BUILD_INFO}",
        f"trainer.precision=auto on this CPU: {precision.name} ({precision.reason})",
    ]


def pytest_collection_modifyitems(config, items):
    for item in items:
        parts = Path(item.path).resolve().parts
        if parts[: len(TESTS.parts)] == TESTS.parts and len(parts) > len(TESTS.parts) + 1:
            folder = parts[len(TESTS.parts)]
            if folder in ("unit", "integration"):
                item.add_marker(folder)


@pytest.fixture(scope="module")
def one_thread():
    """For a module of tiny models (`pytestmark = pytest.mark.usefixtures("one_thread")`): one thread
    is as fast and leaves the other cores alone."""
    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    yield
    torch.set_num_threads(threads)
