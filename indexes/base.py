"""The vector index seam: one small protocol, and the base class every backend shares.

Every backend stores vectors under caller-chosen int64 ids and returns similarities
(higher is better) whatever the metric, so results from different backends can be compared
and fused:

- ``cosine``: cosine similarity (vectors and queries are L2-normalised on the way in);
- ``ip``: inner product;
- ``l2``: negative squared Euclidean distance.

Missing results (fewer than k live vectors) are id -1 with score -inf. Input checks live in
indexes.checks, numeric kernels in indexes.kernels, the slot table in indexes.slots, files in
indexes.storage.
"""
from __future__ import annotations

import os
from pathlib import Path
from typing import Any, Callable, Protocol, runtime_checkable

import numpy as np

from indexes.copies import Copies
from indexes.checks import check_dim_metric, check_ids, check_k, check_remove_ids, check_vectors, normalize_rows
from indexes.kernels import empty_result
from indexes.locking import ReadWriteLock
from indexes.slots import SlotTable
from indexes.storage import FORMAT_VERSION, MANIFEST, IndexFileError, atomic_directory, write_manifest


@runtime_checkable
class VectorIndex(Protocol):
    """What every backend provides. ids: (n,) int64; vectors/queries: (n, dim) float32."""

    name: str
    dim: int
    metric: str

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def ids(self) -> np.ndarray: ...

    def set_search_params(self, **params: Any) -> None: ...

    def memory_bytes(self) -> int: ...

    def save(self, directory: str) -> None: ...

    def __len__(self) -> int: ...


