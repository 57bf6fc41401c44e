"""The vector index seam: one small protocol, shared input checks, and the on-disk manifest.

Every backend stores vectors under caller-chosen int64 ids and returns similarities
(higher is better) whatever the metric, so results from different backends can be compared
and fused:

- ``cosine``: cosine similarity (vectors and queries are L2-normalised on the way in);
- ``ip``: inner product;
- ``l2``: negative squared Euclidean distance.

Missing results (fewer than k live vectors) are id -1 with score -inf.
"""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Any, Iterator, Protocol, runtime_checkable

import numpy as np

METRICS = ("cosine", "ip", "l2")
FORMAT_VERSION = 1
MANIFEST = "manifest.json"
MISSING_SCORE = np.float32(-np.inf)


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

    def save(self, directory: str) -> None: ...

    def __len__(self) -> int: ...


class IndexFileError(ValueError):
    """An index directory that cannot be read: missing, corrupt or mismatched files."""


# --- input checks: every public entry point validates here, inner code trusts its inputs ---


def check_dim_metric(dim: int, metric: str) -> tuple[int, str]:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return int(dim), metric


def check_vectors(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """(n, dim) float32 C-contiguous; a single 1-D vector becomes one row."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric arrays: {exc}") from exc
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, {dim}), got shape {array.shape}")
    if array.shape[1] != dim:
        raise ValueError(f"{what} have dimension {array.shape[1]}, the index expects {dim}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"{what} contain NaN or infinite values (first at row {bad})")
    return np.ascontiguousarray(array)


def _id_array(ids: Any) -> np.ndarray:
    """ids as a 1-D array (a scalar becomes one id)."""
    array = np.asarray(ids)
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1:
        raise ValueError(f"ids must be a 1-D array, got shape {array.shape}")
    return array


def check_ids(ids: Any, n: int) -> np.ndarray:
    """(n,) int64, non-negative (-1 means 'no result'), no duplicates within one call."""
    array = _id_array(ids)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"ids must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if len(array) != n:
        raise ValueError(f"got {len(array)} ids for {n} vectors; they must be the same length")
    if array.size and array.min() < 0:
        raise ValueError(f"ids must be non-negative (-1 marks a missing result), got {int(array.min())}")
    if len(np.unique(array)) != len(array):
        values, counts = np.unique(array, return_counts=True)
        raise ValueError(f"duplicate ids in one call: {values[counts > 1][:5].tolist()}")
    return array


def check_remove_ids(ids: Any) -> np.ndarray:
    array = _id_array(ids)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {array.dtype}")
    return np.unique(array.astype(np.int64))


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised copy; a zero vector has no direction, so cosine cannot use it."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"zero vector at row {int(np.flatnonzero(norms[:, 0] == 0)[0])}: cosine needs a direction")
    return (vectors / norms).astype(np.float32, copy=False)


def exact_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) similarities; vectors are already normalised for cosine."""
    if metric == "l2":
        return -(
            (queries * queries).sum(1)[:, None] - 2 * queries @ vectors.T + (vectors * vectors).sum(1)[None, :]
        )
    return queries @ vectors.T


def pair_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """(n,) similarity of row i of queries with row i of vectors."""
    if metric == "l2":
        diff = queries - vectors
        return -np.einsum("ij,ij->i", diff, diff)
    return np.einsum("ij,ij->i", queries, vectors)


def rerank_exact(queries: np.ndarray, slots: np.ndarray, vectors: np.ndarray, metric: str, k: int
                 ) -> tuple[np.ndarray, np.ndarray]:
    """Exact top k among candidate slots: queries (nq, dim), slots (nq, c) with -1 for none,
    vectors (>= slots, dim) float32 in RAM or memory-mapped.

    faiss computes each query's distances to its candidates straight from ``vectors`` (no copy
    of the candidates; a memory map is paged in on demand). Returns (nq, k) slots and similarities.
    """
    import faiss

    nq, c = slots.shape
    valid = slots >= 0
    safe = np.ascontiguousarray(np.where(valid, slots, 0), dtype=np.int64)
    scores = np.empty((nq, c), dtype=np.float32)
    by_index = faiss.fvec_L2sqr_by_idx if metric == "l2" else faiss.fvec_inner_products_by_idx
    by_index(faiss.swig_ptr(scores), faiss.swig_ptr(np.ascontiguousarray(queries)), faiss.swig_ptr(vectors),
             faiss.swig_ptr(safe), vectors.shape[1], nq, c)
    if metric == "l2":
        np.negative(scores, out=scores)
    scores[~valid] = -np.inf
    take = min(k, c)
    top = np.argpartition(-scores, take - 1, axis=1)[:, :take] if take < c else np.tile(np.arange(c), (nq, 1))
    top_scores = np.take_along_axis(scores, top, 1)
    order = np.argsort(-top_scores, axis=1, kind="stable")
    top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores, order, 1)
    out_slots = np.full((nq, k), -1, dtype=np.int64)
    out_scores = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    out_slots[:, :take] = np.where(np.isfinite(top_scores), np.take_along_axis(safe, top, 1), -1)
    out_scores[:, :take] = top_scores
    return out_slots, out_scores


