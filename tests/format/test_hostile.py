"""Hostile bootstraps: mutated real images may only ever raise RafsError."""

from __future__ import annotations

import struct

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

import rafs
from rafs import _chunkmap, chunkmap
from rafs.buf import Buf
from rafs.localblob import walk
from rafs.v5 import V5Image
from rafs.v6 import EXT_SUPER_OFF, V6Image
from tests.format.twins import both
from tools.fuzz.walk import exercise


def open_bytes(data: bytes) -> rafs.Image:
    buf = Buf(data, "mutated")
    if len(data) >= 4 and struct.unpack_from("<I", data, 0)[0] == 0x52414653:
        return V5Image(buf, "mutated")
    return V6Image(buf, "mutated")


def mutate(seed: bytes, edits: list[tuple[int, int, int]], cut: int | None) -> bytes:
    data = bytearray(seed)
    for pos, width, value in edits:
        pos %= len(data)
        chunk = value.to_bytes(8, "little")[:width]
        data[pos:pos + width] = chunk[:len(data) - pos]
    if cut is not None:
        del data[cut % (len(data) + 1):]
    return bytes(data)


_values = st.sampled_from([0, 1, 2, 7, 8, 0xFF, 0xFFFF, 0x7FFFFFFF, 0xFFFFFFFF, 1 << 32,
                           (1 << 63) - 1, (1 << 64) - 1]) | st.integers(0, (1 << 64) - 1)
_edits = st.lists(st.tuples(st.integers(0, 1 << 20), st.sampled_from([1, 2, 4, 8]), _values),
                  min_size=1, max_size=6)


def _seed_images(root):
    from tests.format.images import real_images

    seeds = {"v5": (root / "v5-sha256-none/bootstrap").read_bytes(),
             "v6": (root / "v6-zstd/bootstrap").read_bytes()}
    from rafs.toc import inline_bootstrap

    blob = real_images(root)["v6-inline"][0].read_bytes()
    seeds["v6-inline"] = inline_bootstrap(lambda o, n: blob[o:o + n], len(blob))
    return seeds


@pytest.mark.parametrize("which", ["v5", "v6", "v6-inline"])
def test_mutated_images_raise_only_rafs_error(nydus_fixtures, which):
    seed = _seed_images(nydus_fixtures)[which]
    assert exercise(open_bytes(seed)) > 0  # the unmutated seed walks cleanly

    @settings(max_examples=400, deadline=1000, database=None,
              suppress_health_check=[HealthCheck.too_slow])
    @given(edits=_edits, cut=st.none() | st.integers(0, len(seed)))
    def check(edits, cut):
        data = mutate(seed, edits, cut)
        try:
            exercise(open_bytes(data))
        except rafs.RafsError:
            pass

    check()


def _v5_record_offset(data: bytes, index: int) -> int:
    return struct.unpack_from("<I", data, 8192 + 4 * (index - 1))[0] * 8


@pytest.fixture
def v5_seed(nydus_fixtures):
    return bytearray((nydus_fixtures / "v5-sha256-none/bootstrap").read_bytes())


def test_truncated_bootstrap_names_what_was_read(v5_seed):
    with pytest.raises(rafs.RafsError, match=r"outside the bootstrap.*s_inode_table_offset"):
        open_bytes(bytes(v5_seed[:100]))


def test_inode_table_entry_past_the_end(v5_seed):
    struct.pack_into("<I", v5_seed, 8192 + 4, 0x1FFFFFFF)
    image = open_bytes(bytes(v5_seed))
    with pytest.raises(rafs.RafsError, match=r"inode"):
        exercise(image)


@pytest.mark.parametrize("name", [b"a/b", b"..", b".", b"a\0b", b"/"])
def test_malicious_names_are_rejected(v5_seed, name):
    """A name that could escape a path (slash, dot entries) or truncate one (NUL) never reaches
    the caller: walking the image fails with a RafsError naming the field."""
    off = _v5_record_offset(v5_seed, 2)
    name_size = struct.unpack_from("<H", v5_seed, off + 100)[0]
    assert name_size >= len(name)
    struct.pack_into("<H", v5_seed, off + 100, len(name))
    v5_seed[off + 128:off + 128 + len(name)] = name
    with pytest.raises(rafs.RafsError, match=r"invalid file name.*inode\.name"):
        exercise(open_bytes(bytes(v5_seed)))


def test_directory_that_is_its_own_child(v5_seed):
    off = _v5_record_offset(v5_seed, 1)
    struct.pack_into("<I", v5_seed, off + 92, 1)  # root's first child = the root itself
    with pytest.raises(rafs.RafsError, match=r"i_child_index"):
        exercise(open_bytes(bytes(v5_seed)))


def test_huge_child_count(v5_seed):
    off = _v5_record_offset(v5_seed, 1)
    struct.pack_into("<I", v5_seed, off + 96, 0xFFFFFFFF)
    with pytest.raises(rafs.RafsError, match=r"i_child_index"):
        exercise(open_bytes(bytes(v5_seed)))


def test_v6_dirent_cycle_is_rejected(nydus_fixtures):
    data = bytearray((nydus_fixtures / "v6-zstd/bootstrap").read_bytes())
    image = open_bytes(bytes(data))
    name, inode, _ = next(iter(image.readdir(image.root_ino)))
    # point a regular entry of the root at the root itself
    root_off = 2 * 4096 + 128 * 32
    blk = bytes(data[root_off + 64: root_off + 64 + 86])  # inline dir data after the 64-byte inode
    pos = blk.index(struct.pack("<Q", inode.ino))
    struct.pack_into("<Q", data, root_off + 64 + pos, image.root_ino)
    with pytest.raises(rafs.RafsError, match=r"cycle|parent|not a regular|disagree"):
        exercise(open_bytes(bytes(data)))


@pytest.mark.parametrize("impl", both(_chunkmap))
@pytest.mark.parametrize("ct_off", [1 << 63, (1 << 64) - 1, 5])
def test_v6_empty_chunk_table_at_any_offset(nydus_fixtures, monkeypatch, impl, ct_off):
    # an empty chunk table's offset is not checked at open; the first read must still give a
    # RafsError (no record for the chunk), never an OverflowError from the C hot path
    monkeypatch.setattr(chunkmap, "chunk_map", impl.chunk_map)
    data = bytearray((nydus_fixtures / "v6-zstd/bootstrap").read_bytes())
    struct.pack_into("<QQ", data, EXT_SUPER_OFF + 24, ct_off, 0)
    image = open_bytes(bytes(data))
    big = max((i for _p, i in walk(image) if i.is_reg), key=lambda i: i.size)
    with pytest.raises(rafs.RafsError):
        image.chunks(big.ino, 0, 4096)
