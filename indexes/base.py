"""The vector index seam: one small protocol, shared input checks, and the on-disk manifest.

Every backend stores vectors under caller-chosen int64 ids and returns similarities
(higher is better) whatever the metric, so results from different backends can be compared
and fused.
"""
from __future__ import annotations

from typing import Protocol, runtime_checkable

import numpy as np

METRICS = ("cosine", "ip", "l2")


@runtime_checkable
class VectorIndex(Protocol):
    """What every backend provides. ids: (n,) int64; vectors/queries: (n, dim) float32."""

    name: str
    dim: int
    metric: str

    def add(self, ids: np.ndarray, vectors: np.ndarray) -> None: ...

    def search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]: ...

    def remove(self, ids: np.ndarray) -> None: ...

    def save(self, directory: str) -> None: ...

    def __len__(self) -> int: ...
