"""Searching a v6 or v5 directory for a name: the C and pure-Python twins agree, and lookups in
large directories built by our builder find exactly what a listing shows."""

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
from tests.format.twins import _speedups, both, examples, need_c, outcome

IMAGE_TOOL = Path(sys.executable).parent / "pynydus-image"


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
@settings(max_examples=examples(3000), deadline=None, database=None)
@given(case=dir_case(), nid=st.integers(0, 1 << 40), inode_off=st.integers(0, 1 << 20))
def test_twins_agree(case, nid, inode_off):
    buf, data_off, tail, size, bs, name = case
    args = (buf, nid, data_off, tail, size, bs, inode_off, name)
    assert outcome(_speedups.find_dirent, *args) == outcome(_dirsearch.find_dirent, *args)


@need_c
@settings(max_examples=examples(1500), deadline=None, database=None)
@given(buf=st.binary(max_size=300), data_off=st.integers(-5, 300), tail=st.integers(-2, 300),
       size=st.integers(-1, 400), bs=st.sampled_from([0, 1, 12, 13, 64, 4096, -1, 1 << 57]),
       name=st.binary(max_size=6))
def test_twins_agree_on_random_bytes(buf, data_off, tail, size, bs, name):
    args = (buf, 7, data_off, tail, size, bs, 0, name)
    assert outcome(_speedups.find_dirent, *args) == outcome(_dirsearch.find_dirent, *args)


@pytest.mark.parametrize("impl", both(_dirsearch))
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


def v5_table(names: list[bytes], itable_off: int = 64) -> bytes:
    """A v5 inode table (root "/" then `names`) at itable_off and its records after the
    superblock: each a 128-byte header with the name size at +100, then the name, 8-aligned."""
    body = bytearray(8192 + 8)
    ents = []
    for name in [b"/", *names]:
        ents.append(len(body) // 8)
        hdr = bytearray(128)
        struct.pack_into("<H", hdr, 100, len(name))
        body += hdr + name + bytes(-len(name) % 8)
    table = struct.pack(f"<{len(ents)}I", *ents)
    body[itable_off:itable_off + len(table)] = table
    return bytes(body)


@st.composite
def v5_case(draw):
    names = sorted(set(draw(st.lists(st.binary(min_size=1, max_size=12), max_size=30))))
    itable_off = draw(st.sampled_from([64, 64, 0, 8190]))
    buf = bytearray(v5_table(names, min(itable_off, 64)))
    for _ in range(draw(st.sampled_from([0, 0, 1, 4]))):  # flip bytes, often in the table
        pos = draw(st.one_of(st.integers(64, 64 + 4 * len(names) + 3),
                             st.integers(0, len(buf) - 1)))
        buf[pos] = draw(st.integers(0, 255))
    cut = draw(st.sampled_from([0, 0, 0, 1, 9, 200]))
    buf = bytes(buf[:len(buf) - cut])
    entries = len(names) + 1 + draw(st.sampled_from([0, 0, 0, -1, -len(names) - 1, 5, 1 << 32]))
    child_index = draw(st.sampled_from([2, 2, 2, 1, 0, 3, 1 << 33]))
    count = len(names) + draw(st.sampled_from([0, 0, 0, -len(names), 1, 3]))
    probe = draw(st.sampled_from([*names, b"", b"/", b"\xff" * 13, (names or [b"a"])[0] + b"\0"]))
    return buf, itable_off, entries, child_index, count, probe


@need_c
@settings(max_examples=examples(3000), deadline=None, database=None)
@given(case=v5_case())
def test_v5_twins_agree(case):
    assert outcome(_speedups.v5_find_child, *case) == outcome(_dirsearch.v5_find_child, *case)


@pytest.mark.parametrize("impl", both(_dirsearch))
def test_v5_finds_every_child(impl):
    names = sorted({b"n%05d" % (i * 7919 % 100000) for i in range(600)})
    buf = v5_table(names)
    for k, name in enumerate(names):
        assert impl.v5_find_child(buf, 64, len(names) + 1, 2, len(names), name) == k
    for name in (b"", b"n", b"n0000", b"n999999", b"o", b"/"):
        assert impl.v5_find_child(buf, 64, len(names) + 1, 2, len(names), name) == -1
    with pytest.raises(rafs.RafsError, match="bootstrap is too short"):
        impl.v5_find_child(buf[:-9], 64, len(names) + 1, 2, len(names), names[-1])


@pytest.mark.parametrize("version", ["5", "6"])
def test_lookup_in_large_built_directories_matches_the_listing(tmp_path, version):
    """20,000 names take ~200 v6 directory blocks (the inline tail is searched too)."""
    src = tmp_path / "src"
    big = src / "big"
    big.mkdir(parents=True)
    for i in range(20000):
        (big / f"entry-{i * 7919 % 20000:05d}-{'x' * (i % 37)}").touch()
    for name in ("!x", "-x", "+x", ",x", ".a", "..a", "...", "\x01", "\xff", "\u00e9"):
        (big / name).touch()  # names that sort before, around and after "." and ".."
    (src / "small").mkdir()
    (src / "small" / "only").touch()
    out = tmp_path / "img"
    subprocess.run([str(IMAGE_TOOL), "create", "--fs-version", version, "--blob-dir", str(out / "b"),
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
