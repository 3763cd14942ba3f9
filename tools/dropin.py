"""Build `dist/nydusd`: one executable file that replaces the Rust nydusd on a node.

The file is a Python zip application (`#!/usr/bin/python3 -sE`) carrying pynydusd and every
library it needs (pyfuse3 compiled against the node's libfuse3 and Python 3.11, trio, zstandard,
lz4, requests, cachetools, blake3). Compiled modules cannot be imported from a zip, so on its first
run it unpacks itself once, atomically (temporary directory + rename), into
`/var/cache/pynydusd/dropin-<build id>/` (or `~/.cache/...` when not root) and runs from there.
A node needs Debian's python3 (3.11) and the fuse3 package; nothing is fetched at run time.
"""

from __future__ import annotations

import argparse
import hashlib
import io
import os
import sys
import sysconfig
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"pip", "setuptools", "_distutils_hack", "pkg_resources", "wheel", "pytest", "_pytest",
        "hypothesis", "ruff", "pluggy", "iniconfig", "packaging", "pygments", "pytest_timeout",
        "py", "_hypothesis_pytestplugin", "_hypothesis_ftz_detector", "_hypothesis_globals",
        "__editable__", "__pycache__", "distutils-precedence.pth"}

BOOT = r'''
import os, sys, zipfile, shutil, tempfile
BUILD_ID = %(build_id)r
def _target():
    base = "/var/cache/pynydusd" if os.geteuid() == 0 else os.path.expanduser("~/.cache/pynydusd")
    return os.path.join(base, "dropin-" + BUILD_ID)
def _unpack(target):
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(target))
    with zipfile.ZipFile(sys.argv[0] if os.path.isfile(sys.argv[0]) else __loader__.archive) as z:
        for name in z.namelist():
            if name.startswith("site/"):
                z.extract(name, tmp)
    try:
        os.rename(os.path.join(tmp, "site"), target)
    except OSError:
        pass  # another process won the race
    shutil.rmtree(tmp, ignore_errors=True)
target = _target()
if not os.path.isdir(target):
    _unpack(target)
sys.path.insert(0, target)
from daemon.cli import main
sys.exit(main())
'''


def site_files(site: Path) -> list[tuple[Path, str]]:
    """(file, archive name) for the runtime libraries in the venv and our packages."""
    out = []
    for entry in sorted(site.iterdir()):
        name = entry.name.split("-")[0] if entry.name.endswith((".dist-info", ".egg-info")) else entry.name
        base = name.split(".")[0]
        if base in SKIP or entry.name in SKIP or entry.suffix == ".pth" or base.startswith("__editable__"):
            continue
        if entry.name.endswith((".dist-info", ".egg-info")) and base.lower().replace("_", "-") in (
                "pynydusd", "pip", "setuptools"):
            continue
        out += _walk(entry, site)
    for pkg in ("rafs", "daemon"):
        out += _walk(ROOT / pkg, ROOT)
    return out


def _walk(entry: Path, base: Path) -> list[tuple[Path, str]]:
    files = [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())
    return [(f, "site/" + str(f.relative_to(base))) for f in files
            if "__pycache__" not in f.parts and not f.name.endswith((".pyc", ".c", ".pyi"))]


def build(out: Path) -> None:
    """Write the drop-in to `out`."""
    site = Path(sysconfig.get_paths()["purelib"])
    files = site_files(site)
    h = hashlib.sha256()
    for f, name in files:
        h.update(name.encode() + b"\0" + f.read_bytes())
    build_id = h.hexdigest()[:16]
    buf = io.BytesIO()
    with zipfile.ZipFile(buf, "w", zipfile.ZIP_DEFLATED) as z:
        z.writestr("__main__.py", BOOT % {"build_id": build_id})
        for f, name in files:
            z.write(f, name)
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp = out.with_suffix(".tmp")
    tmp.write_bytes(b"#!/usr/bin/python3 -sE\n" + buf.getvalue())
    tmp.chmod(0o755)
    os.replace(tmp, out)
    print(f"built {out} ({out.stat().st_size // 1024} KiB, build {build_id}, {len(files)} files)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "dist" / "nydusd"))
    build(Path(p.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
