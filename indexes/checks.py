"""Input checks: every public entry point of an index validates here, so inner code trusts its inputs."""
from __future__ import annotations

from typing import Any

import numpy as np

METRICS = ("cosine", "ip", "l2")


def check_dim_metric(dim: int, metric: str) -> tuple[int, str]:
    if isinstance(dim, bool) or not isinstance(dim, (int, np.integer)) or dim <= 0:
        raise ValueError(f"dim must be a positive integer, got {dim!r}")
    if metric not in METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose one of {', '.join(METRICS)}")
    return int(dim), metric


def check_vectors(vectors: Any, dim: int, what: str = "vectors") -> np.ndarray:
    """(n, dim) float32 C-contiguous; a single 1-D vector becomes one row."""
    try:
        array = np.asarray(vectors, dtype=np.float32)
    except (TypeError, ValueError) as exc:
        raise ValueError(f"{what} must be numeric arrays: {exc}") from exc
    if array.ndim == 1:
        array = array[None, :]
    if array.ndim != 2:
        raise ValueError(f"{what} must be a 2-D array (n, {dim}), got shape {array.shape}")
    if array.shape[1] != dim:
        raise ValueError(f"{what} have dimension {array.shape[1]}, the index expects {dim}")
    if not np.isfinite(array).all():
        bad = int(np.flatnonzero(~np.isfinite(array).all(axis=1))[0])
        raise ValueError(f"{what} contain NaN or infinite values (first at row {bad})")
    return np.ascontiguousarray(array)


def id_array(ids: Any) -> np.ndarray:
    """ids as a 1-D array (a scalar becomes one id)."""
    array = np.asarray(ids)
    if array.ndim == 0:
        array = array[None]
    if array.ndim != 1:
        raise ValueError(f"ids must be a 1-D array, got shape {array.shape}")
    return array


def check_ids(ids: Any, n: int) -> np.ndarray:
    """(n,) int64, non-negative (-1 means 'no result'), no duplicates within one call."""
    array = id_array(ids)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        if not np.issubdtype(array.dtype, np.floating) or not np.all(np.mod(array, 1) == 0):
            raise ValueError(f"ids must be integers, got dtype {array.dtype}")
    array = array.astype(np.int64)
    if len(array) != n:
        raise ValueError(f"got {len(array)} ids for {n} vectors; they must be the same length")
    if array.size and array.min() < 0:
        raise ValueError(f"ids must be non-negative (-1 marks a missing result), got {int(array.min())}")
    if len(np.unique(array)) != len(array):
        values, counts = np.unique(array, return_counts=True)
        raise ValueError(f"duplicate ids in one call: {values[counts > 1][:5].tolist()}")
    return array


def check_remove_ids(ids: Any) -> np.ndarray:
    array = id_array(ids)
    if array.size and not np.issubdtype(array.dtype, np.integer):
        raise ValueError(f"ids must be integers, got dtype {array.dtype}")
    return np.unique(array.astype(np.int64))


def check_positive(backend: str, key: str, value: Any) -> None:
    """A backend's integer parameter (M, nlist, nprobe, ef, ...) must be a positive int, not a bool."""
    if isinstance(value, bool) or not isinstance(value, int) or value <= 0:
        raise ValueError(f"{backend} parameter {key} must be a positive integer, got {value!r}")


def check_k(k: Any) -> int:
    if isinstance(k, bool) or not isinstance(k, (int, np.integer)) or k <= 0:
        raise ValueError(f"k must be a positive integer, got {k!r}")
    return int(k)


def normalize_rows(vectors: np.ndarray) -> np.ndarray:
    """L2-normalised copy; a zero vector has no direction, so cosine cannot use it."""
    norms = np.linalg.norm(vectors, axis=1, keepdims=True)
    if (norms == 0).any():
        raise ValueError(f"zero vector at row {int(np.flatnonzero(norms[:, 0] == 0)[0])}: cosine needs a direction")
    return (vectors / norms).astype(np.float32, copy=False)
