"""nnInteractive's packed-array wire format ("NNIA", version 1), read with limits checked before allocating.

Layout (little-endian), as documented by ``nninteractive-client``'s ``serialization`` module:

    b"NNIA" | version u8 (1) | codec u8 (1 ZSTD, 2 LZ4) | ndim u8 | dtype_len u8 | dtype ascii (numpy name)
    | shape: ndim x i64 | nchunks u32 | per chunk: ulen u64, clen u64, clen bytes of one blosc2 frame

Chunks hold the C-ordered array bytes in order, each at most 1 GiB uncompressed (blosc2's per-call cap).
"""

from __future__ import annotations

import struct

import blosc2
import numpy as np

MAGIC = b"NNIA"
VERSION = 1
_CODECS = {1: blosc2.Codec.ZSTD, 2: blosc2.Codec.LZ4}
_CHUNK = 1 << 28  # bytes per chunk when packing (well under blosc2's 2 GiB per call)
_MAX_NDIM = 8

NUMERIC_DTYPES = frozenset(
    {"bool", "uint8", "int8", "uint16", "int16", "uint32", "int32", "uint64", "int64", "float16", "float32", "float64"}
)
"""Array dtypes accepted from a client (no objects, strings or structured types)."""


def pack(array: np.ndarray, level: int = 3) -> bytes:
    """An array as one NNIA message (ZSTD, no shuffle: masks compress best without it)."""
    arr = np.ascontiguousarray(array)
    if arr.dtype.byteorder == ">":
        arr = arr.astype(arr.dtype.newbyteorder("<"))
    name = arr.dtype.name.encode("ascii")
    raw = memoryview(arr).cast("B") if arr.size else memoryview(b"")
    # Chunk boundaries on whole elements: blosc2 needs a length that is a multiple of typesize.
    step = _CHUNK - _CHUNK % max(arr.itemsize, 1)
    starts = range(0, raw.nbytes, step) if raw.nbytes else []
    parts = [
        struct.pack(f"<4sBBBB{len(name)}s", MAGIC, VERSION, 1, arr.ndim, len(name), name),
        struct.pack(f"<{arr.ndim}q", *arr.shape),
        struct.pack("<I", len(starts)),
    ]
    for a in starts:
        b = min(a + step, raw.nbytes)
        frame = blosc2.compress2(
            raw[a:b], typesize=arr.itemsize, codec=blosc2.Codec.ZSTD, clevel=level, filters=[blosc2.Filter.NOFILTER]
        )
        parts += [struct.pack("<QQ", b - a, len(frame)), frame]
    return b"".join(parts)


def peek(buf: bytes) -> tuple[int, int]:
    """(elements, bytes per element) an NNIA message declares, read from its header alone, so the memory
    its decoding will take can be accounted first. ``ValueError`` (one line) for a malformed header."""
    if len(buf) < 8:
        raise ValueError("packed array too short (expected an NNIA message)")
    magic, _, _, nd, name_len = struct.unpack_from("<4sBBBB", buf, 0)
    if magic != MAGIC or nd > _MAX_NDIM:
        raise ValueError("not an NNIA packed array (bad magic or dimensions)")
    try:
        name = bytes(buf[8 : 8 + name_len]).decode("ascii")
        dims = struct.unpack_from(f"<{nd}q", buf, 8 + name_len)
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"truncated NNIA header: {e}") from e
    if name not in NUMERIC_DTYPES:
        raise ValueError(f"array dtype {name!r} not accepted; expected one of {', '.join(sorted(NUMERIC_DTYPES))}")
    count = 1
    for d in dims:
        count *= max(d, 0)
    return count, np.dtype(name).itemsize


def unpack(
    buf: bytes,
    *,
    max_elements: int,
    dtypes: frozenset[str] = NUMERIC_DTYPES,
    shape: tuple[int, ...] | None = None,
    ndim: int | None = None,
) -> np.ndarray:
    """Decode one NNIA message, refusing (``ValueError``, one line) anything malformed, of another ``shape``
    or ``ndim`` than required, of a dtype outside ``dtypes``, or over ``max_elements`` elements, before
    any array is allocated."""
    if len(buf) < 8:
        raise ValueError("packed array too short (expected an NNIA message)")
    magic, version, codec, nd, name_len = struct.unpack_from("<4sBBBB", buf, 0)
    if magic != MAGIC:
        raise ValueError("not an NNIA packed array (bad magic)")
    if version != VERSION or codec not in _CODECS:
        raise ValueError(f"unsupported NNIA version {version} or codec {codec} (expected version 1, codec 1 or 2)")
    if nd > _MAX_NDIM or (ndim is not None and nd != ndim):
        raise ValueError(f"expected a {ndim or '<= 8'}-dimensional array, got {nd} dimensions")
    off = 8
    try:
        name = bytes(buf[off : off + name_len]).decode("ascii")
        dims = struct.unpack_from(f"<{nd}q", buf, off + name_len)
        off += name_len + 8 * nd
        (nchunks,) = struct.unpack_from("<I", buf, off)
    except (struct.error, UnicodeDecodeError) as e:
        raise ValueError(f"truncated NNIA header: {e}") from e
    off += 4
    if name not in dtypes:
        raise ValueError(f"array dtype {name!r} not accepted; expected one of {', '.join(sorted(dtypes))}")
    if any(d < 0 for d in dims):
        raise ValueError(f"negative array shape {dims}")
    if shape is not None and tuple(dims) != tuple(shape):
        raise ValueError(f"expected an array of shape {tuple(shape)}, got {tuple(dims)}")
    count = 1
    for d in dims:
        count *= d  # Python ints: no overflow on hostile shapes
    if count > max_elements:
        raise ValueError(f"array of shape {tuple(dims)} has {count} elements, over the limit of {max_elements}")
    dtype = np.dtype(name)
    total = count * dtype.itemsize
    out = np.empty(count, dtype=dtype)
    flat = out.view(np.uint8)
    written = 0
    mv = memoryview(buf)
    for _ in range(nchunks):
        if off + 16 > len(buf):
            raise ValueError("truncated NNIA chunk header")
        ulen, clen = struct.unpack_from("<QQ", buf, off)
        off += 16
        if written + ulen > total or off + clen > len(buf):
            raise ValueError("NNIA chunk larger than the declared array or the message")
        frame = mv[off : off + clen]
        try:
            nbytes, _, _ = blosc2.get_cbuffer_sizes(frame)
        except (RuntimeError, ValueError, TypeError) as e:
            raise ValueError(f"corrupt blosc2 frame: {e}") from e
        if nbytes != ulen:
            raise ValueError(f"NNIA chunk says {ulen} bytes, its blosc2 frame {nbytes}")
        if ulen:
            try:
                blosc2.decompress2(frame, dst=flat[written : written + ulen])
            except (RuntimeError, ValueError, TypeError) as e:
                raise ValueError(f"corrupt blosc2 frame: {e}") from e
        written += ulen
        off += clen
    if written != total:
        raise ValueError(f"NNIA payload holds {written} bytes, the declared array {total}")
    return out.reshape(dims)
