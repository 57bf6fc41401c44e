"""``pq`` and ``ivfpq``: product quantization (faiss), with exact re-ranking from a memory map.

``pq`` scans compact codes of every vector (faiss IndexPQ); ``ivfpq`` first picks the
``nprobe`` nearest of ``nlist`` coarse cells and scans only their residual codes (IndexIVFPQ).
Both then re-rank the best ``rerank`` candidates with the full float32 vectors, which are kept
in a memory-mapped file next to the codes, not in RAM (``rerank=0`` returns code scores).

Training: the quantizers learn from the data. Until ``train_size`` vectors have arrived the
index keeps them exact and searches them by brute force (so a small or growing collection is
always answered correctly); the add that reaches ``train_size`` trains on everything so far.
``train()`` trains at once on what is there, and says how many vectors are needed when there
are too few. Removed ids are tombstones until a quarter of the slots are dead, then the codes
are rebuilt from the live vectors.
"""
from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from indexes.base import TombstoneIndex
from indexes.kernels import MISSING_SCORE, exact_scores, rerank_exact
from indexes.slots import SlotTable
from indexes.storage import IndexFileError, require_file
from indexes.flat import faiss_metric, read_faiss
from indexes.vectors import SlotVectors

CODES_FILE = "codes.faiss"
SLOTS_FILE = "slots.npy"
VECTORS_FILE = "vectors.npy"
MAX_TRAIN = 65536  # k-means quality stops improving long before; training time does not