def empty_result(nq: int, k: int) -> tuple[np.ndarray, np.ndarray]:
    return np.full((nq, k), -1, dtype=np.int64), np.full((nq, k), MISSING_SCORE, dtype=np.float32)


# --- concurrency: many searches at once, one writer at a time ---


class ReadWriteLock:
    """Searches share the index (faiss and hnswlib release the GIL); add/remove/save take it alone."""

    def __init__(self) -> None:
        self._cond = threading.Condition(threading.Lock())
        self._readers = 0
        self._writer = False
        self._waiting_writers = 0

    @contextmanager
    def reading(self) -> Iterator[None]:
        with self._cond:
            while self._writer or self._waiting_writers:
                self._cond.wait()
            self._readers += 1
        try:
            yield
        finally:
            with self._cond:
                self._readers -= 1
                if not self._readers:
                    self._cond.notify_all()

    @contextmanager
    def writing(self) -> Iterator[None]:
        with self._cond:
            self._waiting_writers += 1
            while self._writer or self._readers:
                self._cond.wait()
            self._waiting_writers -= 1
            self._writer = True
        try:
            yield
        finally:
            with self._cond:
                self._writer = False
                self._cond.notify_all()


# --- tombstones: for backends whose structure cannot delete, ids map to slots ---


class SlotTable:
    """Caller ids <-> dense slot numbers, with tombstones for removed or replaced slots.

    Backends that cannot delete natively store vectors by slot; a removed slot keeps its place
    (``ids[slot] == -1``) until ``compact`` renumbers the live ones. Lookups go through sorted
    numpy arrays (24 bytes a vector), not a Python dict (about 100).
    """

    def __init__(self) -> None:
        self.ids = np.empty(0, dtype=np.int64)  # (capacity,) caller id per slot, -1 if dead
        self.size = 0  # slots in use (live + dead)
        self._sorted_ids = np.empty(0, dtype=np.int64)  # live ids, ascending
        self._sorted_slots = np.empty(0, dtype=np.int64)  # their slots

    @property
    def live(self) -> int:
        return len(self._sorted_ids)

    @property
    def dead(self) -> int:
        return self.size - self.live

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where the id is not live."""
        pos = np.searchsorted(self._sorted_ids, ids)
        pos_clipped = np.minimum(pos, max(0, len(self._sorted_ids) - 1))
        found = (pos < len(self._sorted_ids)) & (self._sorted_ids[pos_clipped] == ids) if self.live else \
            np.zeros(len(ids), dtype=bool)
        return np.where(found, self._sorted_slots[pos_clipped] if self.live else -1, -1)

    def add(self, ids: np.ndarray) -> np.ndarray:
        """New slots for ids (already validated); an id added before loses its old slot."""
        self.remove(ids)
        start = self.size
        if start + len(ids) > len(self.ids):
            grown = np.full(max(2 * len(self.ids), start + len(ids), 1024), -1, dtype=np.int64)
            grown[:start] = self.ids[:start]
            self.ids = grown
        slots = np.arange(start, start + len(ids), dtype=np.int64)
        self.ids[start : start + len(ids)] = ids
        self.size = start + len(ids)
        merged_ids = np.concatenate([self._sorted_ids, ids])
        order = np.argsort(merged_ids, kind="stable")
        self._sorted_ids = merged_ids[order]
        self._sorted_slots = np.concatenate([self._sorted_slots, slots])[order]
        return slots

    def remove(self, ids: np.ndarray) -> int:
        """Tombstone the slots of ids that are live; returns how many were."""
        slots = self.slots_of(ids)
        slots = slots[slots >= 0]
        if len(slots):
            self.ids[slots] = -1
            keep = self.ids[self._sorted_slots] >= 0
            self._sorted_ids, self._sorted_slots = self._sorted_ids[keep], self._sorted_slots[keep]
        return len(slots)

    def live_ids(self) -> np.ndarray:
        """Live ids, ascending (a copy)."""
        return self._sorted_ids.copy()

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.ids[: self.size] >= 0)

    def needs_compaction(self) -> bool:
        """Compact when a quarter of the slots are dead (and enough to be worth a rebuild)."""
        return self.dead > max(256, self.size // 4)

    def compact(self) -> np.ndarray:
        """Renumber live slots 0..live-1 in order; returns the old slot of each new slot."""
        keep = self.live_slots()
        table = SlotTable.from_state(self.ids[keep])
        self.ids, self.size = table.ids, table.size
        self._sorted_ids, self._sorted_slots = table._sorted_ids, table._sorted_slots
        return keep

    def state(self) -> np.ndarray:
        return self.ids[: self.size].copy()

    def memory_bytes(self) -> int:
        return int(self.ids.nbytes + self._sorted_ids.nbytes + self._sorted_slots.nbytes)

    @classmethod
    def from_state(cls, ids: np.ndarray) -> "SlotTable":
        table = cls()
        table.ids = np.asarray(ids, dtype=np.int64).copy()
        table.size = len(table.ids)
        live = np.flatnonzero(table.ids >= 0)
        order = np.argsort(table.ids[live], kind="stable")
        table._sorted_ids = table.ids[live][order]
        table._sorted_slots = live[order].astype(np.int64)
        if len(np.unique(table._sorted_ids)) != len(table._sorted_ids):
            raise ValueError("slot table holds duplicate ids")
        return table


def best_per_query(query_rows: np.ndarray, scores: np.ndarray, limit: int) -> tuple[np.ndarray, np.ndarray]:
    """Positions of the best ``limit`` entries of each query in flat candidate lists, grouped by
    query and best first, and each one's rank within its query."""
    order = np.lexsort((-scores, query_rows))
    sorted_rows = query_rows[order]
    first = np.searchsorted(sorted_rows, sorted_rows, side="left")
    rank = np.arange(len(order)) - first
    keep = rank < limit
    return order[keep], rank[keep]


