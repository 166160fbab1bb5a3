"""Decoded training volumes, cached: in memory (LRU, bounded in bytes) and, with a cache folder, as
memory-mapped ``.npy`` files keyed by the source files' path, modification time and size."""

from __future__ import annotations

import hashlib
from collections import OrderedDict
from collections.abc import Callable
from pathlib import Path
from typing import Any

import numpy as np

from volsam.atomic import atomic_path

__all__ = ["ArrayCache"]


def _file_key(*paths: Path, extra: str = "") -> str:
    h = hashlib.sha1()
    for p in paths:
        st = p.stat()
        h.update(f"{p.resolve()}|{st.st_mtime_ns}|{st.st_size}|".encode())
    h.update(extra.encode())
    return h.hexdigest()[:20]


class ArrayCache:
    """Decoded arrays by key: in memory (LRU, at most ``max_bytes``) and, with ``cache_dir``, as ``.npy``.

    Disk entries are written atomically and memory-mapped when read. Pickling (DataLoader workers started
    with ``spawn``) drops the in-memory entries; they are re-read from disk or from the source files.
    """

    def __init__(self, cache_dir: str | Path | None = None, max_bytes: int = 4 << 30) -> None:
        self.cache_dir = Path(cache_dir) if cache_dir is not None else None
        self.max_bytes = int(max_bytes)
        self._mem: OrderedDict[str, np.ndarray] = OrderedDict()
        self._bytes = 0

    def __getstate__(self) -> dict[str, Any]:
        return {"cache_dir": self.cache_dir, "max_bytes": self.max_bytes}

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__init__(state["cache_dir"], state["max_bytes"])  # type: ignore[misc]

    def get(self, key: str, loader: Callable[[], np.ndarray]) -> np.ndarray:
        """The array cached under ``key``, produced by ``loader()`` on a miss."""
        if key in self._mem:
            self._mem.move_to_end(key)
            return self._mem[key]
        arr = None
        if self.cache_dir is not None:
            path = self.cache_dir / f"{key}.npy"
            if path.is_file():
                try:
                    arr = np.load(path, mmap_mode="r")
                except (OSError, ValueError):
                    arr = None
            if arr is None:
                self._write(path, loader())
                arr = np.load(path, mmap_mode="r")
        else:
            arr = loader()
        self._remember(key, arr)
        return arr

    def _write(self, path: Path, arr: np.ndarray) -> None:
        with atomic_path(path) as tmp, open(tmp, "wb") as f:
            np.save(f, arr)

    def _remember(self, key: str, arr: np.ndarray) -> None:
        size = 0 if isinstance(arr, np.memmap) else int(arr.nbytes)
        if size > self.max_bytes:
            return
        self._mem[key] = arr
        self._bytes += size
        while self._bytes > self.max_bytes and self._mem:
            _, old = self._mem.popitem(last=False)
            self._bytes -= 0 if isinstance(old, np.memmap) else int(old.nbytes)
