"""Registry mirrors through a real mount: Debian's docker-registry as the registry and a second
one as its pull-through cache (the mirror), both on 127.0.0.1."""

from __future__ import annotations

import json
from pathlib import Path

import pytest
import requests

from tests.mountutil import PYNYDUSD, Daemon, require_fuse, wait_for
from tests.servers import Registry

REPO = "lib/img"


def files_of(src: Path) -> dict[str, bytes]:
    """The non-empty regular files of the source tree: relative path -> content."""
    return {str(p.relative_to(src)): p.read_bytes() for p in sorted(src.rglob("*"))
            if p.is_file() and not p.is_symlink() and p.stat().st_size}


def config(tmp_path: Path, name: str, origin_port: int, mirror_url: str) -> Path:
    path = tmp_path / f"{name}.json"
    path.write_text(json.dumps({"device": {
        "backend": {"type": "registry", "config": {
            "scheme": "http", "host": f"127.0.0.1:{origin_port}", "repo": REPO, "timeout": 5,
            "retry_limit": 0,
            "mirrors": [{"host": mirror_url, "failure_limit": 1, "health_check_interval": 60,
                         "headers": {"X-Mirror-Test": "1"}}]}},
        "cache": {"type": "blobcache", "config": {"work_dir": str(tmp_path / f"{name}-cache")}}},
        "mode": "direct", "amplify_io": 0,  # a read fetches its own chunks only
        "fs_prefetch": {"enable": False}}))
    return path


def mount(tmp_path: Path, name: str, bootstrap: Path, cfg: Path) -> tuple[Daemon, Path]:
    mnt = tmp_path / name
    mnt.mkdir()
    return Daemon([str(PYNYDUSD), "--bootstrap", str(bootstrap), "--config", str(cfg),
                   "--log-level", "info", str(mnt)], mnt), mnt


def mirror_has(mirror: Registry, blob_id: str) -> bool:
    """The mirror serves a range of the blob from its own storage (a 206, not the whole blob it
    streams from the registry while fetching it)."""
    r = requests.get(f"{mirror.url}/v2/{REPO}/blobs/sha256:{blob_id}",
                     headers={"Range": "bytes=0-0"}, timeout=5, stream=True)
    r.close()  # (a cold mirror streams the whole blob: not read here, node 1 made it fetch)
    return r.status_code == 206


@pytest.mark.timeout(180)
def test_a_node_reads_through_the_mirror_while_the_registry_is_down_and_back(sample_v6,
                                                                            tmp_path):
    """Node 1 reads the image while the mirror is cold (it streams whole blobs, so node 1 reads
    from the registry) and the mirror fills. The registry goes down: node 2 reads half the files,
    which only the mirror can serve. Then the mirror goes down and the registry comes back: node
    2 reads the rest from the registry, the mirror left out after one failure. Every byte read
    matches the source."""
    require_fuse()
    img, src = sample_v6
    files = files_of(src)
    assert len(files) >= 4
    origin = Registry(tmp_path / "origin")
    mirror = Registry(tmp_path / "mirror", mirror_of=origin.url)
    nodes: list[Daemon] = []
    try:
        blob_ids = [origin.push_blob(REPO, b.read_bytes()) for b in (img / "blobs").iterdir()]
        cfg = config(tmp_path, "node", origin.port, mirror.url)
        node1, mnt1 = mount(tmp_path, "node1", img / "bootstrap", cfg)
        nodes.append(node1)
        for rel, data in files.items():
            assert (mnt1 / rel).read_bytes() == data, rel
        assert "a whole blob for a ranged GET" in node1.output()  # the cold mirror
        node1.stop()
        for blob_id in blob_ids:
            wait_for(lambda b=blob_id: mirror_has(mirror, b), timeout=30,
                     what="the mirror to hold the blob")

        origin.stop()
        node2, mnt2 = mount(tmp_path, "node2", img / "bootstrap",
                            config(tmp_path, "node2", origin.port, mirror.url))
        nodes.append(node2)
        names = sorted(files)
        first, rest = names[: len(names) // 2], names[len(names) // 2:]
        for rel in first:
            assert (mnt2 / rel).read_bytes() == files[rel], rel

        mirror.stop()
        origin = Registry(tmp_path / "origin", port=origin.port)  # same storage, same port
        for rel in rest:
            assert (mnt2 / rel).read_bytes() == files[rel], rel
        out = node2.output()
        assert f"mirror {mirror.url} failed 1 times" in out, out
        node2.assert_clean_log()
    finally:
        for node in nodes:
            node.stop()
        mirror.stop()
        origin.stop()
