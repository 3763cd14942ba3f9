"""Searching a v6 directory for a name: C and pure-Python twins agree, and lookups in large
directories built by our builder find exactly what a listing shows."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
from pathlib import Path

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rafs
from rafs import _dirsearch, dirsearch

try:
    from rafs import _speedups
except ImportError:  # the optional build failed
    _speedups = None

need_c = pytest.mark.skipif(_speedups is None, reason="rafs._speedups was not built")
IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


def outcome(fn, *args):
    """The result, or the exception's type and message: what both twins must agree on."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - comparing whatever happens
        return ("error", type(e).__name__, str(e))


def dir_blocks(names: list[bytes], bs: int) -> tuple[bytes, int]:
    """EROFS directory blocks of sorted `names` (nid = position + 100, file type 1), as the
    builder lays them out: every block but the last is padded to bs. Returns (data, size)."""
    blocks, cur = [], []

    def pack(entries: list[bytes], pad: bool) -> bytes:
        head, body = b"", b""
        first = 12 * len(entries)
        for n in entries:
            head += struct.pack("<QHBx", 100 + names.index(n), first + len(body), 1)
            body += n
        blk = head + body
        return blk + bytes(bs - len(blk)) if pad else blk

    for n in names:
        if cur and 12 * (len(cur) + 1) + sum(map(len, cur)) + len(n) > bs:
            blocks.append(pack(cur, True))
            cur = []
        cur.append(n)
    last = pack(cur, False)
    return b"".join(blocks) + last, bs * len(blocks) + len(last)


@st.composite
def dir_case(draw):
    bs = draw(st.sampled_from([64, 128, 4096]))
    names = sorted(set(draw(st.lists(st.binary(min_size=1, max_size=20).filter(
        lambda n: b"\0" not in n), min_size=1, max_size=40))) | {b".", b".."})
    data, size = dir_blocks(names, bs)
    lead = draw(st.sampled_from([0, bs, 2 * bs]))
    buf = bytearray(bytes(lead) + data + bytes(draw(st.integers(0, 3))))
    for _ in range(draw(st.sampled_from([0, 0, 1, 3]))):  # flip a few bytes
        buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    nblocks = -(-size // bs)
    tail = -1
    if draw(st.booleans()):  # the last block inline, somewhere (maybe crossing a block)
        tail = lead + (nblocks - 1) * bs + draw(st.sampled_from([0, 0, 1, bs // 2]))
    size += draw(st.sampled_from([0, 0, 0, -1, 1, bs, -size]))
    data_off = lead + draw(st.sampled_from([0, 0, 0, 1, -lead - 1, 1 << 60]))
    probe = draw(st.sampled_from(names + [b"", b"\0", b"zzzz", names[0][:-1], names[-1] + b"a"]))
    return bytes(buf), data_off, tail, size, bs, probe


@need_c
@settings(max_examples=3000, deadline=None, database=None)
@given(case=dir_case(), nid=st.integers(0, 1 << 40), inode_off=st.integers(0, 1 << 20))
def test_twins_agree(case, nid, inode_off):
    buf, data_off, tail, size, bs, name = case
    args = (buf, nid, data_off, tail, size, bs, inode_off, name)
    assert outcome(_speedups.find_dirent, *args) == outcome(_dirsearch.find_dirent, *args)


@need_c
@settings(max_examples=1500, deadline=None, database=None)
@given(buf=st.binary(max_size=300), data_off=st.integers(-5, 300), tail=st.integers(-2, 300),
       size=st.integers(-1, 400), bs=st.sampled_from([0, 1, 12, 13, 64, 4096, -1, 1 << 57]),
       name=st.binary(max_size=6))
def test_twins_agree_on_random_bytes(buf, data_off, tail, size, bs, name):
    args = (buf, 7, data_off, tail, size, bs, 0, name)
    assert outcome(_speedups.find_dirent, *args) == outcome(_dirsearch.find_dirent, *args)


@pytest.mark.parametrize("impl", [pytest.param(_dirsearch, id="python"), pytest.param(
    _speedups, id="c", marks=need_c)])
def test_finds_every_name_of_a_well_formed_directory(impl):
    names = sorted({b".", b".."} | {b"n%05d" % (i * 7919 % 100000) for i in range(900)})
    data, size = dir_blocks(names, 256)
    buf = bytes(512) + data
    for name in names:
        want = None if name in (b".", b"..") else (100 + names.index(name), 1)
        assert impl.find_dirent(buf, 1, 512, -1, size, 256, 0, name) == want
    for name in (b"", b"-", b"n", b"n0000", b"n999999", b"o", b"n00000\0"):
        assert impl.find_dirent(buf, 1, 512, -1, size, 256, 0, name) is None
    with pytest.raises(rafs.RafsError, match="bootstrap is too short"):
        impl.find_dirent(buf[:-1], 1, 512, -1, size, 256, 0, names[-1])


def test_lookup_in_large_built_directories_matches_the_listing(tmp_path):
    """20,000 names take ~200 directory blocks; the inline tail is searched too."""
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    for i in range(20000):
        (big / f"entry-{i * 7919 % 20000:05d}-{'x' * (i % 37)}").touch()
    (src / "small").mkdir()
    (src / "small" / "only").touch()
    out = tmp_path / "img"
    subprocess.run([str(IMAGE_TOOL), "create", "--fs-version", "6", "--blob-dir", str(out / "b"),
                    "--bootstrap", str(out / "boot"), str(src)], check=True, capture_output=True)
    image = rafs.open_image(out / "boot")
    for d in (b"big", b"small"):
        parent = image.lookup(image.root_ino, d)
        listed = {name: node.ino for name, node, _pos in image.readdir(parent.ino)}
        assert set(listed) == set(os.fsencode(n) for n in os.listdir(src / os.fsdecode(d)))
        for name, ino in listed.items():
            assert image.lookup(parent.ino, name).ino == ino
            assert image.lookup(parent.ino, name + b"~") is None
        assert image.lookup(parent.ino, b".") is None and image.lookup(parent.ino, b"..") is None
    assert image.lookup(image.root_ino, b"big").ino != image.lookup(image.root_ino, b"small").ino
    assert dirsearch.IMPLEMENTATION in ("c", "python")
