"""Turns a CUDA source into C++ that runs on the CPU emulation of cuda_emulation.h.

    python emulate_cuda.py IN.cu OUT.cpp [--rename FROM TO] [--set NAME=VALUE ...]

- drops `#include <cuda_runtime.h>` and includes cuda_emulation.h first;
- inlines the CUDA headers (`#include "x.cuh"`) beside the source, so that what they
  hold is translated too;
- rewrites quoted includes to absolute paths (the output lives in a build directory);
- rewrites `kernel<...><<<grid, block, smem, stream>>>(args);` to
  `::emu::launch(::emu::Config{grid, block, smem, stream}, kernel<...>, args);`;
- optionally renames a namespace (so the emulated entry points cannot collide with the real
  CUDA ones when the library under test was built with CUDA);
- optionally gives `constexpr` constants other values (--set kMaxPartBlocks=3 makes grids
  small enough that every grid-stride loop takes several turns).

Fails loudly if no launch was found, so a change of launch style cannot silently test nothing.
"""

import argparse
import os
import re

LAUNCH = re.compile(
    r"(?P<kernel>[A-Za-z_][\w:]*(?:<[^;{}<>]*(?:<[^;{}<>]*>[^;{}<>]*)*>)?)\s*"
    r"<<<(?P<cfg>.*?)>>>\s*\((?P<args>.*?)\);",
    re.DOTALL,
)


def inline_cuda_headers(text, src_path):
    """Each `#include "x.cuh"` replaced by x.cuh, with #line markers keeping diagnostics true."""
    src_dir = os.path.dirname(os.path.abspath(src_path))

    def inline(m):
        header = os.path.join(src_dir, m.group(1))
        with open(header) as f:
            body = re.sub(r"^\s*#\s*pragma\s+once\s*$", "", f.read(), flags=re.M)
        next_line = text.count("\n", 0, m.end()) + 2
        return '#line 1 "%s"\n%s\n#line %d "%s"' % (header, body, next_line, os.path.abspath(src_path))

    return re.sub(r'^[ \t]*#\s*include\s*"([^"]+\.cuh)"[ \t]*$', inline, text, flags=re.M)


def convert(text, src_path, emulation_header, rename=None, constants=()):
    src_dir = os.path.dirname(os.path.abspath(src_path))
    text = inline_cuda_headers(text, src_path)
    text = re.sub(r"^\s*#\s*include\s*<cuda_runtime(_api)?\.h>\s*$", "", text, flags=re.M)

    def absolute_include(m):
        return '#include "%s"' % os.path.abspath(os.path.join(src_dir, m.group(1)))

    text = re.sub(r'^\s*#\s*include\s*"([^"]+)"', absolute_include, text, flags=re.M)
    text, launches = LAUNCH.subn(
        lambda m: "::emu::launch(::emu::Config{%s}, %s, %s);" % (m.group("cfg"), m.group("kernel"), m.group("args")),
        text,
    )
    if launches == 0 or "<<<" in text:
        raise SystemExit("emulate_cuda.py: could not rewrite the kernel launches")
    if rename:
        text = text.replace("namespace %s {" % rename[0], "namespace %s {" % rename[1])
        text = text.replace("}  // namespace %s" % rename[0], "}  // namespace %s" % rename[1])
    for name, value in constants:
        text, found = re.subn(
            r"(constexpr\s+[\w:<>]+\s+%s\s*=\s*)[^;]+;" % re.escape(name), lambda m: m.group(1) + value + ";", text
        )
        if found != 1:
            raise SystemExit("emulate_cuda.py: no single constexpr %s to set" % name)
    prologue = '#include "%s"\n#line 1 "%s"\n' % (os.path.abspath(emulation_header), os.path.abspath(src_path))
    return prologue + text, launches


def main():
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("source")
    parser.add_argument("output")
    parser.add_argument("--rename", nargs=2, metavar=("FROM", "TO"))
    parser.add_argument("--set", action="append", default=[], metavar="NAME=VALUE")
    args = parser.parse_args()
    header = os.path.join(os.path.dirname(os.path.abspath(__file__)), "cuda_emulation.h")
    with open(args.source) as f:
        text, _ = convert(
            f.read(), args.source, header, rename=args.rename, constants=[kv.split("=", 1) for kv in args.set]
        )
    with open(args.output + ".tmp", "w") as f:
        f.write(text)
    os.replace(args.output + ".tmp", args.output)


if __name__ == "__main__":
    main()
