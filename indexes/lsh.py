"""``lsh``: random-hyperplane locality-sensitive hashing with bucketed tables and multi-probe.

Each of ``tables`` hash tables takes ``bits`` random hyperplanes through the data's mean; a
vector's key is its pattern of sides (sign bits), and the table bins vectors by key. A query
looks in its own bucket and in the ``probes - 1`` neighbouring buckets most likely to hold near
vectors: those reached by flipping the bits whose hyperplanes pass closest to the query
(query-directed multi-probe, Lv et al. 2007). The union of candidates from all tables is
re-ranked by exact similarity against the full vectors.

A table is two sorted arrays (keys, slots), so a bucket is one ``searchsorted`` range; removed
ids are tombstones until a quarter of the slots are dead, then the tables are rebuilt.
"""
from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np

from indexes.base import BaseIndex, IndexFileError, SlotTable, pair_scores, require_file, top_k_by_query
from indexes.vectors import SlotVectors

STATE_FILE = "lsh.npz"
VECTORS_FILE = "vectors.npy"
FLIP_CANDIDATES = 10  # multi-probe perturbs subsets of the 10 lowest-margin bits of a key


class LSHIndex(BaseIndex):
    name = "lsh"

    def __init__(self, dim: int, metric: str = "cosine", bits: int = 16, tables: int = 24,
                 probes: int = 48, seed: int = 0) -> None:
        if not isinstance(bits, int) or not 1 <= bits <= 62:
            raise ValueError(f"lsh parameter bits must be 1..62, got {bits!r}")
        if not isinstance(tables, int) or tables <= 0:
            raise ValueError(f"lsh parameter tables must be a positive integer, got {tables!r}")
        if not isinstance(probes, int) or not 1 <= probes <= 2 ** min(bits, FLIP_CANDIDATES):
            raise ValueError(f"lsh parameter probes must be 1..{2 ** min(bits, FLIP_CANDIDATES)}, got {probes!r}")
        super().__init__(dim, metric, bits=bits, tables=tables, probes=probes, seed=seed)
        self.bits, self.tables, self.probes = bits, tables, probes
        self.planes = np.random.default_rng(seed).standard_normal((tables * bits, self.dim)).astype(np.float32)
        self.center = np.zeros(self.dim, dtype=np.float32)
        self.centered_at = 0  # live count when the center was last fitted
        self.slots = SlotTable()
        self.vectors = SlotVectors(self.dim)
        self.keys = np.empty((0, tables), dtype=np.int64)  # (slots, tables) key of each slot
        self.sorted_keys = np.empty((tables, 0), dtype=np.int64)
        self.sorted_slots = np.empty((tables, 0), dtype=np.int64)
        m = min(bits, FLIP_CANDIDATES)
        self._subsets = np.array(list(product((0, 1), repeat=m)), dtype=np.float32)[:, ::-1]  # (2^m, m)

    # --- hashing ---

    def _projections(self, vectors: np.ndarray) -> np.ndarray:
        """(n, tables, bits) signed distances to each hyperplane."""
        return ((vectors - self.center) @ self.planes.T).reshape(len(vectors), self.tables, self.bits)

    def _keys(self, projections: np.ndarray) -> np.ndarray:
        weights = np.left_shift(np.int64(1), np.arange(self.bits, dtype=np.int64))
        return ((projections > 0).astype(np.int64) * weights).sum(axis=2)

    def _probe_keys(self, projections: np.ndarray) -> np.ndarray:
        """(nq, tables, probes) keys to look up: the query's own, then the likeliest neighbours."""
        keys = self._keys(projections)
        if self.probes == 1:
            return keys[:, :, None]
        m = self._subsets.shape[1]
        margins = np.abs(projections)
        low = np.argsort(margins, axis=2)[:, :, :m]  # bits closest to flipping
        cost = np.take_along_axis(margins, low, axis=2) ** 2  # (nq, tables, m)
        scores = cost @ self._subsets.T  # (nq, tables, 2^m): cost of flipping each subset
        best = np.argsort(scores, axis=2)[:, :, : self.probes]
        flips = np.left_shift(np.int64(1), low)  # (nq, tables, m)
        masks = np.einsum("sm,qtm->qts", self._subsets.astype(np.int64), flips)
        return keys[:, :, None] ^ np.take_along_axis(masks, best, axis=2)

    def _refit_center(self) -> None:
        """Hyperplanes through the data's mean split it evenly; refit as the collection doubles."""
        live = self.slots.live_slots()
        sample = live if len(live) <= 50000 else np.random.default_rng(0).choice(live, 50000, replace=False)
        self.center = np.asarray(self.vectors.take(np.sort(sample))).mean(axis=0).astype(np.float32)
        self.centered_at = len(live)

    def _rebuild(self) -> None:
        """Drop tombstones, refit the center, rehash everything."""
        keep = self.slots.compact()
        self.vectors.compact(keep)
        if self.slots.live:
            self._refit_center()
        keys = [self._keys(self._projections(self.vectors.rows[s : s + 65536]))
                for s in range(0, self.vectors.size, 65536)]
        self.keys = np.concatenate(keys) if keys else np.empty((0, self.tables), dtype=np.int64)
        order = np.argsort(self.keys, axis=0, kind="stable").T  # (tables, n)
        self.sorted_slots = order.astype(np.int64)
        self.sorted_keys = np.take_along_axis(self.keys.T, order, axis=1)

    # --- the interface ---

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        slots = self.slots.add(ids)
        self.vectors.append(vectors)
        if self.slots.needs_compaction() or self.slots.live >= 2 * max(self.centered_at, 500):
            self._rebuild()
            return
        new_keys = self._keys(self._projections(vectors))
        self.keys = np.concatenate([self.keys, new_keys])
        merged_keys = np.concatenate([self.sorted_keys, new_keys.T], axis=1)
        merged_slots = np.concatenate([self.sorted_slots, np.broadcast_to(slots, (self.tables, len(slots)))], axis=1)
        order = np.argsort(merged_keys, axis=1, kind="stable")
        self.sorted_keys = np.take_along_axis(merged_keys, order, axis=1)
        self.sorted_slots = np.take_along_axis(merged_slots, order, axis=1)

    def _remove(self, ids: np.ndarray) -> None:
        self.slots.remove(ids)
        if self.slots.needs_compaction():
            self._rebuild()

    def __len__(self) -> int:
        return self.slots.live

    def candidates(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(rows, slots): every live slot sharing a probed bucket with query ``rows[i]``, once."""
        probe_keys = self._probe_keys(self._projections(queries))
        nq = len(queries)
        rows_parts, slot_parts = [], []
        for t in range(self.tables):
            keys_t = probe_keys[:, t, :].ravel()
            lo = np.searchsorted(self.sorted_keys[t], keys_t, side="left")
            hi = np.searchsorted(self.sorted_keys[t], keys_t, side="right")
            counts = hi - lo
            total = int(counts.sum())
            if not total:
                continue
            starts = np.repeat(lo - np.cumsum(counts) + counts, counts)
            positions = starts + np.arange(total)
            slot_parts.append(self.sorted_slots[t][positions])
            rows_parts.append(np.repeat(np.repeat(np.arange(nq), self.probes), counts))
        if not slot_parts:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64)
        pairs = np.unique(np.concatenate(rows_parts) * self.slots.size + np.concatenate(slot_parts))
        rows, slots = np.divmod(pairs, self.slots.size)
        alive = self.slots.ids[slots] >= 0
        return rows[alive], slots[alive]

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, slots = self.candidates(queries)
        scores = pair_scores(queries[rows], self.vectors.take(slots), self.metric).astype(np.float32)
        top_slots, top_scores = top_k_by_query(rows, slots, scores, len(queries), k)
        ids = np.where(top_slots >= 0, self.slots.ids[np.maximum(top_slots, 0)], -1)
        return ids.astype(np.int64), top_scores

    def memory_bytes(self) -> int:
        """Full vectors for re-ranking, per-table keys and sorted (key, slot) arrays, id tables."""
        return int(self.vectors.resident_bytes() + self.keys.nbytes + self.sorted_keys.nbytes
                   + self.sorted_slots.nbytes + self.slots.memory_bytes())

    # --- on disk ---

    def _save_files(self, directory: Path) -> None:
        np.savez(directory / STATE_FILE, slots=self.slots.state(), center=self.center,
                 centered_at=np.int64(self.centered_at), keys=self.keys)
        self.vectors.save(directory / VECTORS_FILE)

    def _load_files(self, directory: Path, manifest: dict) -> None:
        path = require_file(directory, STATE_FILE)
        try:
            with np.load(path, allow_pickle=False) as state:
                self.slots = SlotTable.from_state(state["slots"])
                self.center, self.centered_at = state["center"], int(state["centered_at"])
                self.keys = state["keys"]
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(f"index file is corrupt: {path}: {exc}") from exc
        self.vectors = SlotVectors.load(require_file(directory, VECTORS_FILE), self.dim, memory_mapped=False)
        if not (self.vectors.size == self.slots.size == len(self.keys)) or self.center.shape != (self.dim,):
            raise IndexFileError(f"index files in {directory} disagree: {path} and {VECTORS_FILE}")
        order = np.argsort(self.keys, axis=0, kind="stable").T
        self.sorted_slots = order.astype(np.int64)
        self.sorted_keys = np.take_along_axis(self.keys.T, order, axis=1)
