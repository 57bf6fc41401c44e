"""``kdtree``: a KD-tree (scipy cKDTree) over PCA-reduced vectors, then exact re-ranking.

In 384 dimensions a KD-tree checks nearly every leaf, so the tree is built over the top
``pca_dims`` principal components, where it prunes well; it returns ``rerank`` candidates
(best-bin-first with an ``eps`` approximation bound: a returned neighbour is at most 1+eps
farther than the true one in the reduced space), and those are re-ranked by exact similarity.
Reduced-space distance is Euclidean: for cosine (normalised vectors) and l2 that is the metric
itself; ``ip`` is first turned into a Euclidean problem by one extra coordinate (see _tree_space).

The tree is static, so vectors added after a build wait in a small exact "pending" range,
searched by brute force, until they reach a tenth of the tree; then the tree (and, as the
collection doubles, the PCA) is rebuilt. Removed ids are filtered out and dropped at rebuilds.
"""
from __future__ import annotations

import math
from pathlib import Path

import numpy as np
from scipy.spatial import cKDTree

from indexes.base import TombstoneIndex
from indexes.kernels import rerank_exact
from indexes.slots import SlotTable
from indexes.storage import IndexFileError, require_file
from indexes.vectors import SlotVectors

STATE_FILE = "kdtree.npz"
VECTORS_FILE = "vectors.npy"
MIN_TREE = 1000  # below this, brute force is as fast as any tree
PCA_SAMPLE = 20000


