"""The C chunk lookup and its pure-Python twin: identical results, identical errors."""

from __future__ import annotations

import os
import struct
import subprocess
import sys
import time

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rafs
from rafs import _chunkmap, chunkmap
from tests.format.twins import _speedups, both, examples, need_c, outcome

IMPLS = both(_chunkmap)
T = rafs.model.PIECE_TYPES  # the result types every pieces call passes


def test_implementation_is_reported():
    assert chunkmap.IMPLEMENTATION in ("c", "python")
    if os.environ.get("PYNYDUSD_PUREPYTHON") == "1":
        assert chunkmap.IMPLEMENTATION == "python"


def v5_records(sizes: list[int], cs: int) -> bytes:
    out = b""
    for i, n in enumerate(sizes):
        out += struct.pack("<32sIIIIQQQII", bytes([i % 256]) * 32, 0, 1, n // 2 or 1, n,
                           1000 * i, cs * i, cs * i, i, 0)
    return out


@pytest.mark.parametrize("impl", IMPLS)
def test_v5_pieces_on_a_well_formed_table(impl):
    cs, size = 0x1000, 10 * 0x1000 + 123
    sizes = [cs] * 10 + [123]
    buf = b"\0" * 16 + v5_records(sizes, cs)
    pieces = impl.v5_pieces(buf, 16, 11, cs, size, 1, 100, 2 * cs, T)
    assert [(p.chunk.chunk_index, p.offset, p.length) for p in pieces] == [
        (0, 100, cs - 100), (1, 0, cs), (2, 0, 100)]
    assert all(type(p) is rafs.ChunkPiece and type(p.chunk) is rafs.ChunkInfo for p in pieces)
    tail = impl.v5_pieces(buf, 16, 11, cs, size, 1, size - 10, 1000, T)
    assert [(p.chunk.uncompressed_size, p.offset, p.length) for p in tail] == [(123, 113, 10)]
    # a chunk list shorter than the file reads the rest as a hole
    short = impl.v5_pieces(buf, 16, 2, cs, size, 1, 0, 3 * cs, T)
    assert short[2].chunk is None and short[2].length == cs
    # ... as one piece, however large the file claims to be (found by tools/fuzz: a lying i_size
    # once made a whole-file lookup produce one hole piece per missing chunk, for ever)
    huge = impl.v5_pieces(buf, 16, 2, cs, 1 << 62, 1, 0, 1 << 62, T)
    assert [(p.chunk is None, p.length) for p in huge] == [(False, cs), (False, cs),
                                                           (True, (1 << 62) - 2 * cs)]


@need_c
@settings(max_examples=examples(1500), deadline=None, database=None)
@given(buf=st.binary(max_size=600), rec_off=st.integers(0, 700), count=st.integers(0, 40),
       cs=st.sampled_from([1, 7, 0x1000, 0x10000]), fsize=st.integers(0, 1 << 20),
       nblobs=st.integers(0, 3), offset=st.integers(0, 1 << 20), size=st.integers(0, 1 << 18))
def test_v5_twins_agree_on_random_tables(buf, rec_off, count, cs, fsize, nblobs, offset, size):
    args = (buf, rec_off, count, cs, fsize, nblobs, offset, size, T)
    assert outcome(_speedups.v5_pieces, *args) == outcome(_chunkmap.v5_pieces, *args)


def ci_v1(c_off: int, c_size: int, d_off: int, d_size: int) -> bytes:
    d, c = d_size - 1, c_size - 1
    return struct.pack("<QQ", d_off & 0xFFF_FFFF_F000 | (d >> 20 & 0xF) << 8 | (d & 0xFFFFF) << 44,
                       c_off & 0xFF_FFFF_FFFF | (c >> 20 & 0xF) << 40 | (c & 0xFFFFF) << 44)


def ci_v2(c_off: int, c_size: int, d_off: int, d_size: int, flags: int) -> bytes:
    return struct.pack("<QQQ", (d_off >> 12 & 0xFFFF_FFFF) | ((d_size - 1) & 0xFF_FFFF) << 32
                       | (flags & 0xFF) << 56, c_off & 0xFF_FFFF_FFFF | (c_size & 0xFF_FFFF) << 40, 0)


