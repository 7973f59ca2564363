"""SHA-256 of files, the one helper every module that records or checks a file's hash uses."""

import hashlib
from pathlib import Path

CHUNK = 1 << 20  # 1 MiB reads keep hashing large HDF5 files and model weights at constant memory


def file_sha256(path: Path) -> str:
    """Hex SHA-256 of a file's bytes, read in chunks."""
    digest = hashlib.sha256()
    with Path(path).open("rb") as handle:
        while chunk := handle.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def bytes_sha256(data: bytes) -> str:
    """Hex SHA-256 of bytes already in memory (a file read once to be hashed and parsed)."""
    return hashlib.sha256(data).hexdigest()
