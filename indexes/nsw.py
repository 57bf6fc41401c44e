"""``nsw``: the one-layer navigable small-world graph (Malkov et al. 2014), i.e. hnsw without its
upper levels.

Built by incremental insertion: each new vector is linked to the nearest nodes a greedy beam
search (``ef_construction`` candidates) finds in the graph so far, up to ``2 * M`` links a node;
a query walks the graph greedily from the entry point with a candidate list of ``ef``. faiss's
HNSW builds it, its level probabilities set so that every node lands on level 0
(``set_default_probas(M, level_mult)`` with a tiny ``level_mult``): beside ``hnsw`` it shows what
the upper levels' shortcuts buy.

The graph cannot delete: removed ids are tombstones, kept out of results by an ID selector while
they still route the walk (as hnswlib does), until a quarter of the slots are dead; then the graph
is rebuilt from the live vectors.
"""
from __future__ import annotations

from pathlib import Path

import faiss
import numpy as np

from indexes.base import TombstoneIndex
from indexes.checks import check_positive
from indexes.flat import faiss_metric, read_faiss, similarities
from indexes.slots import SlotTable
from indexes.storage import IndexFileError, require_file

INDEX_FILE = "nsw.faiss"
SLOTS_FILE = "slots.npy"
SINGLE_LEVEL = 1e-9  # level_mult: a node reaches level 1 with probability exp(-1 / level_mult) = 0


def single_level_graph(dim: int, M: int, metric: str) -> faiss.IndexHNSWFlat:
    """An empty faiss HNSW whose every node will sit on level 0: an NSW graph."""
    graph = faiss.IndexHNSWFlat(dim, M, faiss_metric(metric))
    graph.hnsw.assign_probas.clear()  # the constructor set hnsw's levels; set_default_probas appends
    graph.hnsw.cum_nneighbor_per_level.clear()
    graph.hnsw.set_default_probas(M, SINGLE_LEVEL)
    return graph


def graph_levels(graph: faiss.IndexHNSW) -> np.ndarray:
    """(ntotal,) levels per node as faiss stores them (level + 1): all 1 in an NSW graph."""
    return faiss.vector_to_array(graph.hnsw.levels)


class NswIndex(TombstoneIndex):
    name = "nsw"

    def __init__(self, dim: int, metric: str = "cosine", M: int = 16, ef_construction: int = 200,
                 ef: int = 128) -> None:
        for key, value in (("M", M), ("ef_construction", ef_construction), ("ef", ef)):
            check_positive("nsw", key, value)
        super().__init__(dim, metric, M=M, ef_construction=ef_construction, ef=ef)
        self.M, self.ef_construction, self.ef = M, ef_construction, ef
        self.slots = SlotTable()  # graph labels are positions, i.e. slots
        self.graph = self._new_graph()
        self._filter: tuple | None = None  # search parameters admitting live slots only, while any are dead

    def _new_graph(self) -> faiss.IndexHNSWFlat:
        graph = single_level_graph(self.dim, self.M, self.metric)
        graph.hnsw.efConstruction = self.ef_construction
        graph.hnsw.efSearch = self.ef
        return graph

    def _refresh_filter(self) -> None:
        """After every change: None while nothing is dead, else a bitmap selector of the live slots
        (kept with its bitmap, which faiss reads in place)."""
        if not self.slots.dead:
            self._filter = None
            return
        bitmap = np.packbits(self.slots.ids[: self.slots.size] >= 0, bitorder="little")
        selector = faiss.IDSelectorBitmap(self.slots.size, faiss.swig_ptr(bitmap))
        self._filter = (faiss.SearchParametersHNSW(sel=selector, efSearch=self.ef), selector, bitmap)

    def _search_params(self) -> faiss.SearchParametersHNSW | None:
        return self._filter[0] if self._filter else None

    search_param_names = ("ef",)

    def _set_search_param(self, key: str, value) -> None:
        """ef: the candidate list of the greedy walk (recall/speed trade-off), raised to k when k is larger."""
        check_positive("nsw", "ef", value)
        self.ef = self.params["ef"] = value
        self.graph.hnsw.efSearch = value
        self._refresh_filter()

    def raw_search(self, queries: np.ndarray, k: int):
        """faiss's search of the same graph with the same ef (and the same selector, if any is dead)."""
        params = self._search_params()
        return lambda: self.graph.search(queries, k, params=params)

    def _add(self, ids: np.ndarray, vectors: np.ndarray) -> None:
        self.slots.add(ids)  # a re-added id's old node becomes a tombstone
        self.graph.add(vectors)
        if self.slots.needs_compaction():
            self._rebuild()
        self._refresh_filter()

    def _remove(self, ids: np.ndarray) -> None:
        super()._remove(ids)
        self._refresh_filter()

    def _rebuild(self) -> None:
        """A fresh graph over the live vectors: drops tombstones for good."""
        keep = self.slots.compact()
        graph = self._new_graph()
        if len(keep):
            graph.add(self.graph.reconstruct_batch(keep))
        self.graph = graph
        self._refresh_filter()

    def _search(self, queries: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        distances, labels = self.graph.search(queries, k, params=self._search_params())
        ids = np.where(labels >= 0, self.slots.ids[np.maximum(labels, 0)], -1)
        return ids.astype(np.int64), similarities(distances, labels, self.metric)

    def _stored(self, ids: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
        """The graph keeps the vectors: read back what a removal hands to a copy."""
        slots = self.slots.slots_of(ids)
        live = slots >= 0
        rows = self.graph.reconstruct_batch(slots[live]) if live.any() else np.empty((0, self.dim), np.float32)
        return live, np.asarray(rows, dtype=np.float32).reshape(-1, self.dim)

    def _memory_bytes(self) -> int:
        """faiss's layout: per node the vector, 2M int32 level-0 links, an offset and a level; plus
        the id tables."""
        per_node = 4 * self.dim + 4 * 2 * self.M + 8 + 4
        bitmap = self._filter[2].nbytes if self._filter else 0
        return int(self.graph.ntotal * per_node + self.slots.memory_bytes() + bitmap)

    def _save_files(self, directory: Path) -> None:
        faiss.write_index(self.graph, str(directory / INDEX_FILE))
        np.save(directory / SLOTS_FILE, self.slots.state())

    def _load_files(self, directory: Path, manifest: dict) -> None:
        path = require_file(directory, INDEX_FILE)
        slots_path = require_file(directory, SLOTS_FILE)
        graph = read_faiss(path, self.dim)
        if not isinstance(graph, faiss.IndexHNSWFlat) or (graph.ntotal and graph_levels(graph).max() != 1):
            raise IndexFileError(f"index file {path} does not hold a single-level HNSW graph")
        self.slots = SlotTable.load(slots_path)
        if graph.ntotal != self.slots.size:
            raise IndexFileError(f"index file {path} holds {graph.ntotal} nodes, {slots_path} {self.slots.size}")
        graph.hnsw.efSearch = self.ef
        self.graph = graph
        self._refresh_filter()