# Mostly consistent v6 metadata: chunk records, chunk indexes naming them (or holes, or junk), a
# chunk map (plus stray and out-of-range entries), ci tables (v1/v2, or junk); then a few bytes
# flipped. Values are drawn from small sets so that success and every error path are common.
_CS = 0x1000
_KEYS = [0, 1, 2, 3, 0, 1, 0xFF_FFFF, 1 << 24]
_BLKS = [0, 1, 2, 7, 0, 1, 0xFFFF_FFFF, 1 << 32]


@st.composite
def v6_case(draw):
    pick = st.sampled_from
    bs = draw(pick([0x1000, 0x1000, 0x1000, 0x200, 1, 0]))
    nblobs = draw(pick([1, 1, 1, 2, 3, 0]))
    recs = []
    for _ in range(draw(st.integers(0, 6))):
        blob = draw(st.integers(0, max(nblobs - 1, 0)) if draw(pick([1, 1, 1, 1, 0]))
                    else pick([0, 1, 2, 3]))
        c_index, blk = draw(pick(_KEYS)), draw(pick(_BLKS))
        recs.append((draw(st.binary(min_size=32, max_size=32)), blob,
                     draw(pick([0, 1, 0x10, 0x11, 0x2, 0xFFFF_FFFF])), draw(pick([_CS, 100, 1, 0])),
                     draw(pick([_CS, _CS, _CS, 100, 0, _CS + 1])), draw(pick([0, 5, 1 << 40])),
                     blk * (bs or 1), 0, c_index, draw(pick([0, 7, 0xFFFF_FFFF]))))
    idx = b""
    for _ in range(draw(st.integers(1, 8))):
        kind = draw(pick(["rec"] * 6 + ["hole", "junk"]))
        if kind == "rec" and recs:
            r = recs[draw(st.integers(0, len(recs) - 1))]
            blob, c_index, blk = r[1] + 1, r[8], r[6] // (bs or 1)
            idx += struct.pack("<HHI", c_index & 0xFFFF, (c_index >> 16 & 0xFF) << 8 | blob & 0xFF,
                               blk & 0xFFFF_FFFF)
        elif kind == "hole":
            idx += struct.pack("<HHI", draw(st.integers(0, 0xFFFF)), draw(pick([0, 1, 2])),
                               0xFFFF_FFFF)
        else:
            idx += draw(st.binary(min_size=8, max_size=8))
    index_off = draw(st.integers(0, 9))
    rec_off = index_off + len(idx) + draw(st.integers(0, 3))
    buf = bytearray(bytes(rec_off) + b"".join(struct.pack("<32sIIIIQQQII", *r) for r in recs)
                    + bytes(draw(st.integers(0, 5))))
    buf[index_off:index_off + len(idx)] = idx
    chunk_map = {}
    for i, r in enumerate(recs):
        key = chunkmap.chunk_key(r[1], r[8], r[6] // (bs or 1))
        if key is not None:
            chunk_map[key] = rec_off + 80 * i
    for _ in range(draw(pick([0, 0, 1, 2]))):
        chunk_map[draw(st.integers(0, 1 << 64))] = draw(st.integers(-100, len(buf) + 100))
    if chunk_map and draw(pick([False, False, False, True])):  # outside the buffer, or 64 bits
        chunk_map[draw(pick(sorted(chunk_map)))] = draw(pick(
            [-1, len(buf) - 79, len(buf), 1 << 64, -(1 << 70)]))
    ci_tables = []
    for blob in range(draw(st.integers(0, nblobs + 1))):
        kind = draw(pick(["none", "v1", "v2", "v2", "junk"]))
        if kind == "none":
            ci_tables.append(None)
            continue
        version = draw(pick([1, 2])) if kind == "junk" else int(kind[1])
        by_index = {r[8]: r for r in recs if r[1] == blob and r[8] < 8}
        data = b""
        for c_index in range(max(by_index, default=-1) + 1):
            r = by_index.get(c_index)
            c_off, c_size, d_off, d_size = (r[5], r[3], r[6], r[4]) if r else (0, 1, 0, 1)
            c_size, d_size = max(c_size, 1), max(d_size, 1)
            if version == 1:
                data += ci_v1(c_off, c_size, d_off, d_size)
            else:
                data += ci_v2(c_off, c_size, d_off, d_size, draw(pick(
                    [0, 1, 0x10, 0x11, 0, 1, 0x2, 0x4, 0x8, 0x20, 0x80])))
        if kind == "junk":
            data = draw(st.binary(max_size=80))
        count = len(data) // (24 if version == 2 else 16) + draw(pick([0, 0, 0, -1, 1]))
        ci_tables.append((data, version, count))
    for _ in range(draw(pick([0, 0, 1, 2]))):  # flip a few bytes
        if buf:
            buf[draw(st.integers(0, len(buf) - 1))] = draw(st.integers(0, 255))
    return bytes(buf), index_off, bs, nblobs, chunk_map, ci_tables, len(idx) // 8, recs


@need_c
@settings(max_examples=examples(1000), deadline=None, database=None)
@given(case=v6_case(), tail=st.sampled_from([0, 0, 1, 0x800, _CS - 1]), data=st.data(),
       cs=st.sampled_from([_CS] * 5 + [1, 0x100000, 0]))
def test_v6_pieces_twins_agree(case, tail, data, cs):
    buf, index_off, bs, nblobs, chunk_map, ci_tables, n, _recs = case
    fsize = max(0, n * _CS - tail)
    offset = data.draw(st.integers(-1, fsize + 1))
    size = data.draw(st.integers(-1, fsize - offset + 2))
    args = (buf, index_off, cs, fsize, offset, size, bs, nblobs, chunk_map, ci_tables, T)
    assert outcome(_speedups.v6_pieces, *args) == outcome(_chunkmap.v6_pieces, *args)


@need_c
@settings(max_examples=examples(1000), deadline=None, database=None)
@given(case=v6_case(), data=st.data(), want=st.sampled_from([_CS, _CS, 1, 100, 0, -1]),
       where=st.sampled_from([-1, 0, 8]))
def test_v6_chunk_twins_agree(case, data, want, where):
    buf, _index_off, bs, nblobs, chunk_map, ci_tables, _n, recs = case
    if recs and data.draw(st.sampled_from([True, True, True, False])):  # one with a record
        r = data.draw(st.sampled_from(recs))
        blob, c_index, blkaddr = r[1], r[8], r[6] // (bs or 1)
    else:
        blob, c_index = data.draw(st.integers(-2, 4)), data.draw(st.sampled_from(_KEYS + [-1]))
        blkaddr = data.draw(st.sampled_from(_BLKS + [-1]))
    args = (buf, blob, c_index, blkaddr, want, where, bs, nblobs, chunk_map, ci_tables, T)
    assert outcome(_speedups.v6_chunk, *args) == outcome(_chunkmap.v6_chunk, *args)


@need_c
@settings(max_examples=examples(1500), deadline=None, database=None)
@given(buf=st.binary(max_size=400), idx_off=st.integers(-10, 500),
       cs=st.sampled_from([1, 0x1000, 0x100000]), fsize=st.integers(0, 1 << 24),
       offset=st.integers(0, 1 << 24), size=st.integers(0, 1 << 22),
       bs=st.sampled_from([0x1000, 1]), nblobs=st.integers(0, 3),
       chunk_map=st.dictionaries(st.integers(0, 1 << 64), st.integers(-10, 500), max_size=4),
       ci_tables=st.lists(st.none() | st.tuples(st.binary(max_size=100), st.sampled_from([1, 2]),
                                               st.integers(0, 6)), max_size=4))
def test_v6_pieces_twins_agree_on_random_bytes(buf, idx_off, cs, fsize, offset, size, bs, nblobs,
                                               chunk_map, ci_tables):
    args = (buf, idx_off, cs, fsize, offset, size, bs, nblobs, chunk_map, ci_tables, T)
    assert outcome(_speedups.v6_pieces, *args) == outcome(_chunkmap.v6_pieces, *args)


@pytest.mark.parametrize("impl", IMPLS)
def test_v6_pieces_on_a_well_formed_table(impl):
    cs, bs = 0x1000, 0x1000
    recs = [struct.pack("<32sIIIIQQQII", bytes([i]) * 32, 0, 0x10 if i == 2 else 1, 50 + i, cs,
                        1000 * i, cs * i, 0, i, 7 * i) for i in range(3)]
    idx = b"".join(struct.pack("<HHI", i, 1, i) for i in range(3))
    idx += struct.pack("<HHI", 0, 0, 0xFFFF_FFFF)  # a hole
    buf = idx + b"".join(recs)
    chunk_map = {chunkmap.chunk_key(0, i, i): 32 + 80 * i for i in range(3)}
    size = 3 * cs + 10
    pieces = impl.v6_pieces(buf, 0, cs, size, 100, 4 * cs, bs, 1, chunk_map, [None], T)
    assert all(type(p) is rafs.ChunkPiece for p in pieces)
    assert all(type(p.chunk) is rafs.ChunkInfo for p in pieces[:3])
    assert [(p.chunk and p.chunk[:7], p.offset, p.length) for p in pieces] == [
        ((0, 0, 1, 0, 50, 0, cs), 100, cs - 100), ((0, 1, 1, 1000, 51, cs, cs), 0, cs),
        ((0, 2, 0x10, 2000, 52, 2 * cs, cs), 0, cs), (None, 0, 10)]
    assert pieces[2].chunk.digest == bytes([2]) * 32 and pieces[2].chunk.crc32 == 14
    # a ci v2 table takes over offsets, sizes and the compressed flag; the crc flag stays
    ci = b"".join(ci_v2(9000 + i, 60 + i, cs * i, cs, 1 if i else 0) for i in range(3))
    pieces = impl.v6_pieces(buf, 0, cs, size, 0, 3 * cs, bs, 1, chunk_map, [(ci, 2, 3)], T)
    assert [p.chunk[:7] for p in pieces] == [(0, 0, 0, 9000, 60, 0, cs), (0, 1, 1, 9001, 61, cs, cs),
                                             (0, 2, 0x11, 9002, 62, 2 * cs, cs)]
    with pytest.raises(rafs.UnsupportedImageError, match="ci v2 flags 0x2 on chunk 1"):
        impl.v6_pieces(buf, 0, cs, size, 0, 3 * cs, bs, 1, chunk_map,
                       [(ci[:24] + ci_v2(9001, 61, cs, cs, 2) + ci[48:], 2, 3)], T)
    with pytest.raises(rafs.RafsError, match="no digest in the chunk table"):
        impl.v6_pieces(buf, 0, cs, size, 0, 3 * cs, bs, 1, {}, [(ci, 2, 3)], T)
    with pytest.raises(rafs.RafsError, match="no chunk table record and no ci table"):
        impl.v6_pieces(buf, 0, cs, size, 0, 3 * cs, bs, 1, {}, [], T)
    assert impl.v6_chunk(buf, 0, 1, 1, cs, -1, bs, 1, chunk_map, [None], T) == pieces[1].chunk[:2] + (
        1, 1000, 51, cs, cs, bytes([1]) * 32, 7)


def test_chunk_key():
    assert chunkmap.chunk_key(1, 2, 3) == 1 << 56 | 2 << 32 | 3
    assert chunkmap.chunk_key(0xFF, 0xFF_FFFF, 0xFFFF_FFFF) == (1 << 64) - 1
    assert [chunkmap.chunk_key(*k) for k in ((256, 0, 0), (0, 1 << 24, 0), (0, 0, 1 << 32),
                                              (-1, 0, 0))] == [None] * 4


def _table_rec(blob: int, c_index: int, d_off: int) -> bytes:
    return struct.pack("<32sIIIIQQQII", bytes(32), blob, 0, 1, 1, 0, d_off, 0, c_index, 0)


@pytest.mark.parametrize("impl", IMPLS)
def test_chunk_map_keys_every_nameable_record_in_key_order(impl):
    bs, off = 0x1000, 24
    recs = [(1, 2, 3 * bs), (0, 5, 0), (1, 2, 3 * bs + 5),  # the same key as the first: last wins
            (0x100, 0, 0), (0, 1 << 24, 0), (0, 0, bs << 32),  # blob, index, block: too wide
            (0xFF, 0xFF_FFFF, 0xFFFF_FFFF * bs), (0x80, 0, bs)]  # keys of 64 bits
    buf = bytes(off) + b"".join(_table_rec(*r) for r in recs) + bytes(7)
    m = impl.chunk_map(buf, off, 80 * len(recs), bs)
    assert list(m.items()) == [(5 << 32, off + 80), (1 << 56 | 2 << 32 | 3, off + 160),
                               (0x80 << 56 | 1, off + 560), ((1 << 64) - 1, off + 480)]
    assert impl.chunk_map(buf, off, 0, bs) == {}
    # keys that differ in their lowest byte only (the sort makes one pass): equal keys stay in
    # record order, so the last record's position is the value
    recs = [(0, 0, bs), (0, 0, 2 * bs), (0, 0, bs), (0, 0, 0), (0, 0, 2 * bs), (0, 0, bs)]
    buf = bytes(off) + b"".join(_table_rec(*r) for r in recs)
    assert list(impl.chunk_map(buf, off, 80 * len(recs), bs).items()) == [
        (0, off + 240), (1, off + 400), (2, off + 320)]
    for args, message in (((off, 80 * len(recs) + 80, bs), "bootstrap is too short"),
                          ((-1, 80, bs), "bootstrap is too short"),
                          ((off, 81, bs), "not a multiple of 80"),
                          ((off, 80, 0), "bad block size")):
        with pytest.raises(rafs.RafsError, match=message):
            impl.chunk_map(buf, *args)


def _ordered(fn):
    return lambda *args: list(fn(*args).items())


_REC_FIELDS = st.tuples(st.sampled_from([0, 0, 1, 2, 0x7F, 0x80, 0xFF, 0x100, 1 << 31]),
                        st.sampled_from([0, 0, 1, 2, 0x100, 0xFF_FFFF, 1 << 24, 0xFFFF_FFFF]),
                        st.sampled_from([0, 1, 0x1000, 0x2001, 0x10_0000, 0xFFF_FFFF_F000,
                                         0x1000_0000_0000, (1 << 64) - 1]))


@need_c
@settings(max_examples=examples(1500), deadline=None, database=None)
@given(recs=st.lists(_REC_FIELDS, max_size=12).flatmap(  # with records repeated: equal keys
           lambda r: st.lists(st.sampled_from(r), max_size=40) if r else st.just(r)),
       junk=st.binary(max_size=90), off=st.integers(-2, 100),
       extra=st.sampled_from([0] * 12 + [-81, -80, -1, 1, 79, 80, 90]),
       bs=st.sampled_from([0x1000] * 9 + [0x200, 1, 0, -1]))
def test_chunk_map_twins_agree(recs, junk, off, extra, bs):
    buf = junk.ljust(max(off, 0), b"\0")[:max(off, 0)] + b"".join(_table_rec(*r) for r in recs) + junk
    args = (buf, off, 80 * len(recs) + extra, bs)
    assert outcome(_ordered(_speedups.chunk_map), *args) == \
        outcome(_ordered(_chunkmap.chunk_map), *args)


@need_c
def test_chunk_map_of_real_images(nydus_fixtures):
    images = [nydus_fixtures / "v6-zstd/bootstrap",
              *sorted((nydus_fixtures / "v6-blob-with-inline-bootstrap/blobs").iterdir())]
    for path in images:
        image = rafs.open_image(path)
        off, size = image._chunk_table
        assert size > 0
        args = (image.buf.data, off, size, image.block_size)
        assert list(_speedups.chunk_map(*args).items()) == list(_chunkmap.chunk_map(*args).items())


@need_c
@settings(max_examples=examples(1500), deadline=None, database=None)
@given(data=st.binary(max_size=300), version=st.sampled_from([1, 2]), count=st.integers(0, 20),
       index=st.integers(-3, 25))
def test_ci_twins_agree(data, version, count, index):
    args = (data, version, count, index)
    assert outcome(_speedups.ci_entry, *args) == outcome(_chunkmap.ci_entry, *args)


@pytest.mark.parametrize("impl", IMPLS)
def test_real_v6_ci_table(nydus_fixtures, impl):
    from rafs.localblob import LocalBlobs, walk

    image = rafs.open_image(nydus_fixtures / "v6-zstd/bootstrap")
    LocalBlobs(image, str(nydus_fixtures / "v6-zstd/blobs")).close()
    table = image._ci[0]
    chunks = {c.chunk_index: c for _p, i in walk(image) if i.is_reg for c in image.file_chunks(i.ino)}
    for index, c in chunks.items():
        c_off, c_size, d_off, d_size, flags = impl.ci_entry(table.data, 1, table.count, index)
        assert (c_off, c_size, d_off, d_size, bool(flags)) == (
            c.compressed_offset, c.compressed_size, c.uncompressed_offset, c.uncompressed_size,
            c.compressed)


def _chunk(blob: int, c_off: int, c_size: int, index: int = 0) -> rafs.ChunkInfo:
    return rafs.ChunkInfo(blob, index, 1, c_off, c_size, 0, 0x1000, bytes(32))


@pytest.mark.parametrize("impl", IMPLS)
def test_merge_runs_groups_adjacent_ranges_of_one_blob(impl):
    a, b, c, d = _chunk(0, 0, 10), _chunk(0, 10, 10), _chunk(0, 20, 10), _chunk(0, 35, 5)
    other = _chunk(1, 30, 10)
    # any order in; sorted by blob then offset; a gap or another blob starts a new run
    assert impl.merge_runs([d, other, c, a, b], 1 << 20) == [[a, b, c], [d], [other]]
    # a run spans at most max_size bytes; a chunk larger than that is a run of its own
    assert impl.merge_runs([a, b, c], 20) == [[a, b], [c]]
    assert impl.merge_runs([a, b], 5) == [[a], [b]]
    # the same chunk twice is fetched once
    assert impl.merge_runs([b, a, b, a], 1 << 20) == [[a, b]]
    assert impl.merge_runs([], 1 << 20) == []
    runs = impl.merge_runs([a, b], 1 << 20)
    assert runs[0][0] is a and runs[0][1] is b  # the caller's own ChunkInfo objects


_U64 = (1 << 64) - 1


@need_c
@settings(max_examples=examples(3000), deadline=None, database=None)
@given(spans=st.lists(st.tuples(st.integers(0, 2), st.sampled_from([0, 10, 20, 30, 40, _U64 - 5]),
                                st.sampled_from([0, 1, 10, 20, _U64])), max_size=70),
       dup=st.booleans(), max_size=st.sampled_from([-1, 0, 10, 20, 35, 1 << 62]))
def test_merge_runs_twins_agree(spans, dup, max_size):
    chunks = [_chunk(b, o, min(s, _U64 - o) if s == _U64 else s, i)
              for i, (b, o, s) in enumerate(spans)]
    if dup:
        chunks += chunks[::2]
    c, py = _speedups.merge_runs(chunks, max_size), _chunkmap.merge_runs(chunks, max_size)
    assert c == py
    assert [[id(x) for x in r] for r in c] == [[id(x) for x in r] for r in py]
    seen = {(x.blob_index, x.compressed_offset) for r in c for x in r}
    assert seen == {(x.blob_index, x.compressed_offset) for x in chunks}


_EMPTIED_DURING_MERGE = """
import gc
from rafs import _speedups
from rafs.model import ChunkInfo
L = [ChunkInfo(0, i, 0, 1000 * (8 - i), 10, 0, 10, bytes(32), 0) for i in range(8)]
class Bomb:
    def __del__(self):
        L.clear()
        Bomb.junk = [(i, -i, i) for i in range(10000)]
b = Bomb(); b.self = b; del b
hold = [[] for _ in range(200)]
gc.set_threshold(1)
runs = _speedups.merge_runs(L, 1 << 20)
gc.set_threshold(700)
print(len(L), [r[0].chunk_index for r in runs])
"""


_BEYOND = st.sampled_from([1 << 63, 1 << 64, (1 << 64) + 5, 1 << 80, -(1 << 63) - 1, -(1 << 80)])


def _beyond_cases() -> dict:
    """Each C chunk function with well-formed arguments (a table behind every offset)."""
    cs = 0x1000
    v5 = b"\0" * 16 + v5_records([cs] * 3 + [100], cs)
    # one v6 chunk: record (blob 0, chunk 5, at block 2), its index, the ci table of blob 0
    table = struct.pack("<32sIIIIQQQII", bytes(range(32)), 0, 1, 0x100, 0x1000, 0, 0x2000, 0, 5, 0)
    v6 = struct.pack("<HHI", 5, 1, 2) + table
    chunk_map = _chunkmap.chunk_map(v6, 8, len(table), 0x1000)
    ci = [(ci_v1(0, 0x100, 0x2000, 0x1000) * 6, 1, 6)]
    return {
        "v5_pieces": [v5, 16, 4, cs, 3 * cs + 100, 1, 10, 2 * cs, T],
        "v6_pieces": [v6, 0, 0x1000, 0x1000, 0, 0x1000, 0x1000, 1, chunk_map, ci, T],
        "v6_chunk": [v6, 0, 5, 2, 0x1000, 0, 0x1000, 1, chunk_map, ci, T],
        "chunk_map": [v6, 8, len(table), 0x1000],
        "ci_entry": [ci[0][0], 1, 6, 3],
    }


@need_c
@settings(max_examples=examples(400), deadline=None, database=None)
@given(name=st.sampled_from(["v5_pieces", "v6_pieces", "v6_chunk", "chunk_map", "ci_entry"]),
       data=st.data())
def test_twins_agree_on_ints_beyond_64_bits(name, data):
    """C holds offsets and counts in 64 bits; an argument that does not fit gets the twin's
    answer (result or error), never an OverflowError of its own."""
    args = _beyond_cases()[name]
    ints = [i for i, a in enumerate(args) if type(a) is int]
    for i in data.draw(st.lists(st.sampled_from(ints), min_size=1, max_size=3, unique=True)):
        args[i] = data.draw(_BEYOND)
    if name.startswith("v6_") and data.draw(st.booleans()):  # the ci table's version or count
        t = args[9][0]
        args[9] = [(t[0], data.draw(_BEYOND), t[2]) if data.draw(st.booleans())
                   else (t[0], t[1], data.draw(_BEYOND))]
    assert outcome(_speedups.__dict__[name], *args) == outcome(_chunkmap.__dict__[name], *args)


@need_c
@settings(max_examples=examples(300), deadline=None, database=None)
@given(field=st.sampled_from([0, 3, 4]), value=_BEYOND, max_size=st.sampled_from([10]) | _BEYOND)
def test_merge_runs_twins_agree_beyond_64_bits(field, value, max_size):
    fields = list(_chunk(0, 10, 10))
    fields[field] = value
    chunks = [_chunk(0, 0, 10), rafs.ChunkInfo(*fields), _chunk(0, 20, 10)]
    assert (outcome(_speedups.merge_runs, chunks, max_size)
            == outcome(_chunkmap.merge_runs, chunks, max_size))


@need_c
def test_merge_runs_survives_a_finaliser_that_empties_its_input():
    """A collection inside merge_runs may run a __del__ that clears the list passed in (found in
    review: the C code kept borrowed pointers into it, and crashed)."""
    r = subprocess.run([sys.executable, "-c", _EMPTIED_DURING_MERGE], capture_output=True,
                       text=True, timeout=60)
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["0", "[7,", "6,", "5,", "4,", "3,", "2,", "1,", "0]"]


_STALE_BUILD = """
import sys, types
stale = types.ModuleType("rafs._speedups")  # an older build: chunk lookup, no directory search
from rafs import _chunkmap
for name in ("ci_entry", "merge_runs", "v5_pieces", "v6_chunk", "v6_pieces"):
    setattr(stale, name, getattr(_chunkmap, name))
sys.modules["rafs._speedups"] = stale
from rafs import chunkmap, dirsearch, _dirsearch
print(chunkmap.IMPLEMENTATION, dirsearch.find_dirent is _dirsearch.find_dirent)
"""


def test_an_incomplete_c_build_is_not_used():
    """A C module built from older sources lacks newer functions: both selectors then use the
    pure-Python twins (and say so) rather than failing to import or mixing the two."""
    r = subprocess.run([sys.executable, "-c", _STALE_BUILD], capture_output=True, text=True,
                       timeout=60, env=os.environ | {"PYNYDUSD_PUREPYTHON": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["python", "True"]


_OLD_API_BUILD = """
import sys, types
old = types.ModuleType("rafs._speedups")  # every function, but the signatures before API 2
from rafs import _chunkmap, _dirsearch
for name in ("chunk_map", "ci_entry", "merge_runs", "v5_pieces", "v6_chunk", "v6_pieces"):
    setattr(old, name, getattr(_chunkmap, name))
for name in ("find_dirent", "v5_find_child"):
    setattr(old, name, getattr(_dirsearch, name))
sys.modules["rafs._speedups"] = old
from rafs import chunkmap
print(chunkmap.IMPLEMENTATION)
"""


def test_a_c_build_of_another_api_is_not_used():
    """A build whose functions take other arguments (no API 2: the pieces functions did not take
    the result types) is left unused, not called with arguments it does not expect."""
    r = subprocess.run([sys.executable, "-c", _OLD_API_BUILD], capture_output=True, text=True,
                       timeout=60, env=os.environ | {"PYNYDUSD_PUREPYTHON": ""})
    assert r.returncode == 0, r.stderr
    assert r.stdout.split() == ["python"]


class _Dicty(tuple):  # a tuple subclass with a __dict__: not laid out as a tuple
    pass


class _Info2(rafs.ChunkInfo):
    __slots__ = ()


class _Piece2(rafs.ChunkPiece):
    __slots__ = ()


class _Len3(tuple):  # a tuple subclass lying about its length
    def __len__(self):
        return 3


class _NotATuple:  # isinstance(x, tuple) through __class__, but no tuple
    __class__ = property(lambda self: tuple)

    def __len__(self):
        return 2

    def __iter__(self):
        return iter(rafs.model.PIECE_TYPES)


class _LyingMeta(type):  # class attributes that hide the real layout
    __basicsize__ = property(lambda cls: tuple.__basicsize__)
    __dictoffset__ = property(lambda cls: 0)
    __weakrefoffset__ = property(lambda cls: 0)


class _DictyLiar(tuple, metaclass=_LyingMeta):
    pass


@need_c
@pytest.mark.parametrize("types", [
    _Len3(rafs.model.PIECE_TYPES), _NotATuple(), (_DictyLiar, rafs.ChunkPiece),
    (time.struct_time, rafs.ChunkPiece), (rafs.ChunkInfo, os.terminal_size),
    None, (), (rafs.ChunkInfo,), [rafs.ChunkInfo, rafs.ChunkPiece], (rafs.ChunkInfo, dict),
    (_Dicty, rafs.ChunkPiece), (rafs.ChunkInfo, rafs.ChunkPiece, None), (rafs.ChunkInfo, 3),
    (_Info2, _Piece2), (tuple, _Piece2)], ids=repr)
def test_the_result_types_are_checked_alike(types):
    """The pieces functions build their results of the types passed (the C module holds none):
    both twins refuse the same bad ones with the same error, and build with the good ones."""
    cs = 0x1000
    v5 = b"\0" * 16 + v5_records([cs] * 3, cs)
    case = _beyond_cases()
    calls = {"v5_pieces": [v5, 16, 3, cs, 3 * cs, 1, 10, 2 * cs, types],
             "v6_pieces": case["v6_pieces"][:-1] + [types],
             "v6_chunk": case["v6_chunk"][:-1] + [types]}
    for name, args in calls.items():
        c, py = outcome(getattr(_speedups, name), *args), outcome(getattr(_chunkmap, name), *args)
        assert c == py, name
        if types in ((_Info2, _Piece2), (tuple, _Piece2)):
            assert c[0] == "ok", (name, c)
            result = c[1] if name == "v6_chunk" else c[1][0][0]
            assert type(result) is types[0], name
            assert all(type(p) is types[1] for p in (c[1] if name != "v6_chunk" else []))
        else:
            assert c[:2] == ("error", "TypeError") and "types must be" in c[2], (name, c)


_MAP_VALUE_DROPS_ITSELF = """
import rafs.model as m
from rafs import _speedups, chunkmap
key = chunkmap.chunk_key(0, 0, 0)
cmap = {}
class Pos:  # a chunk-map value whose __index__ drops it from the map (its last reference)
    def __index__(self):
        del cmap[key]
        return -5  # outside the buffer: C raises, naming the value
cmap[key] = Pos()
try:
    _speedups.v6_chunk(bytes(200), 0, 0, 0, 0x1000, -1, 0x1000, 1, cmap, [None], m.PIECE_TYPES)
except Exception as e:
    print(type(e).__name__, e)
"""


@need_c
def test_a_chunk_map_value_that_removes_itself_is_not_used_after_free():
    """Found in review: C kept a borrowed map value across its __index__, which can delete it
    (a crash under PYTHONMALLOC=debug). It now holds its own reference, converts the value once
    and names the position it got."""
    r = subprocess.run([sys.executable, "-c", _MAP_VALUE_DROPS_ITSELF], capture_output=True,
                       text=True, timeout=60, env=os.environ | {"PYTHONMALLOC": "debug"})
    assert r.returncode == 0, r.stderr
    assert r.stdout.startswith("RafsError bootstrap is too short: need 80 bytes at -0x5"), r.stdout
