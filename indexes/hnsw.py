"""``hnsw``: hierarchical navigable small-world graph (hnswlib), with native delete.

Parameters: ``M`` (links per node), ``ef_construction`` (build beam), ``ef_search`` (query
beam, raised to k when k is larger). The graph grows by doubling as vectors arrive. Removed
ids are marked deleted (hnswlib skips them); when a quarter of the graph is deleted it is
rebuilt from the live vectors so memory and speed do not decay.
"""
from __future__ import annotations

from pathlib import Path

import hnswlib
import numpy as np

from indexes.base import BaseIndex
from indexes.kernels import MISSING_SCORE
from indexes.storage import IndexFileError, require_file

INDEX_FILE = "hnsw.bin"
DELETED_FILE = "deleted.npy"
SPACES = {"cosine": "ip", "ip": "ip", "l2": "l2"}  # cosine vectors arrive normalised


def hnsw_file_dim(path: Path) -> int:
    """The dimension recorded in an hnswlib file's header (hnswlib itself trusts the caller):
    six size_t fields, of which label_offset - offset_data is the vector's size in bytes."""
    header = path.read_bytes()[:48] if path.stat().st_size >= 48 else b""
    if len(header) < 48:
        raise IndexFileError(f"index file is corrupt: {path}: too short for an hnswlib index")
    fields = np.frombuffer(header, dtype=np.uint64)
    size = int(fields[4]) - int(fields[5])
    if size <= 0 or size % 4:
        raise IndexFileError(f"index file is corrupt: {path}: bad hnswlib header")
    return size // 4


def hnsw_similarities(distances: np.ndarray, metric: str) -> np.ndarray:
    """hnswlib 'ip' distance is 1 - dot, 'l2' is the squared distance."""
    return (-distances if metric == "l2" else 1.0 - distances).astype(np.float32)