def default_subquantizers(dim: int) -> int:
    """About 8 dimensions per sub-quantizer (48 bytes for 384 dims: 32x smaller than float32)."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


class PQIndex(TombstoneIndex):
    name = "pq"

    def __init__(self, dim: int, metric: str = "cosine", M: int | None = None, nbits: int = 8,
                 rerank: int = 100, train_size: int = 10000, memory_mapped: bool = True) -> None:
        M = default_subquantizers(dim) if M is None else M
        if not isinstance(M, int) or M <= 0 or dim % M:
            raise ValueError(f"{self.name} parameter M must divide dim={dim}, got {M!r}")
        if not isinstance(nbits, int) or not 1 <= nbits <= 16:
            raise ValueError(f"{self.name} parameter nbits must be 1..16, got {nbits!r}")
        if not isinstance(rerank, int) or rerank < 0:
            raise ValueError(f"{self.name} parameter rerank must be >= 0 (0 = no re-ranking), got {rerank!r}")
        super().__init__(dim, metric, M=M, nbits=nbits, rerank=rerank, train_size=train_size,
                         memory_mapped=memory_mapped)
        self.M, self.nbits, self.rerank = M, nbits, rerank
        self.train_size = max(int(train_size), self.min_train_vectors())
        self.slots = SlotTable()
        self.vectors = SlotVectors(self.dim, memory_mapped=memory_mapped)
        self.codes = None  # the faiss index, once trained; its label for a vector is its slot

    # --- training ---

    def min_train_vectors(self) -> int:
        """k-means needs at least as many points as centroids."""
        return 2**self.nbits

    def _new_codes(self, n_train: int):
        codes = faiss.IndexPQ(self.dim, self.M, self.nbits, faiss_metric(self.metric))
        codes.pq.cp.min_points_per_centroid = 1  # small collections train fine; no warnings
        return codes

    def train(self, vectors: np.ndarray | None = None) -> None:
        """Train the quantizer now, on ``vectors`` or on the vectors added so far."""
        with self.lock.writing():
            sample = self._prepare(vectors, "training vectors") if vectors is not None else None
            self._train(sample)

    def _train(self, sample: np.ndarray | None) -> None:
        if sample is None:
            live = self.slots.live_slots()
            if len(live) > MAX_TRAIN:
                live = np.sort(np.random.default_rng(0).choice(live, MAX_TRAIN, replace=False))
            sample = self.vectors.take(live)
        needed = self.min_train_vectors()
        if len(sample) < needed:
            raise ValueError(
                f"{self.name} needs at least {needed} vectors to train (nbits={self.nbits}"
                f"{self._train_detail()}), got {len(sample)}; add more vectors or lower nbits"
            )
        codes = self._new_codes(len(sample))
        codes.train(sample)
        self.codes = codes
        self._rebuild()

    def _train_detail(self) -> str:
        return ""

    def _rebuild(self) -> None:
        """Compact tombstones away and re-encode every live vector (keeps the training)."""
        keep = self.slots.compact()
        self.vectors.compact(keep)
        if self.codes is not None:
            self.codes.reset()
            for start in range(0, self.vectors.size, 65536):
                chunk = np.asarray(self.vectors.rows[start : start + 65536])
                self._encode(chunk, np.arange(start, start + len(chunk), dtype=np.int64))

    def _encode(self, vectors: np.ndarray, slots: np.ndarray) -> None:
        self.codes.add(vectors)  # IndexPQ labels are positions, which equal slots

    search_param_names = ("rerank",)

    def _set_search_param(self, key: str, value) -> None:
        """rerank: candidates re-ranked with full vectors (0: code scores only)."""
        if isinstance(value, bool) or not isinstance(value, int) or value < 0:
            raise ValueError(f"{self.name} parameter rerank must be >= 0, got {value!r}")
        self.rerank = self.params["rerank"] = value

    def raw_search(self, queries: np.ndarray, k: int):
        """faiss's own re-ranking (IndexRefineFlat, full vectors in RAM) over the same trained codes."""
        if not self.is_trained:  # a small collection kept exact: no codes to compare with
            return None
        if self.rerank == 0:
            return lambda: self.codes.search(queries, k)
        vectors = np.ascontiguousarray(self.vectors.rows)  # labels are slots, i.e. rows here
        refine = faiss.IndexRefineFlat(self.codes, faiss.swig_ptr(vectors))
        refine.k_factor = max(self.rerank, k) / k
        refine.own_fields = False  # the codes belong to this index

        def search():
            return refine.search(queries, k), vectors  # keeps the vectors alive while refine lives

        return search

    @property
    def is_trained(self) -> bool:
        return self.codes is not None

    # --- the interface ---

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        slots = self.slots.add(ids)
        self.vectors.append(vectors)
        if self.codes is None:
            if self.slots.live >= self.train_size:
                self._train(None)
            return
        self._encode(vectors, slots)
        if self.slots.needs_compaction():
            self._rebuild()

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        if self.codes is None:
            return self._search_exact(queries, k)
        want = max(k, self.rerank)
        fetch = min(self.slots.size, math.ceil(want * self.slots.size / max(1, self.slots.live)) + 8)
        distances, labels = self._search_codes(queries, fetch)
        alive = (labels >= 0) & (self.slots.ids[np.maximum(labels, 0)] >= 0)
        candidates = np.where(alive, labels, -1)
        if self.rerank:
            slots, scores = rerank_exact(queries, candidates, self.vectors.buffer, self.metric, k)
        else:
            scores = np.where(alive, -distances if self.metric == "l2" else distances, -np.inf)
            order = np.argsort(-scores, axis=1, kind="stable")[:, :k]
            slots = np.take_along_axis(candidates, order, 1)
            scores = np.take_along_axis(scores, order, 1).astype(np.float32)
            if slots.shape[1] < k:
                pad = k - slots.shape[1]
                slots = np.pad(slots, ((0, 0), (0, pad)), constant_values=-1)
                scores = np.pad(scores, ((0, 0), (0, pad)), constant_values=-np.inf)
        return self._ids_for(slots), scores

    def _search_codes(self, queries: np.ndarray, fetch: int) -> tuple[np.ndarray, np.ndarray]:
        return self.codes.search(queries, fetch)

    def _search_exact(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """Before training: brute force over the buffered vectors."""
        scores = exact_scores(queries, np.asarray(self.vectors.rows), self.metric)
        scores[:, self.slots.ids[: self.slots.size] < 0] = -np.inf
        take = min(k, self.slots.size)
        top = np.argpartition(-scores, take - 1, axis=1)[:, :take]
        top_scores = np.take_along_axis(scores, top, 1)
        order = np.argsort(-top_scores, axis=1, kind="stable")
        top, top_scores = np.take_along_axis(top, order, 1), np.take_along_axis(top_scores, order, 1)
        slots = np.full((len(queries), k), -1, dtype=np.int64)
        out_scores = np.full((len(queries), k), MISSING_SCORE, dtype=np.float32)
        slots[:, :take], out_scores[:, :take] = top, top_scores
        slots[~np.isfinite(out_scores)] = -1
        return self._ids_for(slots), out_scores

    def _ids_for(self, slots: np.ndarray) -> np.ndarray:
        ids = np.where(slots >= 0, self.slots.ids[np.maximum(slots, 0)], -1)
        return ids.astype(np.int64)

    def _memory_bytes(self) -> int:
        """Codes and id tables in RAM; the re-ranking vectors are memory-mapped, not counted."""
        code_bytes = self.code_bytes() * self.slots.size
        return int(code_bytes + self.slots.memory_bytes() + self.vectors.resident_bytes())

    def code_bytes(self) -> int:
        """Bytes of one vector's code (the float vector takes 4 * dim)."""
        return math.ceil(self.M * self.nbits / 8)

    # --- on disk ---

    def _save_files(self, directory: Path) -> None:
        np.save(directory / SLOTS_FILE, self.slots.state())
        self.vectors.save(directory / VECTORS_FILE)
        if self.codes is not None:
            faiss.write_index(self.codes, str(directory / CODES_FILE))

    def _load_files(self, directory: Path, manifest: dict) -> None:
        slots_path = require_file(directory, SLOTS_FILE)
        try:
            self.slots = SlotTable.from_state(np.load(slots_path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"index file is corrupt: {slots_path}: {exc}") from exc
        self.vectors = SlotVectors.load(require_file(directory, VECTORS_FILE), self.dim,
                                        self.params["memory_mapped"])
        if self.vectors.size != self.slots.size:
            raise IndexFileError(f"index files {slots_path} and {directory / VECTORS_FILE} disagree on the count")
        codes_path = directory / CODES_FILE
        if codes_path.exists():
            self.codes = read_faiss(codes_path, self.dim)
            self._after_load()
            if self.codes.ntotal != self.slots.size:
                raise IndexFileError(f"index file {codes_path} holds {self.codes.ntotal} codes, expected {self.slots.size}")

    def _after_load(self) -> None:
        pass


class IVFPQIndex(PQIndex):
    """Coarse k-means cells + residual PQ codes; ``nprobe`` cells are scanned per query."""

    name = "ivfpq"

    def __init__(self, dim: int, metric: str = "cosine", nlist: int | None = None, nprobe: int = 32,
                 M: int | None = None, nbits: int = 8, rerank: int = 100, train_size: int = 10000,
                 memory_mapped: bool = True) -> None:
        if nlist is not None and (not isinstance(nlist, int) or nlist <= 0):
            raise ValueError(f"ivfpq parameter nlist must be a positive integer, got {nlist!r}")
        if not isinstance(nprobe, int) or nprobe <= 0:
            raise ValueError(f"ivfpq parameter nprobe must be a positive integer, got {nprobe!r}")
        self.nlist, self.nprobe = nlist, nprobe
        super().__init__(dim, metric, M=M, nbits=nbits, rerank=rerank, train_size=train_size,
                         memory_mapped=memory_mapped)
        self.params.update(nlist=nlist, nprobe=nprobe)

    def min_train_vectors(self) -> int:
        return max(2**self.nbits, self.nlist or 1)

    def _train_detail(self) -> str:
        return f", nlist={self.nlist}" if self.nlist else ""

    def cells_for(self, n_train: int) -> int:
        """nlist: as given, else about 4 sqrt(n) cells (a power of two) with >= 39 points each."""
        if self.nlist:
            return self.nlist
        target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n_train))))
        return int(max(1, min(target, n_train // 39, 65536)))

    def _new_codes(self, n_train: int):
        nlist = self.cells_for(n_train)
        self.params["nlist"] = nlist
        self.nlist = nlist
        metric = faiss_metric(self.metric)
        quantizer = faiss.IndexFlat(self.dim, metric)
        codes = faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.M, self.nbits, metric)
        codes.nprobe = self.nprobe
        codes.cp.min_points_per_centroid = 1  # small collections train fine; no warnings
        codes.pq.cp.min_points_per_centroid = 1
        return codes

    def _encode(self, vectors: np.ndarray, slots: np.ndarray) -> None:
        self.codes.add_with_ids(vectors, slots)

    search_param_names = ("nprobe", "rerank")

    def _set_search_param(self, key: str, value) -> None:
        """nprobe: cells scanned per query; rerank as for pq."""
        if key != "nprobe":
            return super()._set_search_param(key, value)
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"ivfpq parameter nprobe must be a positive integer, got {value!r}")
        self.nprobe = self.params["nprobe"] = value
        if self.codes is not None:
            self.codes.nprobe = value

    def _after_load(self) -> None:
        self.codes.nprobe = self.nprobe

    def _memory_bytes(self) -> int:
        """Codes + their ids in the inverted lists + coarse centroids + id tables."""
        n = self.slots.size
        centroids = 4 * self.dim * (self.nlist or 0)
        return int(n * (self.code_bytes() + 8) + centroids + self.slots.memory_bytes()
                   + self.vectors.resident_bytes())
