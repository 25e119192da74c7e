#!/usr/bin/env bash
# CI gates of the C++ side (issue #14), CPU only, no GPU and no CUDA toolkit needed:
#
#   .ci/cpp_gates.sh [BUILD_DIR]
#
#   (a) format: clang-format --dry-run --Werror on every csrc/ source (.clang-format's style);
#   (b) build: CMake configure + build of the ops library and its C++ tests into BUILD_DIR
#       (default: a fresh temporary directory, removed afterwards), JOBS=2 parallel jobs;
#   (c) test: ctest, which runs
#       - cpp_tests: numerics.h against long-double references, the ops through the dispatcher;
#       - panel_kernels_emulated: the CUDA kernels on a CPU emulation against the CPU kernels;
#       - simd_symbols (d): no AVX2/AVX-512-compiled copy of a function shared with portable
#         code is in the SIMD objects, built at -O3 and at -O0 (csrc/tests/check_simd_symbols.py).
#
# Needs cmake >= 3.25, a C++20 compiler, binutils, the Python with torch installed (or
# -DPython3_EXECUTABLE=... in CMAKE_ARGS) and clang-format 23 (pip install clang-format==23.1.5;
# other major versions format differently). Extra CMake arguments: CMAKE_ARGS="-D...".
set -euo pipefail
cd "$(dirname "$0")/.."

CLANG_FORMAT=${CLANG_FORMAT:-clang-format}
CLANG_FORMAT_MAJOR=23
JOBS=${JOBS:-2}

step() { echo; echo "== $* ($(date +%T))"; }
SECONDS=0

step "(a) clang-format --dry-run --Werror csrc/"
version=$("$CLANG_FORMAT" --version)
echo "$version"
if [[ ! $version =~ version\ $CLANG_FORMAT_MAJOR\. ]]; then
    echo "cpp_gates: clang-format $CLANG_FORMAT_MAJOR.x expected (pip install clang-format==23.1.5)" >&2
    exit 1
fi
mapfile -t sources < <(git ls-files --cached --others --exclude-standard -- 'csrc/*.h' 'csrc/*.cpp' 'csrc/*.cu' 'csrc/*.cuh')
"$CLANG_FORMAT" --dry-run --Werror "${sources[@]}"
echo "${#sources[@]} files formatted"

if [[ $# -ge 1 ]]; then
    build=$1
else
    build=$(mktemp -d "${TMPDIR:-/tmp}/pretrain_mm-cpp-gates.XXXXXX")
    trap 'rm -rf "$build"' EXIT
fi
generator=()
if [[ ! -f $build/CMakeCache.txt ]] && command -v ninja >/dev/null; then generator=(-G Ninja); fi

step "(b) cmake configure + build in $build (-j $JOBS)"
# shellcheck disable=SC2086  # CMAKE_ARGS is a list of words on purpose
cmake -S . -B "$build" "${generator[@]}" -DCMAKE_BUILD_TYPE=Release ${CMAKE_ARGS:-}
cmake --build "$build" -j "$JOBS"

step "(c, d) ctest"
ctest --test-dir "$build" --output-on-failure

echo
echo "cpp_gates: all passed in ${SECONDS}s"
