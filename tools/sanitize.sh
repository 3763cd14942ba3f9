#!/usr/bin/env bash
# The C hot path under AddressSanitizer and UndefinedBehaviorSanitizer (`make sanitize`).
#
# Copies the tree to .sanitize/tree, builds rafs._speedups there with -fsanitize=address,undefined,
# and runs the tests that drive the C functions hardest (the C-vs-Python property tests with random
# and malformed tables, and the hostile-image tests) with the sanitizer runtimes preloaded into
# Python. An out-of-bounds access, a use after free or undefined behaviour in the C code aborts the
# run. Extra arguments go to pytest.
set -euo pipefail
root="$(cd "$(dirname "$0")/.." && pwd)"
py="$root/.venv/bin/python"
work="$root/.sanitize"
tree="$work/tree"

rm -rf "$work"
mkdir -p "$tree"
tar -C "$root" --exclude=./.git --exclude=./.venv --exclude=./.sanitize --exclude=./build \
    --exclude=./dist --exclude=./mnt --exclude=./.run --exclude=./.fuzz --exclude=./fixtures/build \
    --exclude='*.so' --exclude=__pycache__ -cf - . | tar -C "$tree" -xf -
# the real upstream images: tests look for them beside the tree, as ../shared
if [ -d "$root/../shared" ]; then
    ln -s "$(cd "$root/../shared" && pwd)" "$work/shared"
else
    echo "sanitize: NOTE ../shared is absent: the hostile-image tests on real upstream images are skipped" >&2
fi

# -fno-wrapv: Python's own flags carry -fwrapv, under which UBSan does not check signed overflow
flags="-fsanitize=address,undefined -fno-sanitize-recover=all -fno-wrapv -fno-omit-frame-pointer -g"
(cd "$tree" && CFLAGS="$flags" LDFLAGS="-fsanitize=address,undefined" \
    "$py" setup.py -q build_ext --inplace >/dev/null)

asan="$(gcc -print-file-name=libasan.so)" ubsan="$(gcc -print-file-name=libubsan.so)"
for lib in "$asan" "$ubsan"; do
    [ -f "$lib" ] || { echo "sanitize: gcc has no $lib (Debian: libasan8, libubsan1)" >&2; exit 1; }
done
export LD_PRELOAD="$asan $ubsan"
export ASAN_OPTIONS=detect_leaks=0:abort_on_error=1 UBSAN_OPTIONS=print_stacktrace=1:halt_on_error=1
export PYTHONPATH="$tree" PYTHONDONTWRITEBYTECODE=1 PYTHONMALLOC=malloc  # every object on the checked heap
export PYNYDUSD_EXAMPLES_SCALE="${PYNYDUSD_EXAMPLES_SCALE:-0.25}"  # a quarter of the examples: each is slow here
unset PYNYDUSD_PUREPYTHON
cd "$tree"
"$py" - <<'PY'
import os, sys
import rafs._speedups as s, rafs.chunkmap as c
if c.IMPLEMENTATION != "c" or not os.path.realpath(s.__file__).startswith(os.path.realpath(".")):
    sys.exit(f"not testing the sanitized build: {c.IMPLEMENTATION} from {s.__file__}")
if "asan" not in open("/proc/self/maps").read():
    sys.exit("the AddressSanitizer runtime is not loaded")
print("sanitized C hot path:", s.__file__)
PY
"$py" -m pytest -q -p no:cacheprovider tests/format/test_chunkmap.py tests/format/test_dirsearch.py \
    tests/format/test_hostile.py "$@"
