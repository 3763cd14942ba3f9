"""Two images sharing a cache directory through real mounts: a hostile image that names the other's
blob and swaps two of its chunks' places in the cache files never makes the other read wrong bytes."""

from __future__ import annotations

from tests.mountutil import PYNYDUSD, Daemon, require_fuse
from tests.storage.test_shared_cache import build_pair_image, hostile_copy, truth_of


def test_an_image_mounted_after_a_hostile_one_reads_its_own_bytes(tmp_path):
    require_fuse()
    image_dir = build_pair_image(tmp_path / "img")
    hostile = hostile_copy(image_dir, tmp_path / "hostile.meta")
    truth = truth_of(image_dir)
    cache = tmp_path / "cache"
    for n, bootstrap in enumerate((hostile, image_dir / "bootstrap", hostile)):
        mnt = tmp_path / f"mnt{n}"
        mnt.mkdir()
        d = Daemon([str(PYNYDUSD), "--bootstrap", str(bootstrap), "--backend",
                    str(image_dir / "blobs"), "--cache-dir", str(cache), "--no-prefetch",
                    str(mnt)], mnt)
        try:
            got = {b"/" + name.encode(): (mnt / name).read_bytes() for name in ("a.bin", "b.bin")}
            assert got == truth, f"wrong bytes through the mount of {bootstrap.name}"
        finally:
            d.stop()
    assert (cache / "pynydusd").is_dir()