class BaseIndex:
    """Shared behaviour: validation at the edge, the lock, cosine normalisation, save/manifest.

    Subclasses implement ``_add(ids, vectors)``, ``_search(queries, k)``, ``_remove(ids)``,
    ``_ids()``, ``_count()``, ``_stored(ids)``, ``_memory_bytes()``, ``_save_files(tmpdir)`` and
    ``_load_files(directory, manifest)`` over their own structure; vectors reach them validated (and
    normalised for cosine), and each distinct vector only once (indexes.copies: the other ids with
    the same vector are copies this layer keeps, and searches return them next to their holder).
    """

    name = "base"

    def __init__(self, dim: int, metric: str = "cosine", **params: Any) -> None:
        self.dim, self.metric = check_dim_metric(dim, metric)
        self.params = params
        self.lock = ReadWriteLock()
        self.copies = Copies(self.dim)

    def _prepare(self, vectors: Any, what: str) -> np.ndarray:
        array = check_vectors(vectors, self.dim, what)
        return normalize_rows(array) if self.metric == "cosine" else array

    def add(self, ids: Any, vectors: Any) -> None:
        """Add vectors under caller ids; an id already present is replaced."""
        array = self._prepare(vectors, "vectors")
        id_array = check_ids(ids, len(array))
        if not len(array):
            return
        with self.lock.writing():
            self._release(id_array)  # an id added before is replaced: it leaves its old vector first
            keep = self.copies.admit(id_array, array)
            if keep.any():
                self._add(id_array[keep], array[keep])

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(nq, k) int64 ids and float32 similarities, best first; -1 / -inf where fewer than k."""
        k = check_k(k)
        array = self._prepare(queries, "queries")
        if not len(array):
            return empty_result(0, k)
        with self.lock.reading():
            if len(self) == 0:
                return empty_result(len(array), k)
            ids, scores = self._search(array, min(k, self._count()))
            if ids.shape[1] < k or self.copies.copies:
                return self.copies.expand(ids, scores, k)
            return ids, scores

    def remove(self, ids: Any) -> None:
        """Remove ids; ids not present are ignored."""
        id_array = check_remove_ids(ids)
        if not len(id_array):
            return
        with self.lock.writing():
            self._release(id_array)

    def _release(self, ids: np.ndarray) -> None:
        """Remove ids; a removed holder of copies is replaced in the structure by its first copy."""
        live, stored = self._stored(ids)
        drop, heirs, vectors = self.copies.release(ids, ids[live], stored)
        if len(drop):
            self._remove(drop)
        if len(heirs):
            self._add(heirs, vectors)

    def ids(self) -> np.ndarray:
        """The live ids, ascending: what the index holds, so its owner can compare it with the store."""
        with self.lock.reading():
            return np.sort(np.concatenate([np.asarray(self._ids(), dtype=np.int64), self.copies.copy_ids()]))

    def __len__(self) -> int:
        """Live ids (copies of a vector included)."""
        return self._count() + len(self.copies)

    search_param_names: tuple[str, ...] = ()  # what set_search_params accepts

    def set_search_params(self, **params: Any) -> None:
        """Change search-time parameters (the recall/speed trade-off) without rebuilding;
        ``search_param_names`` lists them (ef_search, nprobe, rerank, probes, ...)."""
        unknown = sorted(set(params) - set(self.search_param_names))
        if unknown:
            raise ValueError(f"{self.name} has no search parameter {', '.join(unknown)}; it has: "
                             f"{', '.join(self.search_param_names) or 'none'}")
        with self.lock.writing():
            for key, value in params.items():
                self._set_search_param(key, value)

    def memory_bytes(self) -> int:
        """Bytes the index holds in RAM (memory-mapped vectors count only when resident)."""
        return self._memory_bytes() + self.copies.memory_bytes()

    def raw_search(self, queries: np.ndarray, k: int) -> Callable[[], object] | None:
        """The wrapped library's own search over the same structure, without this layer's checks,
        locks or id mapping (queries already normalised), to measure what the layer costs; None
        when there is no such single call."""
        return None

    def manifest(self) -> dict:
        return {"backend": self.name, "params": self.params, "dim": self.dim, "metric": self.metric,
                "count": len(self), "format_version": FORMAT_VERSION}

    def save(self, directory: str | os.PathLike) -> None:
        """Write backend files and manifest.json to a temporary directory, then rename into place."""
        with self.lock.writing():
            with atomic_directory(directory) as tmp:
                self._save_files(tmp)
                self.copies.save(tmp)
                write_manifest(tmp, self.manifest())

    @classmethod
    def load(cls, directory: str | os.PathLike, manifest: dict) -> "BaseIndex":
        try:
            index = cls(manifest["dim"], manifest["metric"], **manifest["params"])
        except (TypeError, ValueError) as exc:
            raise IndexFileError(f"index manifest {Path(directory) / MANIFEST}: bad {cls.name} parameters: {exc}") from exc
        index._load_files(Path(directory), manifest)
        index.copies = Copies.load(Path(directory), index.dim)
        if len(index) != manifest["count"]:
            raise IndexFileError(
                f"index manifest {Path(directory) / MANIFEST} says {manifest['count']} vectors, "
                f"the {cls.name} files hold {len(index)}"
            )
        return index

    def __repr__(self) -> str:
        return f"<{self.name} index dim={self.dim} metric={self.metric} count={len(self)} params={self.params}>"

    # subclasses
    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        raise NotImplementedError

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        raise NotImplementedError

    def _remove(self, ids: np.ndarray) -> None:
        raise NotImplementedError

    def _ids(self) -> np.ndarray:
        raise NotImplementedError

    def _set_search_param(self, key: str, value: Any) -> None:
        raise NotImplementedError

    def _save_files(self, directory: Path) -> None:
        raise NotImplementedError

    def _load_files(self, directory: Path, manifest: dict) -> None:
        raise NotImplementedError

    def _count(self) -> int:
        """Vectors the structure holds (each distinct vector once)."""
        raise NotImplementedError

    def _stored(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(which ids the structure holds, their vectors as stored): what a removal hands over."""
        raise NotImplementedError

    def _memory_bytes(self) -> int:
        raise NotImplementedError


class TombstoneIndex(BaseIndex):
    """A backend that cannot delete natively: ``self.slots`` (a SlotTable) marks removed ids dead,
    searches over-fetch past them, and ``_rebuild()`` compacts once too many are dead."""

    slots: SlotTable

    def _rebuild(self) -> None:
        raise NotImplementedError

    def _remove(self, ids: np.ndarray) -> None:
        self.slots.remove(ids)
        if self.slots.needs_compaction():
            self._rebuild()

    def _ids(self) -> np.ndarray:
        return self.slots.live_ids()

    def _count(self) -> int:
        return self.slots.live

    def _stored(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        slots = self.slots.slots_of(ids)
        live = slots >= 0
        return live, self.vectors.take(slots[live])
