"""What /proc/cpuinfo says this CPU has, read here and not through the package: the tests of the
multiplication paths and of trainer.precision=auto check the package's own reading against it."""


def cpu_flags() -> set:
    try:
        with open("/proc/cpuinfo") as f:
            return set(f.read().split())
    except OSError:
        return set()


FLAGS = cpu_flags()
NATIVE_BF16 = tuple(name for name in ("avx512_bf16", "amx_bf16") if name in FLAGS)
