"""RAFS v5/v6 format layer: bytes in, immutable objects out. No FUSE, no network."""

from .errors import ChunkDataError, RafsError, UnsupportedImageError
from .model import BlobInfo, ChunkInfo, ChunkPiece, Image, Inode, is_valid_blob_id
from .open import open_image

__all__ = [
    "BlobInfo", "ChunkDataError", "ChunkInfo", "ChunkPiece", "Image", "Inode", "RafsError",
    "UnsupportedImageError", "is_valid_blob_id", "open_image",
]