class HnswIndex(BaseIndex):
    name = "hnsw"

    def __init__(self, dim: int, metric: str = "cosine", M: int = 16, ef_construction: int = 200,
                 ef_search: int = 64, seed: int = 100) -> None:
        for key, value in (("M", M), ("ef_construction", ef_construction), ("ef_search", ef_search)):
            if not isinstance(value, int) or value <= 0:
                raise ValueError(f"hnsw parameter {key} must be a positive integer, got {value!r}")
        super().__init__(dim, metric, M=M, ef_construction=ef_construction, ef_search=ef_search, seed=seed)
        self.M, self.ef_construction, self.ef_search, self.seed = M, ef_construction, ef_search, seed
        self.index = self._new_graph(1024)
        self.deleted: set[int] = set()  # labels marked deleted (hnswlib skips them in searches)

    def _new_graph(self, capacity: int) -> hnswlib.Index:
        graph = hnswlib.Index(space=SPACES[self.metric], dim=self.dim)
        graph.init_index(max_elements=capacity, M=self.M, ef_construction=self.ef_construction,
                         random_seed=self.seed)
        graph.set_ef(self.ef_search)
        graph.set_num_threads(1)
        return graph

    search_param_names = ("ef_search",)

    def _set_search_param(self, key: str, value) -> None:
        """ef_search: the query beam (recall/speed trade-off)."""
        if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
            raise ValueError(f"hnsw parameter ef_search must be a positive integer, got {value!r}")
        self.ef_search = self.params["ef_search"] = value
        self.index.set_ef(value)

    def raw_search(self, queries: np.ndarray, k: int):
        return lambda: self.index.knn_query(queries, k=k, num_threads=1)

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        needed = self.index.get_current_count() + len(ids)
        if needed > self.index.get_max_elements():
            self.index.resize_index(max(needed, 2 * self.index.get_max_elements()))
        # re-adding a label updates its vector in place (and un-deletes it if it was removed)
        self.index.add_items(vectors, ids, num_threads=1)
        self.deleted.difference_update(ids.tolist())

    def _remove(self, ids: np.ndarray) -> None:
        for label in ids.tolist():
            if label in self.deleted:
                continue
            try:
                self.index.mark_deleted(label)
            except RuntimeError:  # not in the graph: nothing to remove
                continue
            self.deleted.add(label)
        if len(self.deleted) > max(256, self.index.get_current_count() // 4):
            self._rebuild()

    def _rebuild(self) -> None:
        """A fresh graph over the live vectors: drops deleted nodes for good."""
        labels = np.asarray(self.index.get_ids_list(), dtype=np.int64)
        live = labels[~np.isin(labels, np.fromiter(self.deleted, dtype=np.int64, count=len(self.deleted)))]
        graph = self._new_graph(max(1024, len(live)))
        if len(live):
            vectors = np.asarray(self.index.get_items(live), dtype=np.float32)
            graph.add_items(vectors, live, num_threads=1)
        self.index, self.deleted = graph, set()

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        live = self._count()
        take = min(k, live)
        ids = np.full((len(queries), k), -1, dtype=np.int64)
        scores = np.full((len(queries), k), MISSING_SCORE, dtype=np.float32)
        labels, distances = self._knn(queries, take)
        ids[:, :take] = labels
        scores[:, :take] = hnsw_similarities(distances, self.metric)
        return ids, scores

    def _knn(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """hnswlib refuses when a beam finds fewer than k live nodes (many deletions, tiny
        graphs); then fall back to a wider beam, and finally to fewer results padded with -1."""
        try:
            return self.index.knn_query(queries, k=k, num_threads=1)
        except RuntimeError:
            pass
        labels = np.full((len(queries), k), -1, dtype=np.int64)
        distances = np.full((len(queries), k), np.inf, dtype=np.float32)
        for row, query in enumerate(queries):
            for want in range(k, 0, -1):
                try:
                    found, dist = self.index.knn_query(query[None], k=want, num_threads=1)
                except RuntimeError:
                    continue
                labels[row, :want], distances[row, :want] = found[0], dist[0]
                break
        return labels, distances

    def _ids(self) -> np.ndarray:
        labels = np.asarray(self.index.get_ids_list(), dtype=np.int64)
        return labels[~np.isin(labels, np.fromiter(self.deleted, dtype=np.int64, count=len(self.deleted)))]

    def _stored(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        live, rows = np.zeros(len(ids), dtype=bool), []
        for n, label in enumerate(ids.tolist()):
            if label in self.deleted:
                continue
            try:
                rows.append(np.asarray(self.index.get_items([label]), dtype=np.float32)[0])
            except RuntimeError:  # not in the graph
                continue
            live[n] = True
        return live, np.array(rows, dtype=np.float32).reshape(len(rows), self.dim)

    def _count(self) -> int:
        return self.index.get_current_count() - len(self.deleted)

    def _memory_bytes(self) -> int:
        """hnswlib's layout: vector + 2M level-0 links + label per node, upper levels for about
        1/(M-1) of nodes, a level pointer, and its label hash map (about 40 bytes a node)."""
        n = self.index.get_current_count()
        level0 = 4 * self.dim + (2 * self.M * 4 + 4) + 8
        upper = (self.M * 4 + 4) / max(1, self.M - 1)
        return int(n * (level0 + upper + 8 + 40))

    def _save_files(self, directory: Path) -> None:
        self.index.save_index(str(directory / INDEX_FILE))
        np.save(directory / DELETED_FILE, np.array(sorted(self.deleted), dtype=np.int64))

    def _load_files(self, directory: Path, manifest: dict) -> None:
        path = require_file(directory, INDEX_FILE)
        deleted_path = require_file(directory, DELETED_FILE)
        stored_dim = hnsw_file_dim(path)
        if stored_dim != self.dim:
            raise IndexFileError(f"index file {path} holds dimension {stored_dim}, the manifest says {self.dim}")
        graph = hnswlib.Index(space=SPACES[self.metric], dim=self.dim)
        try:
            graph.load_index(str(path), max_elements=0)
            deleted = np.load(deleted_path)
        except (RuntimeError, ValueError, OSError) as exc:
            raise IndexFileError(f"index file is corrupt: {path}: {exc}") from exc
        graph.set_ef(self.ef_search)
        graph.set_num_threads(1)
        self.index = graph
        self.deleted = set(deleted.tolist())
