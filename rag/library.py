"""An open data directory: the store (rag.db), the encoder and the vector index (index/).

The database is the source of truth and the index follows it. ``index/rag.json`` records which
store generation and highest passage id the saved index reflects; on open, an index that lags is
caught up from the stored embeddings (new ids), and one that disagrees in any other way (removed
passages, another backend or encoder, missing or corrupt files) is rebuilt from them. No
re-encoding is ever needed to get the index back.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
import uuid
from pathlib import Path

import numpy as np

from rag.config import data_dir as resolve_data_dir
from rag.encoders import DEFAULT_ENCODER, DEFAULT_ENCODER_BACKEND, backends_can_share_a_store, check_encoder_backend
from rag.errors import RagError
from rag.store import DB_NAME, Store, WriteResult

DEFAULT_BACKEND = "hnsw"
INDEX_DIR = "index"
STATE_FILE = "rag.json"


def _default_backend() -> str:
    from indexes import available_backends

    names = available_backends()
    return DEFAULT_BACKEND if DEFAULT_BACKEND in names else names[0]


class Library:
    """Store + encoder + index for one data directory; share one across threads."""

    def __init__(self, data: str | Path | None = None, model: str | None = None, backend: str | None = None,
                 encoder=None, encoder_backend: str | None = None):
        self.data_dir = resolve_data_dir(data)
        self.data_dir.mkdir(parents=True, exist_ok=True)
        self.store = Store(self.data_dir / DB_NAME)
        stored_path = self.store.meta("encoder_path") if self.store.meta("encoder") != DEFAULT_ENCODER else None
        self._model = model or stored_path  # a store built with another model reopens with it
        self._encoder = encoder
        self._index = None
        self.lock = threading.RLock()
        self.encoder_backend = self._choose_encoder_backend(getattr(encoder, "backend", None) or encoder_backend)
        if encoder is not None:
            self.store.check_encoder(encoder.name, encoder.dim, getattr(encoder, "path", None))
        stored_backend = self.store.meta("backend")
        self.backend = backend or stored_backend or _default_backend()
        self._check_backend(self.backend)
        if backend and stored_backend and backend != stored_backend:
            self.store.set_meta("backend", backend)  # the next index access rebuilds with it
        elif not stored_backend:
            self.store.set_meta("backend", self.backend)

    @staticmethod
    def _check_backend(name: str) -> None:
        from indexes import available_backends

        if name not in available_backends():
            raise RagError(f"unknown index backend {name!r}; available: {', '.join(available_backends())}")

    def _choose_encoder_backend(self, requested: str | None) -> str:
        """The store's recorded encoder back end unless another is asked for; an empty store records
        the choice, a store with vectors refuses a back end whose vectors differ (rag.encoders.VECTOR_FAMILY)."""
        if requested:
            check_encoder_backend(requested)
        stored = self.store.meta("encoder_backend")
        has_vectors = self.store.passage_count() > 0
        if stored is None and has_vectors:
            stored = "torch"  # stores from before back ends were recorded: encoded by sentence-transformers
            self.store.set_meta("encoder_backend", stored)
        chosen = requested or stored or DEFAULT_ENCODER_BACKEND
        if not has_vectors:
            if chosen != stored:
                self.store.set_meta("encoder_backend", chosen)
        elif not backends_can_share_a_store(stored, chosen):
            raise RagError(f"this store was encoded with the {stored} encoder back end, whose vectors differ from "
                           f"{chosen}'s; use --encoder-backend {stored}, or another --data directory for {chosen}")
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
                from rag.encoders import load_encoder

                from rag.generators import model_cache_dir

                encoder = load_encoder(self._model, self.encoder_backend, cache_dir=model_cache_dir(self.data_dir))
                self.store.check_encoder(encoder.name, encoder.dim, getattr(encoder, "path", None))
                self._encoder = encoder
            return self._encoder

    @property
    def dim(self) -> int:
        stored = self.store.meta("dim")
        return int(stored) if stored else self.encoder.dim

    # --- index --------------------------------------------------------------------------------

    @property
    def index(self):
        """The vector index, loaded, caught up or rebuilt so it matches the store."""
        with self.lock:
            if self._index is None:
                self._index = self._open_index()
            return self._index

    def _state(self) -> dict | None:
        try:
            return json.loads((self.index_dir / STATE_FILE).read_text(encoding="utf-8"))
        except (OSError, ValueError):
            return None

    def _open_index(self):
        from indexes import load_index

        state = self._state()
        encoder = self.store.meta("encoder")
        if state and state.get("backend") == self.backend and state.get("encoder") == encoder:
            try:
                index = load_index(self.index_dir)
            except ValueError:
                index = None
            if index is not None and index.name == self.backend and index.dim == self.dim:
                if state.get("generation") == self.store.generation():
                    return index
                ids, vectors = self.store.embeddings(after=int(state.get("max_passage_id", 0)), dim=self.dim)
                index.add(ids, vectors)
                if len(index) == self.store.passage_count():
                    self.save_index(index)
                    return index
        return self.rebuild_index()

    def rebuild_index(self, backend: str | None = None, **params):
        """A fresh index of ``backend`` (default: the current one) from the stored embeddings."""
        with self.lock:
            if backend:
                self._check_backend(backend)
                self.backend = backend
                self.store.set_meta("backend", backend)
            index = index_from_store(self.store, self.backend, self.dim, **params)
            self._index = index
            self.save_index(index, force=True)
            return index

    def save_index(self, index=None, force: bool = False) -> None:
        """Save the index, then record the store generation it reflects (both written atomically)."""
        with self.lock:
            index = index or self._index
            if index is None:
                return
            state = {"backend": self.backend, "encoder": self.store.meta("encoder"), "dim": index.dim,
                     "generation": self.store.generation(), "max_passage_id": self.store.max_passage_id(),
                     "count": len(index)}
            if not force and self._state() == state and (self.index_dir / "manifest.json").exists():
                return  # nothing changed since the last save
            index.save(self.index_dir)
            path = self.index_dir / STATE_FILE
            tmp = path.with_name(f".{STATE_FILE}.{uuid.uuid4().hex}.tmp")
            tmp.write_text(json.dumps(state, indent=2), encoding="utf-8")
            os.replace(tmp, path)

    def apply(self, result: WriteResult) -> None:
        """Make the in-memory index follow one store write (saved later by save_index)."""
        with self.lock:
            if self._index is None:
                return  # opened lazily: it catches up from the store then
            if len(result.removed_ids):
                self._index.remove(result.removed_ids)
            if len(result.added_ids):
                self._index.add(result.added_ids, result.vectors)

    def remove_document(self, key: str | int, save: bool = True) -> list[int]:
        """Remove a document (or every record of a file) from the store and the index."""
        with self.lock:
            index = self.index  # loaded first, so it can follow the removal
            removed = self.store.remove_document(key)
            if removed:
                index.remove(np.asarray(removed, dtype=np.int64))
            if save:
                self.save_index()
        return removed

    def stats(self) -> dict:
        stats = self.store.stats()
        stats["backend"] = self.backend
        stats["encoder_backend"] = self.encoder_backend
        return stats

    def close(self) -> None:
        with self.lock:
            self._index = None
            self.store.close()


def index_from_store(store, backend: str, dim: int, **params):
    """A new ``backend`` index holding every stored embedding: any backend, no re-encoding."""
    from indexes import create_index

    try:
        index = create_index(backend, dim, **params)
    except ValueError as exc:
        raise RagError(f"cannot create a {backend} index: {exc}") from exc
    for ids, vectors in store.iter_embeddings(dim=dim):
        index.add(ids, vectors)
    return index


def open_library(data: str | Path | None = None, model: str | None = None, backend: str | None = None,
                 encoder=None, encoder_backend: str | None = None) -> Library:
    """Open (creating if needed) the data directory; ``encoder`` reuses an already-loaded model,
    ``encoder_backend`` (torch, onnx, onnx-int8) overrides the store's recorded one."""
    return Library(data, model=model, backend=backend, encoder=encoder, encoder_backend=encoder_backend)


def remove_index_files(library: Library) -> None:
    """Drop the saved index (the next access rebuilds it from the store)."""
    shutil.rmtree(library.index_dir, ignore_errors=True)
