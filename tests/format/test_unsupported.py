"""Features this implementation does not serve are refused by name, never read as wrong data."""

from __future__ import annotations

import struct

import pytest

import rafs
from rafs.buf import Buf
from rafs.v5 import V5Image
from rafs.v6 import V6Image

BLOB_FEATURES = 4096 + 84  # v6 blob table entry 0, features field
EXT_FLAGS = 1152


@pytest.fixture
def v6(nydus_fixtures) -> bytearray:
    return bytearray((nydus_fixtures / "v6-zstd/bootstrap").read_bytes())


@pytest.mark.parametrize("bits, feature", [
    (0x8 | 0x4, "zran"), (0x80 | 0x4, "batch"), (0x100 | 0x4, "encryption"),
    (0x40, "tarfs"), (0x10, "separate blob meta"), (0x800, "external blobs")])
def test_v6_blob_features_refused_by_name(v6, bits, feature):
    (features,) = struct.unpack_from("<I", v6, BLOB_FEATURES)
    struct.pack_into("<I", v6, BLOB_FEATURES, features | bits)
    with pytest.raises(rafs.UnsupportedImageError, match=feature) as e:
        V6Image(Buf(bytes(v6)), "x")
    assert e.value.feature == feature


@pytest.mark.parametrize("flag, feature", [(0x200, "tarfs"), (0x0200_0000, "encryption")])
def test_v6_superblock_flags_refused_by_name(v6, flag, feature):
    (flags,) = struct.unpack_from("<Q", v6, EXT_FLAGS)
    struct.pack_into("<Q", v6, EXT_FLAGS, flags | flag)
    with pytest.raises(rafs.UnsupportedImageError, match=feature):
        V6Image(Buf(bytes(v6)), "x")


def test_v5_encryption_refused(nydus_fixtures):
    data = bytearray((nydus_fixtures / "v5-sha256-none/bootstrap").read_bytes())
    (flags,) = struct.unpack_from("<Q", data, 16)
    struct.pack_into("<Q", data, 16, flags | 0x0200_0000)
    with pytest.raises(rafs.UnsupportedImageError, match="encryption"):
        V5Image(Buf(bytes(data)), "x")


def test_errors_are_value_errors_naming_the_field(v6):
    struct.pack_into("<I", v6, 1152 + 20, 12345)  # chunk size not a power of two
    with pytest.raises(ValueError, match=r"s_chunk_size=12345 at offset 0x494"):
        V6Image(Buf(bytes(v6)), "x")