class KDTreeIndex(TombstoneIndex):
    name = "kdtree"

    def __init__(self, dim: int, metric: str = "cosine", pca_dims: int = 32, rerank: int = 200,
                 eps: float = 0.0, leafsize: int = 16) -> None:
        if not isinstance(pca_dims, int) or pca_dims <= 0:
            raise ValueError(f"kdtree parameter pca_dims must be a positive integer, got {pca_dims!r}")
        if not isinstance(rerank, int) or rerank <= 0:
            raise ValueError(f"kdtree parameter rerank must be a positive integer, got {rerank!r}")
        if not isinstance(eps, (int, float)) or eps < 0:
            raise ValueError(f"kdtree parameter eps must be >= 0, got {eps!r}")
        super().__init__(dim, metric, pca_dims=pca_dims, rerank=rerank, eps=eps, leafsize=leafsize)
        self.pca_dims, self.rerank, self.eps, self.leafsize = min(pca_dims, self.dim), rerank, float(eps), leafsize
        self.slots = SlotTable()
        self.vectors = SlotVectors(self.dim)
        self.space_dim = self.dim + 1 if self.metric == "ip" else self.dim
        self.max_norm = 0.0  # ip only: the norm the augmentation is relative to
        self.mean = np.zeros(self.space_dim, dtype=np.float32)
        self.components = np.zeros((self.space_dim, 0), dtype=np.float32)  # (space_dim, pca_dims)
        self.fitted_at = 0
        self.tree: cKDTree | None = None
        self.built_upto = 0  # the tree holds slots [0, built_upto); later ones are pending

    search_param_names = ("rerank", "eps")

    def _set_search_param(self, key: str, value) -> None:
        """rerank: tree candidates re-ranked exactly; eps: the tree's approximation bound."""
        if key == "rerank":
            if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
                raise ValueError(f"kdtree parameter rerank must be a positive integer, got {value!r}")
            self.rerank = self.params["rerank"] = value
        else:
            if isinstance(value, bool) or not isinstance(value, (int, float)) or value < 0:
                raise ValueError(f"kdtree parameter eps must be >= 0, got {value!r}")
            self.eps = self.params["eps"] = float(value)

    def raw_search(self, queries: np.ndarray, k: int):
        """scipy's tree query on the same PCA-reduced tree, then the same exact re-rank written inline
        with numpy (what this wrapper does, minus validation, locking and id mapping)."""
        if self.tree is None:
            return None
        want = max(k, self.rerank)
        vectors = np.asarray(self.vectors.rows)

        def search():
            reduced = (np.hstack([queries, np.zeros((len(queries), 1), np.float32)]) if self.metric == "ip"
                       else queries) - self.mean
            _, candidates = self.tree.query(reduced @ self.components, k=want, eps=self.eps)
            for start in range(0, len(queries), 64):
                block = candidates[start : start + 64]
                scores = np.einsum("qcd,qd->qc", vectors[block], queries[start : start + 64])
                top = np.argpartition(-scores, k - 1, axis=1)[:, :k]
                np.take_along_axis(block, np.argsort(-np.take_along_axis(scores, top, 1), axis=1), 1)

        return search

    def _fit_pca(self, live: np.ndarray) -> None:
        sample = live if len(live) <= PCA_SAMPLE else np.sort(
            np.random.default_rng(0).choice(live, PCA_SAMPLE, replace=False))
        raw = np.asarray(self.vectors.take(sample))
        if self.metric == "ip":
            self.max_norm = float(np.linalg.norm(raw, axis=1).max())
        data = self._tree_space(raw, query=False).astype(np.float64)
        self.mean = data.mean(axis=0)
        centered = data - self.mean
        _, vectors = np.linalg.eigh(centered.T @ centered)  # ascending eigenvalues
        self.components = vectors[:, ::-1][:, : self.pca_dims].astype(np.float32)
        self.mean = self.mean.astype(np.float32)
        self.fitted_at = len(live)

    def _tree_space(self, vectors: np.ndarray, query: bool) -> np.ndarray:
        """For ``ip``, the classic reduction of inner product search to Euclidean search: append
        sqrt(M^2 - |x|^2) to each vector (M the largest norm) and 0 to each query; the nearest
        augmented vector is then the one of largest inner product."""
        if self.metric != "ip":
            return vectors
        if query:
            extra = np.zeros((len(vectors), 1), dtype=np.float32)
        else:
            extra = np.sqrt(np.maximum(self.max_norm**2 - (vectors * vectors).sum(axis=1, keepdims=True), 0))
        return np.hstack([vectors, extra.astype(np.float32)])

    def _reduce(self, vectors: np.ndarray, query: bool = False) -> np.ndarray:
        return (self._tree_space(vectors, query) - self.mean) @ self.components

    def _rebuild(self) -> None:
        """Compact, refit PCA when the collection doubled, build the tree over everything."""
        keep = self.slots.compact()
        self.vectors.compact(keep)
        if self.slots.size >= MIN_TREE and self.slots.size >= 2 * self.fitted_at:
            self._fit_pca(np.arange(self.slots.size, dtype=np.int64))
        self._build_tree(self.slots.size if self.slots.size >= MIN_TREE else 0)

    def _build_tree(self, upto: int) -> None:
        """The tree over slots [0, upto) in the current PCA space; later slots stay pending."""
        if not upto:
            self.tree, self.built_upto = None, 0
            return
        reduced = np.concatenate([self._reduce(self.vectors.rows[s : min(upto, s + 65536)])
                                  for s in range(0, upto, 65536)])
        self.tree = cKDTree(reduced, leafsize=self.leafsize, balanced_tree=False, compact_nodes=False)
        self.built_upto = upto

    def _pending(self) -> int:
        return self.slots.size - self.built_upto

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.slots.add(ids)
        self.vectors.append(vectors)
        if self._pending() >= max(MIN_TREE, self.built_upto // 10) or self.slots.needs_compaction():
            self._rebuild()

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        parts = []
        if self.tree is not None:
            want = max(k, self.rerank)
            dead_in_tree = self.built_upto - int((self.slots.ids[: self.built_upto] >= 0).sum())
            fetch = min(self.built_upto, math.ceil(want * self.built_upto / max(1, self.built_upto - dead_in_tree)))
            _, positions = self.tree.query(self._reduce(queries, query=True), k=fetch, eps=self.eps)
            positions = positions.reshape(len(queries), fetch)
            parts.append(np.where(positions < self.built_upto, positions, -1))  # missing come back as n
        if self._pending():
            pending = np.arange(self.built_upto, self.slots.size, dtype=np.int64)
            parts.append(np.broadcast_to(pending, (len(queries), len(pending))))
        candidates = np.concatenate(parts, axis=1).astype(np.int64)
        candidates = np.where(self.slots.ids[np.maximum(candidates, 0)] >= 0, candidates, -1)
        top_slots, top_scores = rerank_exact(queries, candidates, self.vectors.buffer, self.metric, k)
        ids = np.where(top_slots >= 0, self.slots.ids[np.maximum(top_slots, 0)], -1)
        return ids.astype(np.int64), top_scores

    def _memory_bytes(self) -> int:
        """Full vectors, the reduced float64 copy the tree holds, its nodes (about one per
        leafsize/2 points), and the id tables."""
        n_tree = self.built_upto
        tree = n_tree * (8 * self.pca_dims + 8) + (2 * n_tree // max(1, self.leafsize)) * (8 * self.pca_dims * 2 + 64)
        return int(self.vectors.resident_bytes() + tree + self.slots.memory_bytes())

    def _save_files(self, directory: Path) -> None:
        np.savez(directory / STATE_FILE, slots=self.slots.state(), mean=self.mean, components=self.components,
                 max_norm=np.float64(self.max_norm),
                 fitted_at=np.int64(self.fitted_at), built_upto=np.int64(self.built_upto))
        self.vectors.save(directory / VECTORS_FILE)

    def _load_files(self, directory: Path, manifest: dict) -> None:
        path = require_file(directory, STATE_FILE)
        try:
            with np.load(path, allow_pickle=False) as state:
                self.slots = SlotTable.from_state(state["slots"])
                self.mean, self.components = state["mean"], state["components"]
                self.max_norm = float(state["max_norm"])
                self.fitted_at, built_upto = int(state["fitted_at"]), int(state["built_upto"])
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(f"index file is corrupt: {path}: {exc}") from exc
        self.vectors = SlotVectors.load(require_file(directory, VECTORS_FILE), self.dim, memory_mapped=False)
        if self.vectors.size != self.slots.size or built_upto > self.slots.size:
            raise IndexFileError(f"index files {path} and {directory / VECTORS_FILE} disagree on the count")
        if built_upto and self.components.shape != (self.space_dim, self.pca_dims):
            raise IndexFileError(f"index file {path}: PCA components of shape {self.components.shape}, "
                                 f"expected {(self.space_dim, self.pca_dims)}")
        self._build_tree(built_upto)  # deterministic: the same tree as before saving
