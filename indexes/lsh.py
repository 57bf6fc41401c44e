"""``lsh``: random-hyperplane locality-sensitive hashing with bucketed tables and multi-probe.

Each of ``tables`` hash tables takes ``bits`` random hyperplanes through the data's mean (by
default ``bits`` follows the collection size, about two vectors a bucket); a
vector's key is its pattern of sides (sign bits), and the table bins vectors by key. A query
looks in its own bucket and in the ``probes - 1`` neighbouring buckets most likely to hold near
vectors: those reached by flipping the bits whose hyperplanes pass closest to the query
(query-directed multi-probe, Lv et al. 2007). The union of candidates from all tables is
re-ranked by exact similarity against the full vectors.

All tables' sign bits together form a long sketch of each vector; the Hamming distance between
sketches estimates the angle, so only the ``rerank`` candidates with the closest sketches are
read in full (``rerank=0``: all of them). A table is two sorted arrays (keys, slots) plus bucket
offsets, so a bucket is a slice; removed ids are tombstones until a quarter of the slots are
dead, then the tables are rebuilt.
"""
from __future__ import annotations

from itertools import product
from pathlib import Path

import numpy as np

from indexes.base import TombstoneIndex
from indexes.kernels import rerank_exact
from indexes.slots import SlotTable
from indexes.storage import IndexFileError, require_file
from indexes.vectors import SlotVectors

STATE_FILE = "lsh.npz"
VECTORS_FILE = "vectors.npy"
FLIP_CANDIDATES = 8  # multi-probe perturbs subsets of the 8 lowest-margin bits of a key
MAX_BITS = 24
DIRECT_BITS = 18  # up to 2^18 buckets a table, bucket offsets are a direct lookup table


def auto_bits(count: int) -> int:
    """Bits per key for a collection of ``count``: about two vectors per bucket, so a bucket
    stays selective as the collection grows."""
    return int(np.clip(round(np.log2(max(count, 1))) - 1, 8, MAX_BITS))
QUERY_CHUNK = 64  # queries per vectorised step: bounds the candidate arrays' memory


