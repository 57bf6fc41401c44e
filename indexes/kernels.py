"""Numeric kernels shared by backends: exact similarities and exact re-ranking of candidates.

Scores are similarities (higher is better): inner product, or negative squared L2 distance.
"""
from __future__ import annotations

import numpy as np

MISSING_SCORE = np.float32(-np.inf)  # the score of a missing result (id -1)


def exact_scores(queries: np.ndarray, vectors: np.ndarray, metric: str) -> np.ndarray:
    """(nq, n) similarities; vectors are already normalised for cosine."""
    if metric == "l2":
        return -(
            (queries * queries).sum(1)[:, None] - 2 * queries @ vectors.T + (vectors * vectors).sum(1)[None, :]
        )
    return queries @ vectors.T


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