def top_k_by_query(query_rows: np.ndarray, slots: np.ndarray, scores: np.ndarray, nq: int, k: int
                   ) -> tuple[np.ndarray, np.ndarray]:
    """Best k (slot, score) per query from flat candidate lists: query_rows[i] owns slots[i].
    Returns (nq, k) slots and scores, -1 / -inf where a query has fewer than k candidates."""
    out_slots = np.full((nq, k), -1, dtype=np.int64)
    out_scores = np.full((nq, k), MISSING_SCORE, dtype=np.float32)
    if not len(slots):
        return out_slots, out_scores
    positions, rank = best_per_query(query_rows, scores, k)
    out_slots[query_rows[positions], rank] = slots[positions]
    out_scores[query_rows[positions], rank] = scores[positions]
    return out_slots, out_scores


# --- on disk: a directory of backend files plus manifest.json, swapped in atomically ---


def write_manifest(directory: Path, manifest: dict) -> None:
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest, checked for the fields every backend relies on; errors name the file."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise IndexFileError(f"index directory not found: {directory}")
    if not path.is_file():
        raise IndexFileError(f"index manifest missing: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFileError(f"index manifest is corrupt: {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise IndexFileError(f"index manifest is corrupt: {path}: expected a JSON object")
    for key, kind in (("backend", str), ("dim", int), ("metric", str), ("count", int),
                      ("format_version", int), ("params", dict)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise IndexFileError(f"index manifest {path}: field {key!r} missing or not {kind.__name__}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexFileError(
            f"index manifest {path}: format version {manifest['format_version']} is not supported "
            f"(this code reads version {FORMAT_VERSION}); rebuild the index"
        )
    if manifest["metric"] not in METRICS or manifest["dim"] <= 0:
        raise IndexFileError(f"index manifest {path}: bad dim/metric {manifest['dim']!r}/{manifest['metric']!r}")
    return manifest


@contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``directory`` by rename.

    Refuses to replace a non-empty directory that is not an index (no manifest), so a
    mistyped path cannot wipe unrelated files.
    """
    target = Path(directory).absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot save index: {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).exists():
        raise ValueError(f"cannot save index into {target}: it holds other files and no {MANIFEST}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for entry in tmp.iterdir():
            with open(entry, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def require_file(directory: Path, name: str) -> Path:
    path = Path(directory) / name
    if not path.is_file():
        raise IndexFileError(f"index file missing: {path}")
    return path


class BaseIndex:
    """Shared behaviour: validation at the edge, the lock, cosine normalisation, save/manifest.

    Subclasses implement ``_add(ids, vectors)``, ``_search(queries, k)``, ``_remove(ids)``,
    ``__len__``, ``_save_files(tmpdir)`` and ``_load_files(directory, manifest)``; vectors reach
    them validated (and normalised for cosine).
    """

    name = "base"

    def __init__(self, dim: int, metric: str = "cosine", **params: Any) -> None:
        self.dim, self.metric = check_dim_metric(dim, metric)
        self.params = params
        self.lock = ReadWriteLock()

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
            self._add(id_array, array)

    def search(self, queries: Any, k: int) -> tuple[np.ndarray, np.ndarray]:
        """(nq, k) int64 ids and float32 similarities, best first; -1 / -inf where fewer than k."""
        k = check_k(k)
        array = self._prepare(queries, "queries")
        if not len(array):
            return empty_result(0, k)
        with self.lock.reading():
            if len(self) == 0:
                return empty_result(len(array), k)
            return self._search(array, k)

    def remove(self, ids: Any) -> None:
        """Remove ids; ids not present are ignored."""
        id_array = check_remove_ids(ids)
        if not len(id_array):
            return
        with self.lock.writing():
            self._remove(id_array)

    def ids(self) -> np.ndarray:
        """The live ids, ascending: what the index holds, so its owner can compare it with the store."""
        with self.lock.reading():
            return np.sort(np.asarray(self._ids(), dtype=np.int64))

    def manifest(self) -> dict:
        return {"backend": self.name, "params": self.params, "dim": self.dim, "metric": self.metric,
                "count": len(self), "format_version": FORMAT_VERSION}

    def save(self, directory: str | os.PathLike) -> None:
        """Write backend files and manifest.json to a temporary directory, then rename into place."""
        with self.lock.writing():
            with atomic_directory(directory) as tmp:
                self._save_files(tmp)
                write_manifest(tmp, self.manifest())

    @classmethod
    def load(cls, directory: str | os.PathLike, manifest: dict) -> "BaseIndex":
        try:
            index = cls(manifest["dim"], manifest["metric"], **manifest["params"])
        except (TypeError, ValueError) as exc:
            raise IndexFileError(f"index manifest {Path(directory) / MANIFEST}: bad {cls.name} parameters: {exc}") from exc
        index._load_files(Path(directory), manifest)
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

    def _save_files(self, directory: Path) -> None:
        raise NotImplementedError

    def _load_files(self, directory: Path, manifest: dict) -> None:
        raise NotImplementedError

    def __len__(self) -> int:
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

    def __len__(self) -> int:
        return self.slots.live
