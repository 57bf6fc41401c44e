"""Vector index backends behind one interface, chosen by name.

    idx = create_index("hnsw", dim=384, metric="cosine")
    idx.add(ids, vectors); ids, scores = idx.search(queries, k); idx.remove(ids)
    idx.save(directory); idx = load_index(directory)
"""
from indexes.base import VectorIndex
from indexes.checks import METRICS
from indexes.registry import available_backends, create_index, load_index

__all__ = ["METRICS", "VectorIndex", "available_backends", "create_index", "load_index"]
