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
import py_compile
import shutil
import subprocess
import sys
import sysconfig
import tempfile
import zipfile
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
SKIP = {"pip", "setuptools", "_distutils_hack", "pkg_resources", "wheel", "pytest", "_pytest",
        "hypothesis", "ruff", "pluggy", "iniconfig", "packaging", "pygments", "pytest_timeout",
        "py", "_hypothesis_pytestplugin", "_hypothesis_ftz_detector", "_hypothesis_globals",
        "__editable__", "__pycache__", "distutils-precedence", "pynydusd"}
# compiled pieces nothing of ours loads (zstandard's cffi backend, lz4.frame)
SKIP_FILES = ("zstandard/_cffi", "lz4/frame/")

BOOT = r'''
import os, sys
BUILD_ID = %(build_id)r
ARCHIVE = os.path.realpath(sys.argv[0])
def _target():
    base = "/var/cache/pynydusd" if os.geteuid() == 0 else os.path.expanduser("~/.cache/pynydusd")
    return os.path.join(base, "dropin-" + BUILD_ID)
def _unpack(target):
    import shutil, tempfile, zipfile  # first run only: a warm start skips ~35 ms of imports
    os.makedirs(os.path.dirname(target), mode=0o755, exist_ok=True)
    tmp = tempfile.mkdtemp(prefix=".unpack-", dir=os.path.dirname(target))
    with zipfile.ZipFile(ARCHIVE) as z:
        for name in z.namelist():
            if name.startswith("native/"):
                z.extract(name, tmp)
    try:
        os.rename(os.path.join(tmp, "native"), target)
    except OSError:
        pass  # another process unpacked it first
    shutil.rmtree(tmp, ignore_errors=True)
target = _target()
if not os.path.isdir(target):
    _unpack(target)
sys.path[:0] = [target, ARCHIVE + "/lib"]
from daemon.cli import main
sys.exit(main())
'''


def runtime_closure() -> set[str]:
    """Top-level names in site-packages of pynydusd's runtime requirements and theirs, found from
    the installed distributions' metadata (test and bench extras are left out)."""
    from importlib import metadata

    from packaging.requirements import Requirement

    reqs = [Requirement(r) for r in metadata.requires("pynydusd") or []]
    todo = [r.name for r in reqs if r.marker is None or r.marker.evaluate({"extra": ""})]
    seen: set[str] = set()
    tops: set[str] = set()
    while todo:
        name = todo.pop().lower().replace("_", "-")
        if name in seen:
            continue
        seen.add(name)
        dist = metadata.distribution(name)
        for f in dist.files or []:
            parts = Path(f).parts
            if parts and parts[0] != "..":
                tops.add(parts[0].split(".")[0] if len(parts) == 1 else parts[0])
        for r in dist.requires or []:
            req = Requirement(r)
            if req.marker is None or req.marker.evaluate({"extra": ""}):
                todo.append(req.name)
    return tops


def runtime_files(site: Path) -> list[tuple[Path, str]]:
    """(file, archive name): packages with compiled modules under native/, the rest under lib/."""
    out = []
    keep = runtime_closure()
    for entry in sorted(site.iterdir()):
        base = entry.name.split("-")[0].split(".")[0]
        if base in SKIP or entry.suffix == ".pth" or base.startswith("__editable__"):
            continue
        if entry.name not in keep and base not in keep:
            continue
        files = _files(entry)
        native = any(f.suffix == ".so" for f in files)
        out += [(f, ("native/" if native else "lib/") + str(f.relative_to(site))) for f in files]
    for pkg in ("rafs", "daemon"):
        native = any((ROOT / pkg).glob("*.so"))
        out += [(f, ("native/" if native else "lib/") + str(f.relative_to(ROOT)))
                for f in _files(ROOT / pkg)]
    return out


def _files(entry: Path) -> list[Path]:
    files = [entry] if entry.is_file() else sorted(p for p in entry.rglob("*") if p.is_file())
    return [f for f in files if "__pycache__" not in f.parts
            and not f.name.endswith((".pyc", ".c", ".pyi", ".pyx", ".h"))
            and not any(s in str(f) for s in SKIP_FILES)]


def _stripped(f: Path, tmpdir: Path) -> Path:
    """A copy of a shared object without debug symbols (much smaller, much faster to unpack)."""
    out = tmpdir / (str(abs(hash(str(f)))) + f.name)
    shutil.copy(f, out)
    subprocess.run(["strip", "--strip-unneeded", str(out)], check=False, capture_output=True)
    return out


def _bytecode(f: Path, name: str, tmpdir: Path) -> bytes:
    """The .pyc of `f` (unchecked hash: valid without the source's mtime)."""
    cfile = tmpdir / "out.pyc"
    py_compile.compile(str(f), cfile=str(cfile), dfile=name[4:], doraise=True,
                       invalidation_mode=py_compile.PycInvalidationMode.UNCHECKED_HASH)
    return cfile.read_bytes()


def build(out: Path) -> None:
    """Write the drop-in to `out`."""
    site = Path(sysconfig.get_paths()["purelib"])
    files = runtime_files(site)
    buf = io.BytesIO()
    h = hashlib.sha256()
    with tempfile.TemporaryDirectory() as tmp, zipfile.ZipFile(buf, "w") as z:
        for f, name in files:
            src = _stripped(f, Path(tmp)) if f.suffix == ".so" else f
            data = src.read_bytes()
            h.update(name.encode() + b"\0" + data)
            z.writestr(name, data, zipfile.ZIP_STORED if name.startswith("native/") else
                       zipfile.ZIP_DEFLATED)
            if name.startswith("lib/") and name.endswith(".py"):
                # zipimport cannot cache bytecode: ship it, or every start compiles everything
                z.writestr(name + "c", _bytecode(f, name, Path(tmp)), zipfile.ZIP_DEFLATED)
        build_id = h.hexdigest()[:16]
        z.writestr("__main__.py", BOOT % {"build_id": build_id})
    out.parent.mkdir(parents=True, exist_ok=True)
    tmp_out = out.with_suffix(".tmp")
    tmp_out.write_bytes(b"#!/usr/bin/python3 -sE\n" + buf.getvalue())
    tmp_out.chmod(0o755)
    os.replace(tmp_out, out)
    print(f"built {out} ({out.stat().st_size // 1024} KiB, build {build_id}, {len(files)} files)")


def main(argv: list[str] | None = None) -> int:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--out", default=str(ROOT / "dist" / "nydusd"))
    build(Path(p.parse_args(argv).out))
    return 0


if __name__ == "__main__":
    sys.exit(main())
