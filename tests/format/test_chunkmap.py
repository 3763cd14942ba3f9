"""The C chunk lookup and its pure-Python twin: identical results, identical errors."""

from __future__ import annotations

import os
import struct

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

import rafs
from rafs import _chunkmap, chunkmap

try:
    from rafs import _speedups
except ImportError:  # the optional build failed
    _speedups = None

IMPLS = [pytest.param(_chunkmap, id="python"),
         pytest.param(_speedups, id="c", marks=pytest.mark.skipif(
             _speedups is None, reason="rafs._speedups was not built (no compiler?)"))]
need_c = pytest.mark.skipif(_speedups is None, reason="rafs._speedups was not built")


def outcome(fn, *args):
    """The result, or the exception's type and message: what both twins must agree on."""
    try:
        return ("ok", fn(*args))
    except Exception as e:  # noqa: BLE001 - comparing whatever happens
        return ("error", type(e).__name__, str(e))


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
    pieces = impl.v5_pieces(buf, 16, 11, cs, size, 1, 100, 2 * cs)
    assert [(p.chunk.chunk_index, p.offset, p.length) for p in pieces] == [
        (0, 100, cs - 100), (1, 0, cs), (2, 0, 100)]
    assert all(type(p) is rafs.ChunkPiece and type(p.chunk) is rafs.ChunkInfo for p in pieces)
    tail = impl.v5_pieces(buf, 16, 11, cs, size, 1, size - 10, 1000)
    assert [(p.chunk.uncompressed_size, p.offset, p.length) for p in tail] == [(123, 113, 10)]
    # a chunk list shorter than the file reads the rest as a hole
    short = impl.v5_pieces(buf, 16, 2, cs, size, 1, 0, 3 * cs)
    assert short[2].chunk is None and short[2].length == cs
    # ... as one piece, however large the file claims to be (found by tools/fuzz: a lying i_size
    # once made a whole-file lookup produce one hole piece per missing chunk, for ever)
    huge = impl.v5_pieces(buf, 16, 2, cs, 1 << 62, 1, 0, 1 << 62)
    assert [(p.chunk is None, p.length) for p in huge] == [(False, cs), (False, cs),
                                                           (True, (1 << 62) - 2 * cs)]


@need_c
@settings(max_examples=1500, deadline=None, database=None)
@given(buf=st.binary(max_size=600), rec_off=st.integers(0, 700), count=st.integers(0, 40),
       cs=st.sampled_from([1, 7, 0x1000, 0x10000]), fsize=st.integers(0, 1 << 20),
       nblobs=st.integers(0, 3), offset=st.integers(0, 1 << 20), size=st.integers(0, 1 << 18))
def test_v5_twins_agree_on_random_tables(buf, rec_off, count, cs, fsize, nblobs, offset, size):
    args = (buf, rec_off, count, cs, fsize, nblobs, offset, size)
    assert outcome(_speedups.v5_pieces, *args) == outcome(_chunkmap.v5_pieces, *args)


@need_c
@settings(max_examples=1500, deadline=None, database=None)
@given(buf=st.binary(max_size=400), idx_off=st.integers(0, 500),
       cs=st.sampled_from([1, 0x1000, 0x100000]), fsize=st.integers(0, 1 << 24),
       offset=st.integers(0, 1 << 24), size=st.integers(0, 1 << 22))
def test_v6_twins_agree_on_random_indexes(buf, idx_off, cs, fsize, offset, size):
    args = (buf, idx_off, cs, fsize, offset, size)
    assert outcome(_speedups.v6_indexes, *args) == outcome(_chunkmap.v6_indexes, *args)


@need_c
@settings(max_examples=1500, deadline=None, database=None)
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
