"""Backends by name: one module per backend, one line here to register it."""
from __future__ import annotations

import os
from typing import Any, Callable

from indexes.base import BaseIndex
from indexes.storage import IndexFileError, read_manifest
from indexes.flat import FlatIndex
from indexes.hnsw import HnswIndex
from indexes.kdtree import KDTreeIndex
from indexes.lsh import LSHIndex
from indexes.nsw import NswIndex
from indexes.pq import IVFPQIndex, PQIndex
from indexes.sq import SQIndex

BACKENDS: dict[str, Callable[..., BaseIndex]] = {
    "flat": FlatIndex,
    "lsh": LSHIndex,
    "pq": PQIndex,
    "ivfpq": IVFPQIndex,
    "sq": SQIndex,
    "kdtree": KDTreeIndex,
    "nsw": NswIndex,
    "hnsw": HnswIndex,
}


def available_backends() -> list[str]:
    """Registered backend names, in registration order (``flat`` first: the ground truth)."""
    return list(BACKENDS)


def _backend(name: str):
    try:
        return BACKENDS[name]
    except KeyError:
        raise ValueError(f"unknown index backend {name!r}; available: {', '.join(BACKENDS)}") from None


def create_index(name: str, dim: int, metric: str = "cosine", **params: Any) -> BaseIndex:
    """A new empty index; parameters not given take defaults tuned for sentence embeddings."""
    backend = _backend(name)
    try:
        return backend(dim, metric, **params)
    except TypeError as exc:
        raise ValueError(f"bad parameters for backend {name!r}: {exc}") from exc


def load_index(directory: str | os.PathLike) -> BaseIndex:
    """The index saved in ``directory``; a missing, corrupt or mismatched file is a clear error."""
    manifest = read_manifest(directory)
    if manifest["backend"] not in BACKENDS:
        raise IndexFileError(
            f"index manifest {os.path.join(directory, 'manifest.json')} names unknown backend "
            f"{manifest['backend']!r}; available: {', '.join(BACKENDS)}"
        )
    return BACKENDS[manifest["backend"]].load(directory, manifest)
