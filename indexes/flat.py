"""``flat``: exact search with faiss; the ground truth every other backend is measured against."""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from indexes.base import BaseIndex
from indexes.kernels import MISSING_SCORE
from indexes.storage import IndexFileError, require_file

INDEX_FILE = "flat.faiss"


def faiss_metric(metric: str) -> int:
    """Cosine is inner product over normalised vectors."""
    return faiss.METRIC_L2 if metric == "l2" else faiss.METRIC_INNER_PRODUCT


def similarities(distances: np.ndarray, labels: np.ndarray, metric: str) -> np.ndarray:
    """faiss distances -> similarities (higher is better); -inf where there is no result."""
    scores = 0.0 - distances if metric == "l2" else distances.copy()
    scores[labels < 0] = MISSING_SCORE
    return scores.astype(np.float32, copy=False)


class FlatIndex(BaseIndex):
    """faiss IndexFlat wrapped in IndexIDMap2 so ids are the caller's."""

    name = "flat"

    def __init__(self, dim: int, metric: str = "cosine") -> None:
        super().__init__(dim, metric)
        self.index = faiss.IndexIDMap2(faiss.IndexFlat(self.dim, faiss_metric(self.metric)))

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        if self.index.ntotal:
            self.index.remove_ids(ids)
        self.index.add_with_ids(vectors, ids)

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, labels = self.index.search(queries, k)
        return labels, similarities(distances, labels, self.metric)

    def _remove(self, ids: np.ndarray) -> None:
        self.index.remove_ids(ids)

    def raw_search(self, queries: np.ndarray, k: int):
        return lambda: self.index.search(queries, k)

    def _ids(self) -> np.ndarray:
        return faiss.vector_to_array(self.index.id_map)

    def _stored(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        live, rows = np.zeros(len(ids), dtype=bool), []
        for n, label in enumerate(ids.tolist()):
            try:
                rows.append(self.index.reconstruct(label))
            except RuntimeError:  # not held
                continue
            live[n] = True
        return live, np.array(rows, dtype=np.float32).reshape(len(rows), self.dim)

    def _count(self) -> int:
        return int(self.index.ntotal)

    def _memory_bytes(self) -> int:
        """Vectors plus id map, as held in RAM."""
        return int(self.index.ntotal) * (4 * self.dim + 8 + 16)

    def _save_files(self, directory: Path) -> None:
        faiss.write_index(self.index, str(directory / INDEX_FILE))

    def _load_files(self, directory: Path, manifest: dict) -> None:
        self.index = read_faiss(require_file(directory, INDEX_FILE), self.dim)


def read_faiss(path: Path, dim: int):
    """A faiss index file, with a clear error naming it when unreadable or of another dimension."""
    try:
        index = faiss.read_index(str(path))
    except RuntimeError as exc:
        raise IndexFileError(f"index file is corrupt: {path}: {str(exc).splitlines()[0]}") from exc
    if index.d != dim:
        raise IndexFileError(f"index file {path} holds dimension {index.d}, the manifest says {dim}")
    return index
