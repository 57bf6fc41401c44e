"""``pq`` and ``ivfpq``: product quantization (faiss), with exact re-ranking from a memory map.

``pq`` scans compact codes of every vector (faiss IndexPQ); ``ivfpq`` first picks the
``nprobe`` nearest of ``nlist`` coarse cells and scans only their residual codes (IndexIVFPQ).
Both then re-rank the best ``rerank`` candidates with the full float32 vectors (memory-mapped).
Vectors are kept exact until ``train_size`` have arrived, then the quantizers train themselves;
training, re-ranking, tombstones and files are indexes.quantized's.
"""
from __future__ import annotations

import math

import faiss

from indexes.checks import check_positive
from indexes.flat import faiss_metric
from indexes.quantized import QuantizedIndex, auto_cells


def default_subquantizers(dim: int) -> int:
    """About 8 dimensions per sub-quantizer (48 bytes for 384 dims: 32x smaller than float32)."""
    for m in range(max(1, dim // 8), 0, -1):
        if dim % m == 0:
            return m
    return 1


class PQIndex(QuantizedIndex):
    name = "pq"

    def __init__(self, dim: int, metric: str = "cosine", M: int | None = None, nbits: int = 8,
                 rerank: int = 100, train_size: int = 10000, memory_mapped: bool = True) -> None:
        M = default_subquantizers(dim) if M is None else M
        if not isinstance(M, int) or M <= 0 or dim % M:
            raise ValueError(f"{self.name} parameter M must divide dim={dim}, got {M!r}")
        if not isinstance(nbits, int) or not 1 <= nbits <= 16:
            raise ValueError(f"{self.name} parameter nbits must be 1..16, got {nbits!r}")
        self.M, self.nbits = M, nbits
        super().__init__(dim, metric, rerank=rerank, train_size=train_size, memory_mapped=memory_mapped,
                         M=M, nbits=nbits)

    def min_train_vectors(self) -> int:
        """k-means needs at least as many points as centroids."""
        return 2**self.nbits

    def train_knobs(self) -> tuple[str, ...]:
        return ("nbits",)

    def _new_codes(self, n_train: int):
        codes = faiss.IndexPQ(self.dim, self.M, self.nbits, faiss_metric(self.metric))
        codes.pq.cp.min_points_per_centroid = 1  # small collections train fine; no warnings
        return codes

    def code_bytes(self) -> int:
        return math.ceil(self.M * self.nbits / 8)


class IVFPQIndex(PQIndex):
    """Coarse k-means cells + residual PQ codes; ``nprobe`` cells are scanned per query."""

    name = "ivfpq"
    ivf = True

    def __init__(self, dim: int, metric: str = "cosine", nlist: int | None = None, nprobe: int = 32,
                 M: int | None = None, nbits: int = 8, rerank: int = 100, train_size: int = 10000,
                 memory_mapped: bool = True) -> None:
        if nlist is not None:
            check_positive("ivfpq", "nlist", nlist)
        check_positive("ivfpq", "nprobe", nprobe)
        self.nlist, self.nprobe = nlist, nprobe
        super().__init__(dim, metric, M=M, nbits=nbits, rerank=rerank, train_size=train_size,
                         memory_mapped=memory_mapped)
        self.params.update(nlist=nlist, nprobe=nprobe)

    def min_train_vectors(self) -> int:
        return max(2**self.nbits, self.nlist or 1)

    def train_knobs(self) -> tuple[str, ...]:
        return ("nbits", "nlist")

    def cells_for(self, n_train: int) -> int:
        """nlist: as given, else about 4 sqrt(n) cells (a power of two) with >= 39 points each."""
        return self.nlist or auto_cells(n_train)

    def _new_codes(self, n_train: int):
        nlist = self.cells_for(n_train)
        self.params["nlist"] = nlist
        self.nlist = nlist
        metric = faiss_metric(self.metric)
        quantizer = faiss.IndexFlat(self.dim, metric)
        codes = faiss.IndexIVFPQ(quantizer, self.dim, nlist, self.M, self.nbits, metric)
        codes.nprobe = self.nprobe
        codes.cp.min_points_per_centroid = 1  # small collections train fine; no warnings
        codes.pq.cp.min_points_per_centroid = 1
        return codes
