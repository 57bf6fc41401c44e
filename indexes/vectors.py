"""Full-precision vectors by slot, for exact re-ranking: in RAM, or in a memory-mapped file.

Compressed backends (pq, ivfpq) keep only codes in RAM; the float32 vectors their re-ranking
reads live in a file the OS pages in on demand. A loaded index maps the saved ``.npy``
read-only and copies it to a private working file only when it is first changed, so the
saved directory is never written in place.
"""
from __future__ import annotations

import shutil
import tempfile
import weakref
from pathlib import Path

import numpy as np

from indexes.storage import IndexFileError


def _remove_dir(path: str) -> None:
    shutil.rmtree(path, ignore_errors=True)


class SlotVectors:
    """(size, dim) float32 rows addressed by slot; grows by doubling."""

    def __init__(self, dim: int, memory_mapped: bool = False) -> None:
        self.dim = dim
        self.memory_mapped = memory_mapped
        self.size = 0
        self._workdir: str | None = None
        self._generation = 0
        self._data = np.empty((0, dim), dtype=np.float32)

    @property
    def rows(self) -> np.ndarray:
        """The live part, (size, dim); a view, possibly of a memory map."""
        return self._data[: self.size]

    def _allocate(self, capacity: int) -> np.ndarray:
        """A fresh (capacity, dim) buffer: RAM, or a new file in this object's working dir."""
        if not self.memory_mapped:
            return np.empty((capacity, self.dim), dtype=np.float32)
        if self._workdir is None:
            self._workdir = tempfile.mkdtemp(prefix="rag-vectors-")
            weakref.finalize(self, _remove_dir, self._workdir)
        self._generation += 1
        path = Path(self._workdir) / f"vectors-{self._generation}.f32"
        return np.memmap(path, dtype=np.float32, mode="w+", shape=(capacity, self.dim))

    def _switch_to(self, data: np.ndarray) -> None:
        """Use ``data`` from now on; older working files are deleted (open maps stay valid)."""
        self._data = data
        if self._workdir is not None:
            current = Path(data.filename).name if isinstance(data, np.memmap) and data.filename else None
            for stale in Path(self._workdir).glob("vectors-*.f32"):
                if stale.name != current:
                    stale.unlink(missing_ok=True)

    def _copy_rows(self, target: np.ndarray, source: np.ndarray, slots: np.ndarray | None, count: int) -> None:
        for start in range(0, count, 65536):
            stop = min(count, start + 65536)
            target[start:stop] = source[start:stop] if slots is None else source[slots[start:stop]]

    def _reserve(self, capacity: int, writable_copy: bool = False) -> None:
        if capacity <= len(self._data) and not writable_copy:
            return
        grown = self._allocate(max(capacity, 2 * len(self._data), 1024))
        self._copy_rows(grown, self._data, None, self.size)
        self._switch_to(grown)

    def append(self, vectors: np.ndarray) -> None:
        writable = self.memory_mapped and isinstance(self._data, np.memmap) and self._data.mode == "r"
        self._reserve(self.size + len(vectors), writable_copy=writable)
        self._data[self.size : self.size + len(vectors)] = vectors
        self.size += len(vectors)

    @property
    def buffer(self) -> np.ndarray:
        """The whole C-contiguous (capacity, dim) buffer: rows past ``size`` are unused."""
        return self._data

    def take(self, slots: np.ndarray) -> np.ndarray:
        """Rows at slots, as a new in-RAM array."""
        return self._data[slots]

    def compact(self, keep: np.ndarray) -> None:
        """Keep only rows ``keep`` (old slots, ascending), renumbered 0..len(keep)-1."""
        kept = self._allocate(max(len(keep), 1024))
        self._copy_rows(kept, self._data, keep, len(keep))
        self.size = len(keep)
        self._switch_to(kept)

    def resident_bytes(self) -> int:
        """Bytes these vectors take in RAM (0 when memory-mapped: the page cache may hold them)."""
        return 0 if self.memory_mapped else int(self.size * self.dim * 4)

    def save(self, path: Path) -> None:
        out = np.lib.format.open_memmap(path, mode="w+", dtype=np.float32, shape=(self.size, self.dim))
        for start in range(0, self.size, 65536):
            out[start : start + 65536] = self._data[start : min(self.size, start + 65536)]
        out.flush()
        del out

    @classmethod
    def load(cls, path: Path, dim: int, memory_mapped: bool) -> "SlotVectors":
        try:
            data = np.load(path, mmap_mode="r" if memory_mapped else None, allow_pickle=False)
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"index file is corrupt: {path}: {exc}") from exc
        if data.ndim != 2 or data.shape[1] != dim or data.dtype != np.float32:
            raise IndexFileError(f"index file {path} holds {data.dtype} {data.shape}, expected float32 (n, {dim})")
        vectors = cls(dim, memory_mapped)
        vectors._data = data
        vectors.size = len(data)
        return vectors
