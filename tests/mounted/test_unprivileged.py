"""pynydusd run by a user without root: the mount goes through fusermount3 (setuid), as libfuse
does it, and so does the unmount at SIGTERM."""

from __future__ import annotations

import hashlib
import json
import os
import shutil
import stat
import subprocess
import sys
import tempfile
from pathlib import Path

import pytest

from tests.mountutil import PYNYDUSD, Daemon, fstype_at, require_fuse

NOBODY = ["setpriv", "--reuid=nobody", "--regid=nogroup", "--clear-groups"]
DIGESTS = ("import hashlib, json, os, sys\n"
           "root = sys.argv[1]\n"
           "out = {}\n"
           "for d, _dirs, files in os.walk(root):\n"
           "    for n in files:\n"
           "        p = os.path.join(d, n)\n"
           "        if os.path.isfile(p) and not os.path.islink(p):\n"
           "            try:\n"
           "                out[os.path.relpath(p, root)] = hashlib.sha256("
           "open(p, 'rb').read()).hexdigest()\n"
           "            except PermissionError:\n"
           "                out[os.path.relpath(p, root)] = 'denied'\n"
           "print(json.dumps(out))\n")


@pytest.mark.timeout(60)
def test_a_user_without_root_mounts_reads_and_unmounts(sample_v6):
    require_fuse()
    if os.geteuid() != 0 or not shutil.which("setpriv") or not shutil.which("fusermount3"):
        pytest.skip("needs root (to set up the user's files), setpriv and fusermount3")
    for exe in (Path(PYNYDUSD), Path(sys.executable)):
        closed = [d for d in exe.resolve().parents if not os.stat(d).st_mode & stat.S_IXOTH]
        if closed:  # e.g. a checkout under /root (mode 0700)
            pytest.skip(f"user nobody cannot reach {exe}: {closed[0]} is not searchable by others")
    img, src = sample_v6
    fuse_mode = stat.S_IMODE(os.stat("/dev/fuse").st_mode)
    work = Path(tempfile.mkdtemp(prefix="pynydusd-user-"))
    d = None
    try:
        # Debian's udev makes /dev/fuse 0666, so that users can mount; some containers have it 0600
        os.chmod("/dev/fuse", 0o666)
        (work / "img").mkdir()
        shutil.copy(img / "bootstrap", work / "img/bootstrap")
        shutil.copytree(img / "blobs", work / "img/blobs")
        (work / "mnt").mkdir()
        subprocess.run(["chown", "-R", "nobody:nogroup", str(work)], check=True)
        os.chmod(work, 0o755)
        d = Daemon([*NOBODY, str(PYNYDUSD), "--bootstrap", str(work / "img/bootstrap"),
                    "--backend", str(work / "img/blobs"), "--cache-dir", str(work / "cache"),
                    str(work / "mnt")], work / "mnt")
        with pytest.raises(PermissionError):  # a user's mount: not even root may look in
            os.listdir(work / "mnt")
        got = subprocess.run([*NOBODY, sys.executable, "-c", DIGESTS, str(work / "mnt")],
                             capture_output=True, text=True)
        assert got.returncode == 0, got.stderr
        got = got.stdout
        def for_others(p: Path) -> str:  # what nobody (owner of nothing there) may read
            readable = os.stat(p).st_mode & stat.S_IROTH and all(
                os.stat(d).st_mode & stat.S_IXOTH for d in p.relative_to(src).parents
                for d in [src / d])
            return hashlib.sha256(p.read_bytes()).hexdigest() if readable else "denied"

        want = {str(p.relative_to(src)): for_others(p)
                for p in src.rglob("*") if p.is_file() and not p.is_symlink()}
        assert "denied" in want.values() and len(set(want.values())) > 2
        assert json.loads(got) == want
        rc, _secs = d.terminate()
        assert rc == 0, d.output()
        assert fstype_at(work / "mnt") is None  # unmounted through fusermount3 -u
        d.assert_clean_log()
    finally:
        if d is not None:
            d.stop()
        os.chmod("/dev/fuse", fuse_mode)
        shutil.rmtree(work, ignore_errors=True)
