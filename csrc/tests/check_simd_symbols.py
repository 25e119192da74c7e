"""Checks that no SIMD-compiled copy of a shared inline function can be linked in.

    python check_simd_symbols.py SIMD_OBJECT... [--portable OBJECT...]

An inline function (or template instance) is emitted, weak, into every object that does not
inline it, and the linker keeps one copy for every caller. A SIMD object (csrc/cpu/simd/) is
compiled for AVX2 or AVX-512; if one of its copies of a function that portable code also calls
were kept, a processor without that extension would crash in portable code. So each weak
function a SIMD object defines must either have a name that only its own capability's code can
define (one naming the namespace AVX2 or AVX512: pretrain_mm::cpu::AVX2, at::vec::AVX2, ...,
which only sources compiled for that capability use), or contain no instruction beyond
baseline x86-64. See csrc/cpu/panel_kernels_headers.h for how the sources ensure it.

With --portable, also lists the weak functions a SIMD object shares with a portable object (for
information: after the rule above, each of them is baseline code in both). Needs nm, objdump
and c++filt (binutils). Exits 1 on a violation, printing it.
"""

import argparse
import re
import subprocess
import sys

# A name only code compiled for one SIMD capability can define.
CAPABILITY_NAMESPACE = re.compile(r"\bAVX(2|512)::")
# Instructions beyond baseline x86-64 (SSE2): every VEX/EVEX encoding (AT&T mnemonics v...),
# AVX-512 mask instructions, BMI1/2, LZCNT, POPCNT, MOVBE, F16C; and the wide registers.
# (tzcnt is left out: GCC emits `rep bsf` for baseline code, which objdump shows as tzcnt.)
NON_BASELINE_MNEMONIC = re.compile(
    r"^(v\w+|k(mov|or|and|andn|xor|xnor|not|test|shift\w*|unpck\w*|add)[bwdq]|andn|bextr|blsi|blsmsk|blsr|bzhi|"
    r"mulx|pdep|pext|rorx|sarx|shlx|shrx|lzcnt|popcnt|movbe)$"
)
WIDE_REGISTER = re.compile(r"%(ymm|zmm)\d+|%k[0-7]\b")


def weak_functions(obj):
    """Mangled names of the weak functions (nm type W) that obj defines."""
    out = subprocess.run(["nm", "--defined-only", "-P", obj], check=True, capture_output=True, text=True).stdout
    return {f[0] for f in (line.split() for line in out.splitlines()) if len(f) >= 2 and f[1] == "W"}


def demangle(names):
    names = sorted(names)
    if not names:
        return {}
    out = subprocess.run(["c++filt"], input="\n".join(names), check=True, capture_output=True, text=True).stdout
    return dict(zip(names, out.splitlines()))


def non_baseline_instructions(obj):
    """{function: first non-baseline instruction} over obj's disassembly."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj], check=True, capture_output=True, text=True)
    found, fn = {}, None
    for line in out.stdout.splitlines():
        m = re.match(r"^[0-9a-f]+ <(.+)>:$", line)
        if m:
            fn = m.group(1)
            continue
        parts = line.split("\t")
        if fn is None or len(parts) < 2 or fn in found:
            continue
        insn = parts[-1].strip()
        words = insn.split()
        # Skip prefixes (rep, lock, notrack, ...), as objdump prints them before the mnemonic.
        while len(words) > 1 and words[0] in (
            "rep",
            "repz",
            "repnz",
            "repe",
            "repne",
            "lock",
            "notrack",
            "bnd",
            "data16",
        ):
            words = words[1:]
        if words and (NON_BASELINE_MNEMONIC.match(words[0]) or WIDE_REGISTER.search(insn)):
            found[fn] = insn
    return found


def main():
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("simd", nargs="+", help="objects compiled for a SIMD target (csrc/cpu/simd/*)")
    ap.add_argument("--portable", nargs="*", default=[], help="the other objects of the same library")
    args = ap.parse_args()

    portable = set()
    for obj in args.portable:
        portable |= weak_functions(obj)
    failures = 0
    for obj in args.simd:
        weak = weak_functions(obj)
        names = demangle(weak)
        candidates = [w for w in sorted(weak) if not CAPABILITY_NAMESPACE.search(names[w])]
        bad = non_baseline_instructions(obj) if candidates else {}
        offending = [w for w in candidates if w in bad]
        shared = sorted(weak & portable)
        print(
            f"{obj}: {len(weak)} weak functions, {len(candidates)} outside an AVX2/AVX512 namespace, "
            f"{len(offending)} of those with non-baseline instructions"
            + (f"; {len(shared)} also in a portable object" if args.portable else "")
        )
        for w in offending:
            print(f"  FAIL {names[w]}\n       {bad[w]}")
        failures += len(offending)
    if failures:
        print(
            f"{failures} weak function(s) compiled for a SIMD target could replace a portable copy at link time; "
            "see csrc/cpu/panel_kernels_headers.h",
            file=sys.stderr,
        )
        return 1
    return 0


if __name__ == "__main__":
    sys.exit(main())
