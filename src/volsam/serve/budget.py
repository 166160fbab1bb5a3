"""What sessions cost in memory, as the server accounts it (:class:`~volsam.serve.store.SessionStore`),
and the default budget. Figures measured with tracemalloc on a 128^3 image (``tests/serve/test_limits.py``
keeps them honest): a REST session holds 12 bytes a voxel for a float32 file (the Volume's array, the
session's C-ordered float32 copy, the label map and masks; 16 for float64, 10 for int16); a protocol lease
5 (the float32 image, label map, and the client's buffer as last sent). Decoding adds the raw array
(its own dtype) and the float32 conversion on top, while it runs."""

from __future__ import annotations

import os
import re

__all__ = [
    "SESSION_BYTES_PER_VOXEL",
    "default_max_bytes",
    "image_bytes",
    "load_bytes",
    "parse_bytes",
    "session_bytes",
]

SESSION_BYTES_PER_VOXEL = 16
"""Bytes a session is accounted per image voxel (the largest measured, float64 through the REST API)."""
SESSION_OVERHEAD_BYTES = 64 << 20
"""Bytes a session is accounted besides its voxels: an allowance (not measured per model) for its cached
window embeddings and a prompt's working set."""


def session_bytes(voxels: int) -> int:
    """Accounted bytes of a session holding an image of ``voxels`` voxels (0: no image yet)."""
    return SESSION_OVERHEAD_BYTES + SESSION_BYTES_PER_VOXEL * voxels


def image_bytes(voxels: int) -> int:
    """What an image of ``voxels`` voxels adds to a session that already exists."""
    return SESSION_BYTES_PER_VOXEL * voxels


def load_bytes(voxels: int, itemsize: int = 16) -> int:
    """Transient bytes while an image of ``voxels`` voxels stored as ``itemsize``-byte values is decoded
    and converted to float32 (``itemsize`` 16 when not known before reading: complex128, the widest a
    reader accepts; volsam.io reads a complex NIfTI as its real part)."""
    return voxels * (itemsize + 4)


def default_max_bytes() -> int:
    """Half the memory available when the server starts (``MemAvailable``; half of physical memory where
    /proc/meminfo is missing)."""
    try:
        with open("/proc/meminfo") as f:
            for line in f:
                if line.startswith("MemAvailable:"):
                    return int(line.split()[1]) * 1024 // 2
    except OSError:
        pass
    return os.sysconf("SC_PAGE_SIZE") * os.sysconf("SC_PHYS_PAGES") // 2


_UNITS = {"": 1, "K": 1 << 10, "M": 1 << 20, "G": 1 << 30, "T": 1 << 40}


def parse_bytes(text: str) -> int:
    """``"8G"``, ``"512M"``, ``"1.5G"``, ``"1073741824"`` -> bytes (binary units; a trailing ``B``/``iB``
    is allowed). ValueError (one line) otherwise."""
    m = re.fullmatch(r"\s*(\d+(?:\.\d+)?)\s*([KMGT]?)(?:i?B)?\s*", text, re.IGNORECASE)
    if m is None:
        raise ValueError(f"expected a size in bytes such as 8G, 512M or 1073741824, got {text!r}")
    n = int(float(m.group(1)) * _UNITS[m.group(2).upper()])
    if n <= 0:
        raise ValueError(f"expected a positive size, got {text!r}")
    return n
