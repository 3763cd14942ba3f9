"""What this build of pynydusd is, in the fields of nydusd's version block (`-V`, and `version`
in `GET /api/v1/daemon`): package version, git commit, build time, profile, and the runtime in
place of rustc."""

from __future__ import annotations

import functools
import os

VERSION = "0.1.0"
_ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def _git_commit(root: str) -> str:
    """The commit checked out at `root`, read from .git without running git; "" if none. In a
    worktree or submodule .git is a file naming the git directory; refs may live in the common
    directory it names, loose or packed."""
    try:
        git = os.path.join(root, ".git")
        if os.path.isfile(git):
            line = _read(git)
            if not line.startswith("gitdir: "):
                return ""
            git = os.path.join(root, line[8:])
        common = git
        if os.path.isfile(os.path.join(git, "commondir")):
            common = os.path.join(git, _read(os.path.join(git, "commondir")))
        head = _read(os.path.join(git, "HEAD"))
        if not head.startswith("ref: "):
            return head if len(head) == 40 else ""
        ref = head[5:]
        for d in dict.fromkeys((git, common)):
            try:
                sha = _read(os.path.join(d, ref))
                return sha if len(sha) == 40 else ""
            except FileNotFoundError:
                pass
        for line in _read(os.path.join(common, "packed-refs"), 1 << 22).splitlines():
            sha, _, name = line.partition(" ")
            if name == ref and len(sha) == 40:
                return sha
    except (OSError, UnicodeDecodeError):
        pass
    return ""


def _read(path: str, limit: int = 4096) -> str:
    with open(path, encoding="utf-8") as f:
        return f.read(limit).strip()


def _build_time(root: str) -> str:
    """When the C hot path was built (its file's mtime, UTC); "" without one."""
    import datetime
    import glob

    built = glob.glob(os.path.join(root, "rafs", "_speedups*.so"))
    if not built:
        return ""
    stamp = os.stat(built[0]).st_mtime
    return datetime.datetime.fromtimestamp(stamp, datetime.UTC).strftime(
        "%Y-%m-%dT%H:%M:%SZ")


@functools.cache
def build_info() -> dict[str, str]:
    """{package_ver, git_commit, build_time, profile, rustc} of this installation (asked for by
    `-V` and the API only: it reads files, so start-up does not)."""
    import platform

    return {"package_ver": VERSION, "git_commit": _git_commit(_ROOT),
            "build_time": _build_time(_ROOT), "profile": "release",
            "rustc": f"none (pynydusd on {platform.python_implementation()} "
                     f"{platform.python_version()})"}


def version_text(prog: str) -> str:
    """`-V` output: the version block, one field a line, as nydusd prints it."""
    info = build_info()
    name = prog if prog == "pynydusd" else f"{prog} (pynydusd)"
    return "\n".join((name, f"Version:     {info['package_ver']}",
                      f"Git Commit:  {info['git_commit'] or 'unknown'}",
                      f"Build Time:  {info['build_time'] or 'unknown (no C extension)'}",
                      f"Profile:     {info['profile']}", f"Rustc:       {info['rustc']}"))