class LSHIndex(TombstoneIndex):
    name = "lsh"

    def __init__(self, dim: int, metric: str = "cosine", bits: int | None = None, tables: int = 40,
                 probes: int = 64, rerank: int = 200, seed: int = 0) -> None:
        if bits is not None and (not isinstance(bits, int) or not 1 <= bits <= MAX_BITS):
            raise ValueError(f"lsh parameter bits must be 1..{MAX_BITS} (or None: from the collection size), got {bits!r}")
        if not isinstance(tables, int) or tables <= 0:
            raise ValueError(f"lsh parameter tables must be a positive integer, got {tables!r}")
        most = 2 ** min(bits or FLIP_CANDIDATES, FLIP_CANDIDATES)
        if not isinstance(probes, int) or not 1 <= probes <= most:
            raise ValueError(f"lsh parameter probes must be 1..{most}, got {probes!r}")
        if not isinstance(rerank, int) or rerank < 0:
            raise ValueError(f"lsh parameter rerank must be >= 0 (0 = re-rank every candidate), got {rerank!r}")
        super().__init__(dim, metric, bits=bits, tables=tables, probes=probes, rerank=rerank, seed=seed)
        self.fixed_bits, self.tables, self.probes, self.rerank = bits, tables, probes, rerank
        self.all_planes = np.random.default_rng(seed).standard_normal((tables, MAX_BITS, self.dim)).astype(np.float32)
        self._use_bits(bits or auto_bits(0))
        self.center = np.zeros(self.dim, dtype=np.float32)
        self.centered_at = 0  # live count when the center was last fitted
        self.slots = SlotTable()
        self.vectors = SlotVectors(self.dim)
        self.sorted_keys = np.empty((tables, 0), dtype=np.int32)  # per table: keys ascending
        self.sorted_slots = np.empty((tables, 0), dtype=np.int32)  # ... and the slot of each
        self.sketch = np.empty((0, self._sketch_words()), dtype=np.uint64)  # (slots, words)
        self.offsets: np.ndarray | None = None
        self._index_buckets()

    search_param_names = ("probes",)

    def _set_search_param(self, key: str, value) -> None:
        """probes: buckets probed per table (recall/speed trade-off)."""
        if isinstance(value, bool) or not isinstance(value, int) or not 1 <= value <= 2**FLIP_CANDIDATES:
            raise ValueError(f"lsh parameter probes must be 1..{2**FLIP_CANDIDATES}, got {value!r}")
        self.probes = self.params["probes"] = value
        self._use_bits(self.bits)

    # --- hashing ---

    def _use_bits(self, bits: int) -> None:
        """Hash with the first ``bits`` hyperplanes of each table (keys must be recomputed)."""
        self.bits = bits
        self.planes = np.ascontiguousarray(self.all_planes[:, :bits].reshape(-1, self.dim))
        m = min(bits, FLIP_CANDIDATES)
        self._subsets = np.array(list(product((0, 1), repeat=m)), dtype=np.float32)[:, ::-1]  # (2^m, m)
        self._probes = min(self.probes, 2**m)

    def _projections(self, vectors: np.ndarray) -> np.ndarray:
        """(n, tables, bits) signed distances to each hyperplane."""
        return ((vectors - self.center) @ self.planes.T).reshape(len(vectors), self.tables, self.bits)

    def _keys(self, projections: np.ndarray) -> np.ndarray:
        """(n, tables) int64 bucket key of each vector in each table."""
        weights = np.left_shift(np.int64(1), np.arange(self.bits, dtype=np.int64))
        return ((projections > 0).astype(np.int64) * weights).sum(axis=2)

    @staticmethod
    def _sketch(projections: np.ndarray) -> np.ndarray:
        """(n, words) uint64: every table's sign bits packed together, for Hamming distances."""
        bits = np.packbits(projections.reshape(len(projections), -1) > 0, axis=1)
        pad = (-bits.shape[1]) % 8
        return np.ascontiguousarray(np.pad(bits, ((0, 0), (0, pad)))).view(np.uint64)

    def _probe_keys(self, projections: np.ndarray) -> np.ndarray:
        """(nq, tables, probes) keys to look up: the query's own, then the likeliest neighbours."""
        keys = self._keys(projections)
        if self._probes == 1:
            return keys[:, :, None]
        m = self._subsets.shape[1]
        margins = np.abs(projections)
        low = np.argsort(margins, axis=2)[:, :, :m]  # bits closest to flipping
        cost = np.take_along_axis(margins, low, axis=2) ** 2  # (nq, tables, m)
        scores = cost @ self._subsets.T  # (nq, tables, 2^m): cost of flipping each subset
        best = np.argsort(scores, axis=2)[:, :, : self._probes]
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
        """Drop tombstones, refit the center and (unless fixed) the bits, rehash everything."""
        keep = self.slots.compact()
        self.vectors.compact(keep)
        if self.slots.live:
            self._refit_center()
        self._use_bits(self.fixed_bits or auto_bits(self.slots.live))
        keys, sketches = [], []
        for s in range(0, self.vectors.size, 65536):
            projections = self._projections(np.asarray(self.vectors.rows[s : s + 65536]))
            keys.append(self._keys(projections))
            sketches.append(self._sketch(projections))
        self.sorted_keys = np.empty((self.tables, 0), dtype=np.int32)
        self.sorted_slots = np.empty((self.tables, 0), dtype=np.int32)
        self.sketch = np.empty((0, self._sketch_words()), dtype=np.uint64)
        if keys:
            self._insert(np.concatenate(keys), np.concatenate(sketches), np.arange(self.vectors.size))

    def _sketch_words(self) -> int:
        return -(-self.tables * self.bits // 64)

    def _insert(self, keys: np.ndarray, sketch: np.ndarray, slots: np.ndarray) -> None:
        """Merge new (slot, keys) into every table's sorted arrays; refresh bucket offsets."""
        self.sketch = np.concatenate([self.sketch, sketch])
        merged_keys = np.concatenate([self.sorted_keys, keys.T.astype(np.int32)], axis=1)
        merged_slots = np.concatenate(
            [self.sorted_slots, np.broadcast_to(slots.astype(np.int32), (self.tables, len(slots)))], axis=1)
        order = np.argsort(merged_keys, axis=1, kind="stable")
        self.sorted_keys = np.take_along_axis(merged_keys, order, axis=1)
        self.sorted_slots = np.ascontiguousarray(np.take_along_axis(merged_slots, order, axis=1))
        self._index_buckets()

    def _index_buckets(self) -> None:
        """Bucket b of table t is sorted_slots[t, offsets[t, b]:offsets[t, b + 1]] (direct
        addressing up to 2^18 buckets a table; beyond that, binary search on sorted_keys)."""
        if self.bits > DIRECT_BITS:
            self.offsets = None
            return
        buckets = 2**self.bits
        flat = (np.arange(self.tables, dtype=np.int64)[:, None] * buckets + self.sorted_keys).ravel()
        counts = np.bincount(flat, minlength=self.tables * buckets).reshape(self.tables, buckets)
        self.offsets = np.zeros((self.tables, buckets + 1), dtype=np.int32)
        np.cumsum(counts, axis=1, out=self.offsets[:, 1:])

    # --- the interface ---

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        slots = self.slots.add(ids)
        self.vectors.append(vectors)
        if self.slots.needs_compaction() or self.slots.live >= 2 * max(self.centered_at, 500):
            self._rebuild()
            return
        projections = self._projections(vectors)
        self._insert(self._keys(projections), self._sketch(projections), slots)

    def _bucket_ranges(self, probe_keys: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """(lo, hi) positions in sorted_slots.ravel() of every probed bucket, (nq, tables, probes)."""
        n = self.sorted_keys.shape[1]
        table_start = (np.arange(self.tables, dtype=np.int64) * n)[None, :, None]
        if self.offsets is not None:
            buckets = self.offsets.shape[1]
            flat = self.offsets.ravel()
            at = np.arange(self.tables, dtype=np.int64)[None, :, None] * buckets + probe_keys
            return table_start + flat[at], table_start + flat[at + 1]
        lo = np.empty(probe_keys.shape, dtype=np.int64)
        hi = np.empty(probe_keys.shape, dtype=np.int64)
        for t in range(self.tables):
            lo[:, t] = np.searchsorted(self.sorted_keys[t], probe_keys[:, t], side="left")
            hi[:, t] = np.searchsorted(self.sorted_keys[t], probe_keys[:, t], side="right")
        return table_start + lo, table_start + hi

    def candidates(self, queries: np.ndarray) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """(rows, slots, query sketches): every live slot sharing a probed bucket with query
        ``rows[i]``, once (grouped by query), and the queries' packed sign bits."""
        projections = self._projections(queries)
        probe_keys = self._probe_keys(projections)
        nq = len(queries)
        lo, hi = self._bucket_ranges(probe_keys)
        counts = (hi - lo).ravel()
        total = int(counts.sum())
        query_sketch = self._sketch(projections)
        if not total:
            return np.empty(0, dtype=np.int64), np.empty(0, dtype=np.int64), query_sketch
        starts = np.repeat(lo.ravel() - np.cumsum(counts) + counts, counts)
        slots = self.sorted_slots.ravel()[starts + np.arange(total)]
        rows = np.repeat(np.arange(nq), counts.reshape(nq, -1).sum(axis=1))
        seen = np.zeros((nq, self.slots.size), dtype=bool)  # dedup: a bitmap is cheaper than a sort
        seen[rows, slots] = True
        seen[:, self.slots.ids[: self.slots.size] < 0] = False
        rows, slots = np.nonzero(seen)
        return rows, slots.astype(np.int64), query_sketch

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        parts = [self._search_chunk(queries[s : s + QUERY_CHUNK], k) for s in range(0, len(queries), QUERY_CHUNK)]
        return np.concatenate([p[0] for p in parts]), np.concatenate([p[1] for p in parts])

    def _search_chunk(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        rows, slots, query_sketch = self.candidates(queries)
        keep = max(k, self.rerank) if self.rerank else len(slots) + 1
        if len(slots) and self.rerank:
            # all tables' sign bits together are a tables*bits-bit sketch: the Hamming distance
            # between sketches estimates the angle, so only the closest ``rerank`` need full vectors
            hamming = np.bitwise_count(self.sketch[slots] ^ query_sketch[rows]).sum(axis=1, dtype=np.int64)
            order = np.argsort(rows * (64 * self.sketch.shape[1] + 1) + hamming, kind="stable")
            rows, slots = rows[order], slots[order]
        rank = np.arange(len(rows)) - np.searchsorted(rows, rows, side="left")
        chosen = rank < keep
        rows, slots, rank = rows[chosen], slots[chosen], rank[chosen]
        width = max(k, int(rank.max()) + 1 if len(rank) else 1)
        matrix = np.full((len(queries), width), -1, dtype=np.int64)
        matrix[rows, rank] = slots
        top_slots, top_scores = rerank_exact(queries, matrix, self.vectors.buffer, self.metric, k)
        ids = np.where(top_slots >= 0, self.slots.ids[np.maximum(top_slots, 0)], -1)
        return ids.astype(np.int64), top_scores

    def _memory_bytes(self) -> int:
        """Full vectors for re-ranking, sketches, sorted (key, slot) tables, offsets, id tables."""
        offsets = self.offsets.nbytes if self.offsets is not None else 0
        return int(self.vectors.resident_bytes() + self.sketch.nbytes + self.sorted_keys.nbytes
                   + self.sorted_slots.nbytes + offsets + self.slots.memory_bytes())

    # --- on disk ---

    def _save_files(self, directory: Path) -> None:
        np.savez(directory / STATE_FILE, slots=self.slots.state(), center=self.center,
                 centered_at=np.int64(self.centered_at), bits=np.int64(self.bits), sketch=self.sketch,
                 sorted_keys=self.sorted_keys, sorted_slots=self.sorted_slots)
        self.vectors.save(directory / VECTORS_FILE)

    def _load_files(self, directory: Path, manifest: dict) -> None:
        path = require_file(directory, STATE_FILE)
        try:
            with np.load(path, allow_pickle=False) as state:
                self.slots = SlotTable.from_state(state["slots"])
                self.center, self.centered_at = state["center"], int(state["centered_at"])
                self._use_bits(int(state["bits"]))
                self.sketch = state["sketch"]
                self.sorted_keys, self.sorted_slots = state["sorted_keys"], state["sorted_slots"]
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(f"index file is corrupt: {path}: {exc}") from exc
        self.vectors = SlotVectors.load(require_file(directory, VECTORS_FILE), self.dim, memory_mapped=False)
        n = self.slots.size
        if (self.vectors.size != n or self.sketch.shape != (n, self._sketch_words())
                or self.sorted_keys.shape != (self.tables, n) or self.sorted_slots.shape != (self.tables, n)
                or self.center.shape != (self.dim,)):
            raise IndexFileError(f"index files in {directory} disagree: {path} and {VECTORS_FILE}")
        self._index_buckets()
