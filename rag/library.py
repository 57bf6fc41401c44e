"""An open data directory: the store (rag.db), the encoder and the vector index (index/).

``Library`` is the one way into a data directory: every write (ingest, upload, remove, rebuild)
and every read callers make go through it, and it alone keeps the vector index in step with the
store. The database is the source of truth; the index follows it by comparing what it holds (its
live ids) with the store's passage ids, never by trusting a counter: another process (a second
`rag ingest`, the server's uploads) may have written in between, with passage ids interleaved
with ours. The store's generation only says *when* to compare: it moves with every write, and
the library knows which generation its index reflects. No re-encoding is ever needed.
"""
from __future__ import annotations

import fcntl
import json
import os
import shutil
import threading
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

import numpy as np

from rag.config import data_dir as resolve_data_dir
from rag.models.encoders import (
    DEFAULT_ENCODER, DEFAULT_ENCODER_BACKEND, EXPORT_VERSION, backends_can_share_a_store, check_encoder_backend,
)
from rag.errors import RagError
from rag.records import Document, Passage
from rag.store.database import DB_NAME, NewDocument, Store, WriteResult

DEFAULT_BACKEND = "hnsw"
INDEX_DIR = "index"
STATE_FILE = "rag.json"
LOCK_FILE = "index.lock"  # serialises saving and loading index/ between processes
CLUSTER_MANIFEST = "cluster.json"  # a cluster library's data directory (rag.cluster) holds this instead of a store


def default_backend() -> str:
    """The vector index a new store gets: hnsw, else the first backend this machine has."""
    from indexes import available_backends

    names = available_backends()
    return DEFAULT_BACKEND if DEFAULT_BACKEND in names else names[0]


def check_backend(name: str) -> None:
    """Refuse an index backend this machine does not have, naming those it does."""
    from indexes import available_backends

    if name not in available_backends():
        raise RagError(f"unknown index backend {name!r}; available: {', '.join(available_backends())}")


