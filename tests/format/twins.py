"""What the tests of the C hot path and its pure-Python twins share."""

from __future__ import annotations

import os

import pytest

from rafs.chunkmap import C_API

try:
    from rafs import _speedups
except ImportError:  # the optional build failed
    _speedups = None
if getattr(_speedups, "API", None) != C_API:  # a build from older sources: other signatures
    _speedups = None

need_c = pytest.mark.skipif(_speedups is None, reason="rafs._speedups was not built (no compiler?) "
                            f"or is a stale build (API is not {C_API}: run `make setup`)")


def both(twin) -> list:
    """Parameters for a test to run on the pure-Python twin module and on the C module."""
    return [pytest.param(twin, id="python"), pytest.param(_speedups, id="c", marks=need_c)]


def outcome(fn, *args):
    """The result, or the exception's type and message: what both twins must agree on."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - comparing whatever happens
        return ("error", type(e).__name__, str(e))


def examples(n: int) -> int:
    """max_examples of a property test: n, scaled by PYNYDUSD_EXAMPLES_SCALE (tools/sanitize.sh
    runs fewer, each being slow under the sanitizers)."""
    return max(20, int(n * float(os.environ.get("PYNYDUSD_EXAMPLES_SCALE", "1"))))
