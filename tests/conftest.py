"""Shared test fixtures: where the real upstream images are, and skip rules."""

from __future__ import annotations

import os
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
SHARED_FIXTURES = ROOT.parent / "shared" / "fixtures" / "nydus"


@pytest.fixture(scope="session")
def nydus_fixtures() -> Path:
    """The real images written by upstream nydus-image (../shared/fixtures/nydus)."""
    if not SHARED_FIXTURES.is_dir():
        pytest.skip(f"real nydus images not found at {SHARED_FIXTURES} (../shared is absent)")
    return SHARED_FIXTURES


@pytest.fixture(scope="session")
def sample_v6(tmp_path_factory) -> tuple[Path, Path]:
    """(image dir with bootstrap and blobs/, source dir): the sample tree as RAFS v6."""
    from tests.treeutil import build_image, make_source

    tmp = tmp_path_factory.mktemp("sample-v6")
    src = make_source(tmp)
    build_image(src, tmp)
    return tmp, src


def need_root(reason: str = "needs root") -> None:
    if os.geteuid() != 0:
        pytest.skip(reason)


# Property tests are reproducible in `make test` (a CI run never turns red by chance);
# PYNYDUSD_FUZZ=random explores new examples on every run.
from hypothesis import settings as _hsettings  # noqa: E402

_hsettings.register_profile("reproducible", derandomize=True, database=None)
_hsettings.register_profile("random", derandomize=False, database=None)
_hsettings.load_profile("random" if os.environ.get("PYNYDUSD_FUZZ") == "random" else "reproducible")
