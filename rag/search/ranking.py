"""Passage search: dense (encoder + vector index), keyword (FTS5 BM25) and hybrid (their fusion).

Filters (``where``) narrow the candidates before the top k are taken: keyword search applies them
in the same SQL query as the BM25 ranking; dense search scores the filtered passages' stored
embeddings exactly when they are few, and otherwise over-fetches from the index until k pass.
"""
from __future__ import annotations

import math

import numpy as np

from rag.contract import MODES, SEARCH_K, check_mode
from rag.errors import RagError
from rag.records import Hit

__all__ = ["MODES", "search", "fuse", "dense_ranking", "vector_ranking", "keyword_ranking", "hits_for"]
# Reciprocal rank fusion constant (Cormack et al. 2009): score = sum over rankings of 1 / (RRF_K + rank).
# 60 is the paper's value; it damps the difference between the very first ranks so that one list
# cannot dominate, and it is what the SciFact figures in the datasets README were measured with.
RRF_K = 60
EXACT_LIMIT = 10_000  # a filtered candidate set up to this size is scored exactly from stored embeddings
HYBRID_DEPTH = 100  # how deep each ranking goes before fusion


def fuse(rankings: list[list[int]], k: int = RRF_K) -> list[tuple[int, float]]:
    """Reciprocal rank fusion: ids ranked by sum of 1/(k + rank), rank 1-based.

    Equal sums go to the id with the better single rank (its best rank in any one ranking), then to
    the id whose best rank is in the earlier ranking; no two ids can tie on both, so the order never
    depends on the order ids were stored or met. (search() passes the keyword ranking first.)"""
    scores: dict[int, float] = {}
    best: dict[int, tuple[int, int]] = {}  # id -> (best rank, which ranking gave it)
    for which, ranking in enumerate(rankings):
        for rank, item in enumerate(ranking, 1):
            scores[item] = scores.get(item, 0.0) + 1.0 / (k + rank)
            best[item] = min(best.get(item, (rank, which)), (rank, which))
    return sorted(scores.items(), key=lambda pair: (-pair[1], best[pair[0]]))


def _query_vector(library, query: str, query_vector) -> np.ndarray:
    if query_vector is None:
        return library.query_vector(query)
    vector = np.asarray(query_vector, dtype=np.float32).reshape(-1)
    if vector.shape[0] != library.dim:
        raise RagError(f"query vector has dimension {vector.shape[0]}, the store holds {library.dim}")
    return vector


def dense_ranking(library, query: str, n: int, where: dict | None = None, query_vector=None
                  ) -> list[tuple[int, float]]:
    """Top n (passage id, cosine similarity) by the query's embedding."""
    return library.dense_search(_query_vector(library, query, query_vector), n, where)


def vector_ranking(library, vector: np.ndarray, n: int, where: dict | None = None) -> list[tuple[int, float]]:
    """Top n (passage id, cosine similarity) of one library for a query vector (dim,): Library.dense_search.
    Passages holding the same text share one vector and score; equal scores go in order of document
    path, then place in the document (Store.with_repeats)."""
    if library.passage_count() == 0:
        return []
    if where:
        candidates = library.candidate_ids(where)
        if len(candidates) == 0:
            return []
        allowed = set(candidates.tolist())
        if len(candidates) <= EXACT_LIMIT:
            return library.with_repeats(_exact(library, vector, candidates, n), n, allowed)
        total = len(library.index)
        fetch = min(total, n * math.ceil(2 * total / len(candidates)))
        while True:
            found = [(i, s) for i, s in _index_search(library, vector, fetch) if i in allowed]
            if len(found) >= n or fetch >= total:
                return library.with_repeats(found, n, allowed)
            fetch = min(total, fetch * 2)
    return library.with_repeats(_index_search(library, vector, n), n)


def _index_search(library, vector: np.ndarray, n: int) -> list[tuple[int, float]]:
    index = library.index
    if len(index) == 0:
        return []
    ids, scores = index.search(vector[None, :], min(n, len(index)))
    return [(int(i), float(s)) for i, s in zip(ids[0], scores[0]) if i >= 0]


def _exact(library, vector: np.ndarray, candidates: np.ndarray, n: int) -> list[tuple[int, float]]:
    ids, vectors = library.embeddings(ids=candidates)
    if not len(ids):
        return []
    scores = vectors @ (vector / (np.linalg.norm(vector) or 1.0))
    top = np.argsort(-scores, kind="stable")[:n]
    return [(int(ids[i]), float(scores[i])) for i in top]


def keyword_ranking(library, query: str, n: int, where: dict | None = None) -> list[tuple[int, float]]:
    """Top n (passage id, BM25 score) over title + passage text."""
    return library.keyword_search(query, n, where)


def search(library, query: str, k: int = 10, mode: str = "dense", where: dict[str, str] | None = None,
           query_vector: np.ndarray | None = None) -> list[Hit]:
    """The k best passages for ``query``; ``query_vector`` replaces the encoded query on the dense side."""
    if not isinstance(query, str) or not query.strip():
        raise RagError("the query is empty")
    mode = check_mode(mode)
    k = SEARCH_K.check(k)
    if mode == "dense":
        ranked = dense_ranking(library, query, k, where, query_vector)
    elif mode == "keyword":
        ranked = keyword_ranking(library, query, k, where)
    else:
        depth = max(k, HYBRID_DEPTH)
        dense = dense_ranking(library, query, depth, where, query_vector)
        keyword = keyword_ranking(library, query, depth, where)
        # keyword first: a tie left after the best single rank goes to the exact word match
        ranked = fuse([[i for i, _ in keyword], [i for i, _ in dense]], RRF_K)
    return hits_for(library, ranked, k)


def hits_for(library, ranked: list[tuple[int, float]], k: int) -> list[Hit]:
    """Hits with their passage and document; ids the store no longer has are dropped."""
    passages = library.passages([i for i, _ in ranked[: k * 2 + 10]])
    documents = library.documents_by_id({p.document_id for p in passages.values()})
    hits = []
    for pid, score in ranked:
        passage = passages.get(pid)
        if passage is None or passage.document_id not in documents:
            continue
        hits.append(Hit(passage=passage, document=documents[passage.document_id], score=score, rank=len(hits) + 1))
        if len(hits) == k:
            break
    return hits
