"""``sq``: scalar quantization (faiss), each dimension to ``bits`` = 8, 4 or 16 (fp16).

Floats become small integers to cut the work: 8-bit codes are 384 bytes per MiniLM vector against
1,536 for flat, 4-bit 192, fp16 768. 8- and 4-bit codes map each dimension's trained range
(min to max over the training vectors) onto 256 or 16 levels; fp16 needs no training. The best
``rerank`` candidates are re-ranked exactly from the memory-mapped float vectors as ``pq`` does
(``rerank=0``: code scores). ``nlist`` adds an inverted file for large stores: ``nprobe`` of
``nlist`` k-means cells are scanned, their codes holding residuals from the cell centre.
Until ``train_size`` vectors have arrived they are kept exact (indexes.quantized).
"""
from __future__ import annotations

import math

import faiss

from indexes.checks import check_positive
from indexes.flat import faiss_metric
from indexes.quantized import QuantizedIndex

QTYPES = {8: faiss.ScalarQuantizer.QT_8bit, 4: faiss.ScalarQuantizer.QT_4bit, 16: faiss.ScalarQuantizer.QT_fp16}


class SQIndex(QuantizedIndex):
    name = "sq"

    def __init__(self, dim: int, metric: str = "cosine", bits: int = 8, rerank: int = 100,
                 nlist: int | None = None, nprobe: int = 32, train_size: int = 10000,
                 memory_mapped: bool = True) -> None:
        if isinstance(bits, bool) or not isinstance(bits, int) or bits not in QTYPES:
            raise ValueError(f"sq parameter bits must be 8, 4 or 16 (fp16), got {bits!r}")
        if nlist is not None:
            check_positive("sq", "nlist", nlist)
        check_positive("sq", "nprobe", nprobe)
        self.bits, self.nlist, self.nprobe = bits, nlist, nprobe
        self.ivf = nlist is not None
        self.needs_training = bits != 16 or self.ivf  # fp16 codes need no ranges; cells need k-means
        super().__init__(dim, metric, rerank=rerank, train_size=train_size, memory_mapped=memory_mapped,
                         bits=bits, nlist=nlist, nprobe=nprobe)

    def min_train_vectors(self) -> int:
        """A range needs two points; k-means a point per cell."""
        return max(2, self.nlist or 1)

    def _new_codes(self, n_train: int):
        metric = faiss_metric(self.metric)
        if not self.ivf:
            return faiss.IndexScalarQuantizer(self.dim, QTYPES[self.bits], metric)
        quantizer = faiss.IndexFlat(self.dim, metric)
        codes = faiss.IndexIVFScalarQuantizer(quantizer, self.dim, self.nlist, QTYPES[self.bits], metric)
        codes.nprobe = self.nprobe
        codes.cp.min_points_per_centroid = 1  # small collections train fine; no warnings
        return codes

    def code_bytes(self) -> int:
        return math.ceil(self.dim * self.bits / 8)
