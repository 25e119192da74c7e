"""Builds pretrain_mm and its compiled ops `pretrain_mm._C` (C++, plus CUDA where it can).

    pip install torch==2.14.1 torchvision==0.29.1
    pip install --no-build-isolation -e '.[test]'

PRETRAIN_MM_CUDA=1 forces the CUDA build (and fails without a toolkit), =0 forces CPU only;
unset, CUDA is built when torch is a CUDA build and a CUDA toolkit (nvcc) is found.
TORCH_CUDA_ARCH_LIST picks the GPU architectures; with no GPU to ask, sm_80 and sm_90 (+PTX).
"""

import glob
import os
import shutil
import sys

from setuptools import find_packages, setup

ROOT = os.path.dirname(os.path.abspath(__file__))


def _find_cuda_home():
    """The toolkit behind `nvcc`, resolving wrapper scripts such as /usr/local/bin/nvcc."""
    if os.environ.get("CUDA_HOME"):
        return os.environ["CUDA_HOME"]
    candidates = sorted(glob.glob("/usr/local/cuda-*"), reverse=True) + ["/usr/local/cuda"]
    nvcc = shutil.which("nvcc")
    if nvcc and os.path.realpath(nvcc).endswith("/bin/nvcc"):
        candidates.insert(0, os.path.dirname(os.path.dirname(os.path.realpath(nvcc))))
    # A toolkit keeps its headers next to nvcc; /usr/local, behind a wrapper script
    # /usr/local/bin/nvcc, does not.
    return next(
        (
            c
            for c in candidates
            if os.path.exists(os.path.join(c, "bin", "nvcc"))
            and os.path.exists(os.path.join(c, "include", "cuda_runtime.h"))
        ),
        None,
    )


def _want_cuda(torch):
    forced = os.environ.get("PRETRAIN_MM_CUDA")
    found = torch.version.cuda is not None and _find_cuda_home() is not None
    if forced == "1" and not found:
        raise RuntimeError("PRETRAIN_MM_CUDA=1 but no CUDA toolkit (nvcc) or no CUDA build of torch was found")
    return found if forced is None else forced == "1"


def _sources():
    """csrc/sources.txt, the one list of the ops' sources (CMakeLists.txt reads it too)."""
    with open(os.path.join(ROOT, "csrc", "sources.txt")) as f:
        lines = (line.split("#", 1)[0].strip() for line in f)
        return [line for line in lines if line]


def _extension():
    import torch
    from torch.utils import cpp_extension

    # In any order: no AVX2/AVX-512 object (csrc/cpu/simd/) defines a function that the linker
    # could take for a portable caller (csrc/cpu/panel_kernels_headers.h says how).
    sources = _sources()
    cpu_sources = [s for s in sources if not s.endswith(".cu")] + ["csrc/module.cpp"]
    cuda_sources = [s for s in sources if s.endswith(".cu")]
    # No FMA contraction: a logit is s * p rounded to the compute dtype wherever it is formed.
    # Contracted, the backward's exp(s * p - lse) took the unrounded product, so a saturated
    # loss (lse = that logit) got a gradient of one ulp of the logit instead of zero.
    cxx = ["-O3", "-fvisibility=hidden", "-ffp-contract=off"]
    link = []
    # at::parallel_for is an inline template over OpenMP: without -fopenmp the CPU kernels'
    # and GEMM tiles' parallel loops would compile to serial ones. The OpenMP runtime is the
    # one torch loaded (the same libgomp.so.1), so torch.set_num_threads governs them.
    if sys.platform.startswith("linux") and "parallel backend: OpenMP" in torch.__config__.parallel_info():
        cxx.append("-fopenmp")
        link.append("-fopenmp")
    if not _want_cuda(torch):
        return cpp_extension.CppExtension(
            "pretrain_mm._C", cpu_sources, extra_compile_args={"cxx": cxx}, extra_link_args=link
        )

    os.environ["CUDA_HOME"] = _find_cuda_home()
    cpp_extension.CUDA_HOME = os.environ["CUDA_HOME"]
    os.environ.setdefault("TORCH_CUDA_ARCH_LIST", "8.0;9.0+PTX")  # PTX: newer GPUs JIT it
    # cuBLAS/cuSPARSE headers of torch's CUDA 13 wheels live in nvidia/cu13/include.
    include_dirs = glob.glob(os.path.join(os.path.dirname(torch.__file__), "..", "nvidia", "cu*", "include"))
    nvcc = ["-O3", "-lineinfo", "-Xptxas=-v", "--expt-relaxed-constexpr", "--fmad=false"]  # as -ffp-contract=off
    return cpp_extension.CUDAExtension(
        "pretrain_mm._C",
        cpu_sources + cuda_sources,
        include_dirs=[os.path.abspath(d) for d in include_dirs],
        define_macros=[("PRETRAIN_MM_WITH_CUDA", None)],
        extra_compile_args={"cxx": cxx, "nvcc": nvcc},
        extra_link_args=link,
    )


def _build_ext():
    from torch.utils.cpp_extension import BuildExtension

    return BuildExtension.with_options(use_ninja=True)


setup(
    name="pretrain_mm",
    version="0.1.0",
    description="Distributed multimodal pretraining (CLIP, ViT-MAE) with a fused contrastive loss",
    python_requires=">=3.10",
    # conf/ (the Hydra configs) installs as pretrain_mm.conf, so a wheel finds them too.
    packages=find_packages(include=["pretrain_mm", "pretrain_mm.*"]) + ["pretrain_mm.conf"],
    package_dir={"pretrain_mm.conf": "conf"},
    package_data={"pretrain_mm.conf": ["*.yaml", "*/*.yaml"]},
    ext_modules=[_extension()],
    cmdclass={"build_ext": _build_ext()},
    install_requires=[
        "torch==2.14.1",
        "torchvision==0.29.1",
        "numpy",
        "pillow",
        "webdataset==1.0.2",
        "braceexpand",
        "tokenizers>=0.20",
        "open_clip_torch>=3.3,<4",  # data.tokenizer=clip reads its BPE file; pretrain_mm never imports it
        "ftfy>=6",  # CLIP's text cleaning
        "regex",  # CLIP's word split, as open_clip makes it
        "scikit-learn",
        "tqdm",
        "hydra-core>=1.3,<1.4",
        "submitit>=1.5",
        "hydra-submitit-launcher>=1.2",
        "torchmetrics>=1.4",
        "matplotlib",
        "tensorboard",
    ],
    # test: the suite (it compares with open_clip) and the gates that run before it (.ci/gates), pinned so that
    # a new release of a linter cannot fail a change that did not touch what it checks.
    extras_require={
        "test": [
            "pytest>=8",
            "expecttest",
            "open_clip_torch>=3.3,<4",
            "ruff==0.17.6",
            "mypy==2.4.1",
            "pylint==4.1.4",
            "clang-format==23.1.5",
        ]
    },
)