class Library:
    """Store + encoder + index for one data directory; share one across threads, close it when done.

    ``create=False`` (every read-only command) refuses a directory that holds no store, rather
    than creating an empty one where a typo pointed.
    """

    def __init__(self, data: str | Path | None = None, model: str | None = None, backend: str | None = None,
                 encoder=None, encoder_backend: str | None = None, create: bool = True):
        self.data_dir = resolve_data_dir(data)
        if (self.data_dir / CLUSTER_MANIFEST).exists():
            raise RagError(f"{self.data_dir} holds a library sharded over a Ray cluster ({CLUSTER_MANIFEST}): "
                           "add --cluster ADDRESS (or set RAG_RAY_ADDRESS; 'local' starts Ray for this machine)")
        if not create and not (self.data_dir / DB_NAME).is_file():
            raise RagError(f"no store in {self.data_dir}: nothing has been ingested there "
                           "(check --data or RAG_DATA, or run `rag ingest PATH` first)")
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self._store = Store(self.data_dir / DB_NAME)
        stored_path = self._store.meta("encoder_path") if self._store.meta("encoder") != DEFAULT_ENCODER else None
        self._model = model or stored_path  # a store built with another model reopens with it
        self._encoder = encoder
        self._query_encoder = None  # (adapter manifest's mtime, encoder or None): rag.models.query_adapter
        self._index = None
        self._synced = -1  # the store generation the in-memory index reflects
        self.lock = threading.RLock()
        self.encoder_backend = self._choose_encoder_backend(getattr(encoder, "backend", None) or encoder_backend)
        if encoder is not None:
            self._store.check_encoder(encoder.name, encoder.dim, getattr(encoder, "path", None))
        stored_backend = self._store.meta("backend")
        self.backend = backend or stored_backend or default_backend()
        check_backend(self.backend)
        if backend and stored_backend and backend != stored_backend:
            self._store.set_meta("backend", backend)  # the next index access rebuilds with it
        elif not stored_backend:
            self._store.set_meta("backend", self.backend)

    def __enter__(self) -> "Library":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def _choose_encoder_backend(self, requested: str | None) -> str:
        """The store's recorded encoder back end unless another is asked for; an empty store records
        the choice, a store with vectors refuses a back end whose vectors differ (rag.models.encoders.VECTOR_FAMILY)."""
        if requested:
            check_encoder_backend(requested)
        stored = self._store.meta("encoder_backend")
        has_vectors = self._store.passage_count() > 0
        if stored is None and has_vectors:
            stored = "torch"  # stores from before back ends were recorded: encoded by sentence-transformers
            self._store.set_meta("encoder_backend", stored)
        chosen = requested or stored or DEFAULT_ENCODER_BACKEND
        export = int(self._store.meta("encoder_export") or 1)  # stores from before it was recorded: version 1
        if not has_vectors:
            if chosen != stored:
                self._store.set_meta("encoder_backend", chosen)
            if export != EXPORT_VERSION:
                self._store.set_meta("encoder_export", str(EXPORT_VERSION))
        elif not backends_can_share_a_store(stored, chosen):
            raise RagError(f"this store was encoded with the {stored} encoder back end, whose vectors differ from "
                           f"{chosen}'s; use --encoder-backend {stored}, or another --data directory for {chosen}")
        elif chosen == "onnx-int8" and export != EXPORT_VERSION:
            # int8 vectors depend on how the export was quantized; float32 exports all give torch's vectors
            raise RagError(f"this store's vectors were made by an earlier onnx-int8 export (version {export}; this "
                           f"release makes version {EXPORT_VERSION}, whose vectors differ): ingest its documents "
                           "again into another --data directory")
        return chosen

    @property
    def index_dir(self) -> Path:
        return self.data_dir / INDEX_DIR

    # --- encoder ------------------------------------------------------------------------------

    @property
    def encoder(self):
        """Loaded on first use (searching a store by keyword never needs it)."""
        with self.lock:
            if self._encoder is None:
                from rag.models.encoders import load_encoder

                from rag.models.generators import model_cache_dir

                encoder = load_encoder(self._model, self.encoder_backend, cache_dir=model_cache_dir(self.data_dir))
                self._store.check_encoder(encoder.name, encoder.dim, getattr(encoder, "path", None))
                self._encoder = encoder
            return self._encoder

    def query_vector(self, text: str, plain: np.ndarray | None = None) -> np.ndarray:
        """The vector dense search uses for a question: the tuned question encoder's where `rag tune retriever`
        installed an adapter here (rag.models.query_adapter), else the encoder's (``plain``, when already encoded)."""
        encoder = self.query_encoder
        if encoder is None:
            return self.encoder.encode([text])[0] if plain is None else plain
        return encoder.encode([text])[0]

    @property
    def query_encoder(self):
        """The question encoder of the installed query adapter, or None; follows an adapter installed
        (or replaced) by another process, by its manifest's modification time."""
        from rag.models.query_adapter import MANIFEST, adapter_directory, adapter_status, load_query_encoder

        manifest = adapter_directory(self.data_dir) / MANIFEST
        try:
            stamp = manifest.stat().st_mtime_ns
        except OSError:
            return None
        with self.lock:
            if self._query_encoder is None or self._query_encoder[0] != stamp:
                status = adapter_status(self.data_dir, self.encoder.name)
                encoder = None
                if status and status["usable"]:
                    from rag.models.generators import model_cache_dir

                    encoder = load_query_encoder(manifest.parent, self.encoder.path, self.encoder_backend,
                                                 model_cache_dir(self.data_dir))
                self._query_encoder = (stamp, encoder)
            return self._query_encoder[1]

    def record_query_adapter(self, name: str) -> None:
        """Note in the store that a query adapter (under <data>/models/query-adapter) encodes questions."""
        self._store.set_meta("query_adapter", name)

    def record_encoder(self, name: str, dim: int, path: str | None = None) -> None:
        """For vectors encoded elsewhere (a cluster's encoder actors): record or check which encoder made them."""
        self._store.check_encoder(name, dim, path)

    def preload(self) -> None:
        """Load the encoder and the index now (a server, so its first search does not pay for them)."""
        self.encoder  # noqa: B018 - the property loads the model
        self.index  # noqa: B018

    @property
    def dim(self) -> int:
        stored = self._store.meta("dim")
        return int(stored) if stored else self.encoder.dim

    # --- reads --------------------------------------------------------------------------------

    def documents(self, collection: str | None = None) -> list[Document]:
        return self._store.documents(collection)

    def document(self, id: int) -> Document:
        return self._store.document(id)

    def find_document(self, key: str | int) -> Document:
        """By id or exact path."""
        return self._store.find_document(key)

    def documents_by_id(self, ids) -> dict[int, Document]:
        return self._store.documents_by_id(ids)

    def document_text(self, id: int) -> str:
        return self._store.document_text(id)

    def page_starts(self, doc_id: int) -> list[int]:
        """PDF: the character offset where each page starts (empty for other formats)."""
        return self._store.page_starts(doc_id)

    def passages_of(self, doc_id: int) -> list[Passage]:
        return self._store.passages_of(doc_id)

    def passages(self, ids) -> dict[int, Passage]:
        return self._store.passages(ids)

    def passage_counts(self) -> dict[int, int]:
        return self._store.passage_counts()

    def passage_count(self) -> int:
        return self._store.passage_count()

    def embeddings(self, ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Stored (ids, vectors): the given passage ids, or all."""
        return self._store.embeddings(ids=ids, dim=self.dim)

    def keyword_search(self, query: str, k: int, where: dict[str, str] | None = None) -> list[tuple[int, float]]:
        return self._store.keyword_search(query, k, where)

    def keyword_evidence(self, query: str, n: int, where: dict[str, str] | None = None):
        """Top n by BM25 plus the statistics a global rescoring over several libraries needs (rag.search.bm25)."""
        return self._store.keyword_evidence(query, n, where)

    def dense_search(self, vector: np.ndarray, n: int, where: dict[str, str] | None = None) -> list[tuple[int, float]]:
        """Top n (passage id, cosine similarity) for a query vector (dim,), filters applied before the top n."""
        from rag.search.ranking import vector_ranking

        return vector_ranking(self, np.asarray(vector, dtype=np.float32).reshape(-1), n, where)

    def candidate_ids(self, where: dict[str, str] | None) -> np.ndarray:
        return self._store.candidate_ids(where)

    def with_repeats(self, ranked: list[tuple[int, float]], n: int, allowed=None) -> list[tuple[int, float]]:
        """A dense top n with every passage that holds a ranked passage's text, equal scores in a stable order."""
        return self._store.with_repeats(ranked, n, allowed)

    def vectors_of_texts(self, hashes) -> dict[str, np.ndarray]:
        """Stored vectors by text hash (rag.store.database.passage_hash): what ingestion need not encode again."""
        return self._store.vectors_of_texts(hashes)

    def source_state(self, source: str) -> tuple[str, str] | None:
        return self._store.source_state(source)

    def sources(self) -> list[str]:
        return self._store.sources()

    def documents_of_source(self, source: str) -> list[Document]:
        return self._store.documents_of_source(source)

    def has_content(self, content_hash: str, collection: str, exclude_source: str | None = None) -> bool:
        return self._store.has_content(content_hash, collection, exclude_source)

    def duplicate_of(self, id: int) -> int | None:
        return self._store.duplicate_of(id)

    def passage_ids(self) -> np.ndarray:
        """Every stored passage id, ascending."""
        return self._store.passage_ids()[1]

    def generation(self) -> int:
        """Moves with every write to the store, from any process."""
        return self._store.generation()

    def build_index(self, backend: str, **params):
        """A new, separate ``backend`` index over every stored embedding (evaluations compare these)."""
        check_backend(backend)
        return index_from_store(self._store, backend, self.dim, **params)

    def integrity(self) -> dict[str, int]:
        """Row counts that must agree, plus what the vector index holds."""
        counts = self._store.counts()
        counts["index"] = len(self.index)
        return counts

    def stats(self) -> dict:
        """The store's counts plus the backend and the saved index's size on disk."""
        stats = self._store.stats()
        stats["backend"] = self.backend
        stats["encoder_backend"] = self.encoder_backend
        files = [p for p in self.index_dir.rglob("*") if p.is_file()] if self.index_dir.exists() else []
        stats["sizes"]["index"] = sum(p.stat().st_size for p in files)
        stats["reader"] = self.reader_status()
        stats["retriever"] = self.retriever_status()
        return stats

    def reader_status(self) -> dict:
        """The span reader this library answers with: the one `rag tune reader` recorded here, else the shipped one."""
        from rag.models.span_reader import reader_status

        status = reader_status(self.data_dir)
        recorded = self._store.meta("span_reader")
        if recorded and status["source"] != "tuned":
            status["message"] = f"the tuned reader recorded here ({recorded}) is missing: the shipped one answers"
        return status

    def retriever_status(self) -> dict:
        """How questions are encoded for dense search: plainly, or through the query adapter tuned here."""
        from rag.models.query_adapter import adapter_status

        recorded = self._store.meta("query_adapter")
        status = adapter_status(self.data_dir, self._store.meta("encoder"))
        if status is None:
            message = f"the query adapter recorded here ({recorded}) is missing" if recorded else ""
            return {"query_adapter": None, **({"message": message} if message else {})}
        return {"query_adapter": status.get("name"), **status}

    def record_reader(self, name: str) -> None:
        """Note in the store that a tuned span reader (under <data>/models/span-reader) answers from now on."""
        self._store.set_meta("span_reader", name)

    # --- writes -------------------------------------------------------------------------------

    def write_source(self, key: str, source_hash: str, docs: list[NewDocument]) -> WriteResult:
        """Replace everything stored for one source (a file or a record) and make the index follow."""
        with self.lock:
            index = self.index
            result = self._store.write_source(key, source_hash, docs)
            self._follow(index, result)
            return result

    def remove_document(self, key: str | int, save: bool = True) -> list[int]:
        """Remove a document (or every record of a file) from the store and the index."""
        with self.lock:
            index = self.index
            result = self._store.remove_document(key)
            self._follow(index, result)
            if save:
                self.save_index()
        return result.removed_ids.tolist()

    def _follow(self, index, result: WriteResult) -> None:
        """Apply one of our own writes to the index; if another process wrote since the index was
        last in step, compare the whole id sets instead of assuming."""
        if len(result.removed_ids):
            index.remove(result.removed_ids)
        if len(result.added_ids):
            index.add(result.added_ids, result.vectors)
        if result.previous == self._synced:
            self._synced = result.generation
        else:
            self._sync(index)

    # --- index --------------------------------------------------------------------------------

    @property
    def index(self):
        """The vector index, holding exactly the store's passages (loaded, caught up or rebuilt)."""
        with self.lock:
            if self._index is None:
                self._index = self._open_index()
            elif self._store.generation() != self._synced:
                self._sync(self._index)  # another process wrote the store
            return self._index

    def _sync(self, index) -> None:
        """Make ``index`` hold exactly the stored passage ids: add the missing, drop the gone."""
        generation, stored = self._store.passage_ids()
        held = index.ids()
        gone = np.setdiff1d(held, stored, assume_unique=True)
        missing = np.setdiff1d(stored, held, assume_unique=True)
        if len(gone):
            index.remove(gone)
        for start in range(0, len(missing), 20000):
            ids, vectors = self._store.embeddings(ids=missing[start:start + 20000], dim=self.dim)
            if len(ids):
                index.add(ids, vectors)
        self._synced = generation

    @contextmanager
    def _index_files_lock(self) -> Iterator[None]:
        """Between processes: one saves or loads index/ at a time (a rename is atomic, a pair is not)."""
        with open(self.data_dir / LOCK_FILE, "a") as fh:
            fcntl.flock(fh, fcntl.LOCK_EX)
            try:
                yield
            finally:
                fcntl.flock(fh, fcntl.LOCK_UN)

    def _state(self) -> dict | None:
        try:
            return json.loads((self.index_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _open_index(self):
        from indexes import load_index

        index = None
        with self._index_files_lock():
            state = self._state()
            if state and state.get("backend") == self.backend and state.get("encoder") == self._store.meta("encoder"):
                try:
                    index = load_index(self.index_dir)
                except ValueError:
                    index = None
        if index is None or index.name != self.backend or index.dim != self.dim:
            return self.rebuild_index()
        self._sync(index)
        if self._synced != (state or {}).get("generation"):
            self._index = index
            self.save_index(index)
        return index

    def rebuild_index(self, backend: str | None = None, **params):
        """A fresh index of ``backend`` (default: the current one) from the stored embeddings."""
        with self.lock:
            if backend:
                check_backend(backend)
                self.backend = backend
                self._store.set_meta("backend", backend)
            generation, _ = self._store.passage_ids()
            index = index_from_store(self._store, self.backend, self.dim, **params)
            self._index, self._synced = index, generation
            self._sync(index)  # writes that landed while it was built
            self.save_index(index, force=True)
            return index

    def save_index(self, index=None, force: bool = False) -> None:
        """Save the index and the store generation it reflects (what it holds, not the store's latest)."""
        with self.lock:
            index = index or self._index
            if index is None:
                return
            state = {"backend": self.backend, "encoder": self._store.meta("encoder"), "dim": index.dim,
                     "generation": self._synced, "count": len(index)}
            with self._index_files_lock():
                if not force and self._state() == state and (self.index_dir / "manifest.json").exists():
                    return  # nothing changed since the last save
                index.save(self.index_dir)
                path = self.index_dir / STATE_FILE
                tmp = path.with_name(f".{STATE_FILE}.{uuid.uuid4().hex}.tmp")
                tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
                os.replace(tmp, path)

    def remove_index_files(self) -> None:
        """Drop the saved index (the next open rebuilds it from the store)."""
        with self.lock, self._index_files_lock():
            shutil.rmtree(self.index_dir, ignore_errors=True)

    def close(self) -> None:
        with self.lock:
            self._index = None
            self._store.close()


def index_from_store(store: Store, backend: str, dim: int, **params):
    """A new ``backend`` index holding every stored embedding: any backend, no re-encoding.
    (For the library's rebuild, and for an evaluation that opened its own store.)"""
    from indexes import create_index

    try:
        index = create_index(backend, dim, **params)
    except ValueError as exc:
        raise RagError(f"cannot create a {backend} index: {exc}") from exc
    for ids, vectors in store.iter_embeddings(dim=dim):
        index.add(ids, vectors)
    return index


def open_library(data: str | Path | None = None, model: str | None = None, backend: str | None = None,
                 encoder=None, encoder_backend: str | None = None, create: bool = True) -> Library:
    """Open the data directory (``create=False``: it must already hold a store); ``encoder`` reuses an
    already-loaded model, ``encoder_backend`` (torch, onnx, onnx-int8) overrides the store's recorded one.

    A library sharded over Ray opens with ``rag.cluster.library.open_cluster_library`` (same methods)
    instead: the CLI's ``--cluster`` and the web app's CLUSTER choose it, so only they import Ray."""
    return Library(data, model=model, backend=backend, encoder=encoder, encoder_backend=encoder_backend,
                   create=create)
