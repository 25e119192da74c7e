"""The CUDA panel kernels build cleanly, without a GPU.

csrc/cuda/panel_kernels.cu compiles standalone (no torch headers) to cubins for sm_80 and sm_90,
and ptxas reports every kernel's registers with no spills and no stack frame. Skipped only
where nvcc is missing.

That the same kernels, translated to C++ and run on a CPU emulation of CUDA, compute what the CPU
panel kernels compute is ctest's `panel_kernels_emulated` (csrc/tests/test_panel_kernels_emulated.cpp),
which `.ci/gates cpp` builds and runs in the README's test command: once, not again here.
"""

import concurrent.futures
import glob
import os
import re
import shutil
import subprocess

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__))))
SOURCE = os.path.join(ROOT, "csrc", "cuda", "panel_kernels.cu")
ARCHS = ("sm_80", "sm_90")
# The kernel templates and the value types each must exist for (Itanium mangling: If / Id).
KERNELS = ("softmax_forward_kernel", "softmax_backward_kernel", "sigmoid_forward_kernel", "sigmoid_backward_kernel")


def find_nvcc():
    """nvcc of the toolkit setup.py would use: $CUDA_HOME, the toolkit behind `nvcc` on PATH
    (resolving wrapper scripts), else the newest /usr/local/cuda-*."""
    homes = []
    if os.environ.get("CUDA_HOME"):
        homes.append(os.environ["CUDA_HOME"])
    on_path = shutil.which("nvcc")
    if on_path and os.path.realpath(on_path).endswith("/bin/nvcc"):
        homes.append(os.path.dirname(os.path.dirname(os.path.realpath(on_path))))
    homes += sorted(glob.glob("/usr/local/cuda-*"), reverse=True) + ["/usr/local/cuda"]
    for home in homes:
        nvcc = os.path.join(home, "bin", "nvcc")
        if os.path.exists(nvcc):
            return nvcc
    return on_path


def compile_cubin(nvcc, arch, out_dir):
    # The flags setup.py gives nvcc (torch adds -std=c++20), warnings as errors.
    cmd = [
        nvcc,
        "-cubin",
        f"-arch={arch}",
        "-std=c++20",
        "-O3",
        "-lineinfo",
        "--expt-relaxed-constexpr",
        "-Xptxas",
        "-v",
        "-Werror",
        "all-warnings",
        "-o",
        os.path.join(out_dir, f"panel_kernels_{arch}.cubin"),
        SOURCE,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True, timeout=600)
    return arch, proc.returncode, proc.stdout + proc.stderr


def parse_ptxas(log):
    """{kernel: {"registers": int, "spill_stores": int, "spill_loads": int, "stack": int}} from
    `ptxas -v`. CUDA 13 may leave out the spill line when there is nothing to report."""
    kernels, current = {}, None
    for line in log.splitlines():
        m = re.search(r"Compiling entry function '([^']+)'", line)
        if m:
            current = kernels.setdefault(m.group(1), {})
            continue
        if current is None:
            continue
        m = re.search(r"(\d+) bytes stack frame", line)
        if m:
            current["stack"] = int(m.group(1))
        m = re.search(r"(\d+) bytes spill stores, (\d+) bytes spill loads", line)
        if m:
            current["spill_stores"], current["spill_loads"] = int(m.group(1)), int(m.group(2))
        m = re.search(r"Used (\d+) registers", line)
        if m:
            current["registers"] = int(m.group(1))
    return kernels


@pytest.fixture(scope="module")
def ptxas_logs(tmp_path_factory):
    nvcc = find_nvcc()
    if nvcc is None:
        pytest.skip("no nvcc: cannot compile the CUDA kernels")
    out = tmp_path_factory.mktemp("cubin")
    with concurrent.futures.ThreadPoolExecutor(len(ARCHS)) as pool:
        results = list(pool.map(lambda a: compile_cubin(nvcc, a, str(out)), ARCHS))
    return {arch: (rc, log) for arch, rc, log in results}


@pytest.mark.parametrize("arch", ARCHS)
def test_compiles_without_spills(ptxas_logs, arch):
    rc, log = ptxas_logs[arch]
    assert rc == 0, f"nvcc failed for {arch}:\n{log}"
    kernels = parse_ptxas(log)
    names = " ".join(kernels)
    for kernel in KERNELS:
        for dtype in ("If", "Id"):  # float and double instantiations
            assert re.search(kernel + dtype, names), f"{kernel} for {dtype} missing from ptxas output:\n{log}"
    report = []
    for name, info in kernels.items():
        assert "registers" in info, f"no register count reported for {name}:\n{log}"
        assert info.get("spill_stores", 0) == 0 and info.get("spill_loads", 0) == 0, f"{name} spills on {arch}: {info}"
        assert info.get("stack", 0) == 0, f"{name} uses a stack frame on {arch}: {info}"
        report.append(f"{info['registers']:4d} regs  {name}")
    print(f"\n{arch}:\n" + "\n".join(sorted(report)))
