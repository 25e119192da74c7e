"""pytest's header names the machine the suite ran on: the CPU, the ways the fused loss multiplies, auto's precision."""

import torch


def pytest_report_header(config):
    from pretrain_mm.ops import _extension
    from pretrain_mm.precision import resolve_precision

    precision = resolve_precision("auto", torch.device("cpu"))
    return [f"cpu: {torch.backends.cpu.get_cpu_capability()}, {torch.get_num_threads()} threads; "
            f"pretrain_mm build: {_extension.BUILD_INFO}",
            f"trainer.precision=auto on this CPU: {precision.name} ({precision.reason})"]
