"""What the quantizing backends (pq, ivfpq, sq) share: compact codes in RAM, exact re-ranking
from a memory map, training once enough vectors have arrived, and an optional inverted file.

A backend supplies its faiss codes (``_new_codes``), how many vectors training needs
(``min_train_vectors``) and the bytes of one code (``code_bytes``); this class does the rest.
The codes scan every vector, or with ``ivf`` the ``nprobe`` nearest of ``nlist`` coarse cells;
the best ``rerank`` candidates are then re-ranked with the full float32 vectors, which are kept
in a memory-mapped file next to the codes, not in RAM (``rerank=0`` returns code scores).

Training: the quantizers learn from the data. Until ``train_size`` vectors have arrived the
index keeps them exact and searches them by brute force (so a small or growing collection is
always answered correctly); the add that reaches ``train_size`` trains on everything so far.
``train()`` trains at once on what is there, and says how many vectors are needed when there
are too few. Codes that need no training (``needs_training`` false) exist from the start.
Removed ids are tombstones until a quarter of the slots are dead, then the codes are rebuilt
from the live vectors.
"""
from __future__ import annotations

import math
from pathlib import Path

import faiss
import numpy as np

from indexes.base import TombstoneIndex
from indexes.checks import check_positive
from indexes.flat import read_faiss
from indexes.kernels import MISSING_SCORE, exact_scores, rerank_exact
from indexes.slots import SlotTable
from indexes.storage import IndexFileError, require_file
from indexes.vectors import SlotVectors

CODES_FILE = "codes.faiss"
SLOTS_FILE = "slots.npy"
VECTORS_FILE = "vectors.npy"
MAX_TRAIN = 65536  # k-means quality stops improving long before; training time does not


def auto_cells(n_train: int) -> int:
    """Inverted-file cells for a collection: about 4 sqrt(n) (a power of two), >= 39 points each."""
    target = 2 ** round(math.log2(max(1.0, 4 * math.sqrt(n_train))))
    return int(max(1, min(target, n_train // 39, 65536)))


def check_rerank(name: str, value) -> None:
    if isinstance(value, bool) or not isinstance(value, int) or value < 0:
        raise ValueError(f"{name} parameter rerank must be >= 0 (0 = no re-ranking), got {value!r}")


class QuantizedIndex(TombstoneIndex):
    """Codes in RAM, float vectors by slot for re-ranking and training. A subclass sets the
    attributes ``min_train_vectors`` reads (nbits, nlist, ...) before calling ``__init__``."""

    ivf = False  # codes in an inverted file: nprobe of nlist cells are scanned per query
    nlist: int | None = None
    nprobe: int | None = None
    needs_training = True

    def __init__(self, dim: int, metric: str, rerank: int, train_size: int, memory_mapped: bool,
                 **params) -> None:
        check_rerank(self.name, rerank)
        super().__init__(dim, metric, rerank=rerank, train_size=train_size, memory_mapped=memory_mapped, **params)
        self.rerank = rerank
        self.train_size = max(int(train_size), self.min_train_vectors())
        self.slots = SlotTable()
        self.vectors = SlotVectors(self.dim, memory_mapped=memory_mapped)
        self.codes = None  # the faiss index, once trained; its label for a vector is its slot
        if not self.needs_training:
            self.codes = self._new_codes(0)

    # --- what a backend supplies ---

    def min_train_vectors(self) -> int:
        raise NotImplementedError

    def _new_codes(self, n_train: int):
        """A fresh, untrained faiss index of this backend's codes."""
        raise NotImplementedError

    def code_bytes(self) -> int:
        """Bytes of one vector's code (the float vector takes 4 * dim)."""
        raise NotImplementedError

    def train_knobs(self) -> tuple[str, ...]:
        """The parameters that set how many vectors training needs (named when there are too few)."""
        return ("nlist",) if self.ivf else ()

    # --- training ---

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
            knobs = [key for key in self.train_knobs() if getattr(self, key)]
            detail = f" ({', '.join(f'{key}={getattr(self, key)}' for key in knobs)})" if knobs else ""
            advice = f" or lower {' or '.join(knobs)}" if knobs else ""
            raise ValueError(f"{self.name} needs at least {needed} vectors to train{detail}, "
                             f"got {len(sample)}; add more vectors{advice}")
        codes = self._new_codes(len(sample))
        codes.train(sample)
        self.codes = codes
        self._rebuild()

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
        if self.ivf:
            self.codes.add_with_ids(vectors, slots)
        else:
            self.codes.add(vectors)  # flat codes are labelled by position, which equals the slot

    @property
    def is_trained(self) -> bool:
        return self.codes is not None

    # --- search-time parameters ---

    @property
    def search_param_names(self) -> tuple[str, ...]:
        return ("nprobe", "rerank") if self.ivf else ("rerank",)

    def _set_search_param(self, key: str, value) -> None:
        """rerank: candidates re-ranked with full vectors (0: code scores only); nprobe: cells scanned."""
        if key == "rerank":
            check_rerank(self.name, value)
            self.rerank = self.params["rerank"] = value
            return
        check_positive(self.name, "nprobe", value)
        self.nprobe = self.params["nprobe"] = value
        if self.codes is not None:
            self.codes.nprobe = value

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
        distances, labels = self.codes.search(queries, fetch)
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
        """Codes (plus their ids in the inverted lists and the coarse centroids) and id tables in
        RAM; the re-ranking vectors are memory-mapped, not counted."""
        per_code = self.code_bytes() + (8 if self.ivf else 0)
        centroids = 4 * self.dim * (self.nlist or 0) if self.ivf else 0
        return int(self.slots.size * per_code + centroids + self.slots.memory_bytes()
                   + self.vectors.resident_bytes())

    # --- on disk ---

    def _save_files(self, directory: Path) -> None:
        np.save(directory / SLOTS_FILE, self.slots.state())
        self.vectors.save(directory / VECTORS_FILE)
        if self.codes is not None:
            faiss.write_index(self.codes, str(directory / CODES_FILE))

    def _load_files(self, directory: Path, manifest: dict) -> None:
        slots_path = require_file(directory, SLOTS_FILE)
        self.slots = SlotTable.load(slots_path)
        self.vectors = SlotVectors.load(require_file(directory, VECTORS_FILE), self.dim,
                                        self.params["memory_mapped"])
        if self.vectors.size != self.slots.size:
            raise IndexFileError(f"index files {slots_path} and {directory / VECTORS_FILE} disagree on the count")
        codes_path = directory / CODES_FILE
        if codes_path.exists():
            self.codes = read_faiss(codes_path, self.dim)
            if self.ivf:
                self.codes.nprobe = self.nprobe
            if self.codes.ntotal != self.slots.size:
                raise IndexFileError(f"index file {codes_path} holds {self.codes.ntotal} codes, expected {self.slots.size}")
        elif not self.needs_training:
            raise IndexFileError(f"index file missing: {codes_path}")
