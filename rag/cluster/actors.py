"""The Ray actors of a cluster library: a shard (one whole ``Library``) and an encoder (one model).

They run in Ray's worker processes; rag.cluster.library starts them with the options below and
talks to them. A shard actor answers the Library methods in SHARD_METHODS and writes whole sources;
an encoder actor reads, parses, chunks and encodes batches of sources with rag.ingest.pipeline's
own steps, and says which shard each source goes to.
"""
from __future__ import annotations

import time
from pathlib import Path
from typing import Iterator

import ray

from rag.cluster.shards import shard_of
from rag.errors import RagError
from rag.records import SourceDocument

# Library methods a shard actor answers (reads, plus the writes that go to one shard)
SHARD_METHODS = frozenset({
    "passage_count", "passage_counts", "documents", "document", "find_document", "documents_by_id",
    "document_text", "page_starts", "passages_of", "passages", "embeddings", "duplicate_of", "source_state",
    "sources", "dense_search", "keyword_evidence", "stats", "integrity", "generation", "remove_document",
    "save_index",
})

# Restarted by Ray from their data directory when they die (a crash, a lost node); a call in flight
# is retried on the new actor. Shards take no CPU slot: they wait on SQLite and the index, and on a
# small cluster they must never keep the encoders from being scheduled.
SHARD_OPTIONS = dict(num_cpus=0, max_restarts=-1, max_task_retries=1, max_concurrency=8)
ENCODER_OPTIONS = dict(num_cpus=1, max_restarts=-1, max_task_retries=2)


class ShardActor:
    """One shard: the ordinary Library over the shard's own data directory, in a Ray actor."""

    def __init__(self, directory: str, backend: str, encoder: str, encoder_path: str | None, dim: int,
                 encoder_backend: str):
        from rag.library import Library

        self.library = Library(directory, backend=backend, encoder_backend=encoder_backend)
        self.library.record_encoder(encoder, dim, encoder_path)  # vectors come from the encoder actors

    def call(self, method: str, *args):
        if method not in SHARD_METHODS:
            raise RagError(f"a shard does not answer {method!r}")
        return getattr(self.library, method)(*args)

    def write_sources(self, sources: list[tuple[str, str, list]]) -> list[tuple[str, bool, int, int, str | None]]:
        """Each (key, hash, documents with vectors) in its own transaction:
        (key, replaced, duplicates, passages, why it failed or None); one bad source does not stop the others."""
        out = []
        for key, digest, docs in sources:
            try:
                result = self.library.write_source(key, digest, docs)
            except RagError as exc:
                out.append((key, False, 0, 0, str(exc)))
                continue
            out.append((key, result.replaced, result.duplicates, len(result.added_ids), None))
        return out

    def rebuild_index(self, backend: str | None, params: dict) -> int:
        """``rag reindex`` on this shard: its index rebuilt from its stored vectors; how many it holds."""
        return len(self.library.rebuild_index(backend, **params))

    def prune(self, roots: list[str]) -> int:
        from rag.ingest.pipeline import prune_missing

        return prune_missing(self.library, roots)

    def ping(self) -> bool:
        return True


class _ChunkOnly:
    """What rag.ingest.pipeline's chunker needs of a library inside an encoder actor: the encoder. Content is
    not looked up across shards (a shard's store still keeps identical content once, Store._insert)."""

    def __init__(self, encoder):
        self.encoder = encoder

    def has_content(self, *_args, **_kwargs) -> bool:
        return False

    def vectors_of_texts(self, _hashes) -> dict:
        """Nothing stored here: each distinct text of a batch is encoded once (the shard's store
        then keeps one vector per text, Store._insert)."""
        return {}


class EncoderActor:
    """One encoder model per actor: reads, parses and chunks a batch of sources, then encodes them."""

    def __init__(self, model: str | None, encoder_backend: str, cache_dir: str, shards: list, threads: int = 1):
        from rag.models.encoders import load_encoder

        if encoder_backend == "torch":
            import torch

            torch.set_num_threads(max(1, threads))
        self.encoder = load_encoder(model, encoder_backend, cache_dir=cache_dir, threads=threads)
        self.shards = shards
        self._ingesters: dict[tuple, object] = {}  # per chunking settings: its tokenizer copy is made once

    def _state(self, key: str):
        return ray.get(self.shards[shard_of(key, len(self.shards))].call.remote("source_state", key))

    def _sources(self, items: list, collection: str, settings: dict) -> Iterator:
        """Source, (path, reason) for a failure, or (key,) for an unchanged source."""
        from rag.ingest.loaders import LoadError
        from rag.ingest.pipeline import parse_source, read_source, record_source

        for item in items:
            if isinstance(item, SourceDocument):
                source = record_source(item)
                if isinstance(source, tuple):
                    yield source
                else:
                    yield (item.uri,) if self._state(source.key) == (source.hash, collection) else source
                continue
            try:
                source, data = read_source(Path(item), settings["options"], settings["max_bytes"])
            except LoadError as exc:
                yield (str(item), str(exc))
                continue
            if self._state(source.key) == (source.hash, collection):
                yield (source.key,)
                continue
            yield from parse_source(str(item), data, source, settings["options"])

    def prepare(self, items: list, collection: str, settings: dict) -> tuple[list, float]:
        """([("failed", path, reason) | ("skipped", key) | ("source", shard, key, hash, docs)], encode seconds)."""
        from rag.ingest.pipeline import IngestReport, Ingester

        key = (collection, settings["chunk_tokens"], settings["overlap"], settings["max_passages"])
        if key not in self._ingesters:
            self._ingesters[key] = Ingester(_ChunkOnly(self.encoder), collection, settings["chunk_tokens"],
                                             settings["overlap"], IngestReport(), progress=False,
                                             max_passages=settings["max_passages"])
        ingester = self._ingesters[key]
        out, pending = [], []
        for source in self._sources(items, collection, settings):
            if isinstance(source, tuple):
                out.append(("skipped", source[0]) if len(source) == 1 else ("failed", *source))
                continue
            try:
                prepared = ingester.prepare(source)
            except Exception as exc:  # one source the chunker cannot take must not stop the batch
                prepared = (source.key, f"cannot chunk: {type(exc).__name__}: {exc}")
            if isinstance(prepared, tuple):
                out.append(("failed", *prepared))
            else:
                pending.append(prepared)
        started = time.perf_counter()
        ingester.assign_vectors(pending)
        seconds = time.perf_counter() - started
        for item in pending:
            key = item.source.key
            out.append(("source", shard_of(key, len(self.shards)), key, item.source.hash, item.docs))
        return out, seconds
