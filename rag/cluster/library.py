"""The same library sharded over a Ray cluster: N shards, each a whole ``Library`` owned by one Ray actor.

Ray places and restarts the actors and moves the data; this package only says what a shard is, where
a document goes (rag.cluster.shards), what the actors do (rag.cluster.actors) and, here, how a
command's calls fan out to the shards and how their results merge:

- a cluster library is a data directory holding ``cluster.json`` (shard count, encoder and its back
  end, vector backend, each shard's directory) and, by default, the shard directories under ``shards/``;
- a document goes to shard ``shard_of(source key, n)``, a stable hash of its path/uri, so a changed
  file replaces itself on the same shard and ``rag rm`` finds it there;
- ids handed out are global: ``local id * n + shard`` (documents and passages alike), so every id
  names its shard and the CLI, the web page and the JSON API take them as they are;
- ingest: encoder actors (one model each) read, parse, chunk and encode batches of files in parallel,
  and each source is written by its shard actor through ``Library.write_source`` (one transaction
  per source: the same crash guarantees as on one machine; a re-run finishes what a crash left);
- search: dense asks every shard for its top k and merges by cosine score (comparable by
  construction); keyword rescoring uses global BM25 statistics (rag.search.bm25); hybrid fuses those two
  global rankings exactly as one store does. Filters apply on every shard before its top k.

The encoders are a plain pool of Ray actors rather than a Ray Data pipeline: a batch of files is read,
chunked and encoded where the model is loaded, and each result goes straight to its shard, so Ray Data's
executor (and pandas, pyarrow) would add nothing but weight. Ray restarts a lost encoder actor and
retries its batch.

Nothing imports this package, and so Ray, unless a command is given ``--cluster`` (the CLI's ``_library``,
the web app's CLUSTER).
"""
from __future__ import annotations

import os
import threading
import time
from contextlib import contextmanager
from dataclasses import replace
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np
import ray
from ray.exceptions import GetTimeoutError, RayActorError, RayTaskError

from rag.cluster.actors import ENCODER_OPTIONS, SHARD_OPTIONS, EncoderActor, ShardActor
from rag.cluster.shards import (
    DEFAULT_SHARDS, MANIFEST_FILE, SHARDS_DIR, Manifest, global_id, read_manifest, shard_of, split_id, write_manifest,
)
from rag.config import data_dir as resolve_data_dir
from rag.contract import as_document_id
from rag.errors import RagError
from rag.library import check_backend, default_backend
from rag.records import Document, Passage, SourceDocument

OBJECT_STORE_BYTES = 256 * 1024 * 1024  # `--cluster local`: small, the machine also runs the models
FILES_PER_TASK = 16  # files one encoder actor reads, chunks and encodes per call
RECORDS_PER_TASK = 128  # in-memory records per call
IN_FLIGHT = 2  # calls queued per encoder actor: one running, one waiting, so none idles between calls
SHARD_TIMEOUT = 300.0  # seconds a shard may take to answer a read before it counts as down


# --- Ray ---------------------------------------------------------------------------------------------


def connect(address: str) -> None:
    """Join the cluster at ``address`` (``auto``: the one running on this machine), or with ``local``
    start one in this process for this machine alone. Once per process."""
    if ray.is_initialized():
        return
    try:
        if address == "local":
            ray.init(num_cpus=os.cpu_count() or 1, object_store_memory=OBJECT_STORE_BYTES, include_dashboard=False,
                     log_to_driver=False, configure_logging=False)
        else:
            ray.init(address=address, log_to_driver=False, configure_logging=False)
    except (ConnectionError, ValueError, RuntimeError) as exc:
        raise RagError(f"cannot join the Ray cluster at {address!r}: {exc} (start one with `ray start --head`, "
                       "or use --cluster local for this machine alone)") from exc


def _reason(exc: Exception) -> str:
    """A dead actor's error in one line: the RagError its constructor raised (a bad store), else its type."""
    text = str(exc)
    if "RagError: " in text:
        return text.rsplit("RagError: ", 1)[1].splitlines()[0]
    return type(exc).__name__



# --- the cluster library -----------------------------------------------------------------------------


class ClusterLibrary:
    """The methods the CLI, the web app and rag.search.ranking use on a Library, over N shard actors."""

    is_cluster = True  # rag.ingest.pipeline hands a cluster library's ingests to its ingest_paths/ingest_documents

    def __init__(self, data: Path, manifest: Manifest, encoder=None, allow_partial: bool = False):
        self.data_dir = data
        self.manifest = manifest
        self.n = manifest.shards
        self.backend = manifest.backend
        self.encoder_backend = manifest.encoder_backend
        self.dim = manifest.dim
        self.allow_partial = allow_partial
        self._encoder = encoder
        self._lock = threading.RLock()
        self._local = threading.local()
        self.shards = self._start_shards()

    def _start_shards(self) -> list:
        """One actor per shard, opening the shard's Library as the manifest says (as Ray restarts it)."""
        remote = ray.remote(**SHARD_OPTIONS)(ShardActor)
        m = self.manifest
        return [remote.remote(str(m.shard_dir(self.data_dir, i)), m.backend, m.encoder, m.encoder_path, m.dim,
                              m.encoder_backend) for i in range(self.n)]

    def __enter__(self) -> "ClusterLibrary":
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Stop the shard actors (their libraries are on disk; the next open starts new ones)."""
        for actor in self.shards:
            ray.kill(actor, no_restart=True)
        self.shards = []

    def shard_dir(self, shard: int) -> Path:
        return self.manifest.shard_dir(self.data_dir, shard)

    # --- calling shards ----------------------------------------------------------------------------

    @contextmanager
    def tracking_missing(self) -> Iterator[list[int]]:
        """Within this block (this thread), with ``allow_partial``, a shard that stays down is left out
        and listed in the yielded list instead of failing the call: results marked partial."""
        self._local.missing = []
        try:
            yield self._local.missing
        finally:
            self._local.missing = None

    def _down(self, shard: int, exc: Exception) -> None:
        missing = getattr(self._local, "missing", None)
        if self.allow_partial and missing is not None:
            if shard not in missing:
                missing.append(shard)
            return
        raise RagError(f"shard {shard} of {self.n} ({self.shard_dir(shard)}) is down and did not come back "
                       f"({_reason(exc)}); its results would be missing (retry, or --allow-partial to get the "
                       "other shards' results marked partial)") from exc

    @staticmethod
    def _unwrap(exc: RayTaskError) -> Exception:
        cause = getattr(exc, "cause", None)
        if isinstance(cause, RagError):
            return RagError(str(cause))
        return exc

    def _gather(self, method: str, args_for: dict[int, tuple], retry: bool = True) -> dict[int, object]:
        """Call ``method`` on the given shards at once: {shard: result}. A shard whose actor died is
        asked once more (Ray restarts it from its data directory); one that stays down is reported."""
        refs = {s: self.shards[s].call.remote(method, *args) for s, args in args_for.items()}
        out: dict[int, object] = {}
        for shard, ref in refs.items():
            for attempt in range(2 if retry else 1):
                try:
                    out[shard] = ray.get(ref, timeout=SHARD_TIMEOUT)
                    break
                except RayTaskError as exc:
                    raise self._unwrap(exc) from None
                except (RayActorError, GetTimeoutError) as exc:
                    if attempt == 0 and retry:
                        ref = self.shards[shard].call.remote(method, *args_for[shard])
                        continue
                    self._down(shard, exc)
        return out

    def _each(self, method: str, *args) -> dict[int, object]:
        return self._gather(method, {s: args for s in range(self.n)})

    def _one(self, shard: int, method: str, *args):
        result = self._gather(method, {shard: args})
        if shard not in result:
            raise RagError(f"shard {shard} ({self.shard_dir(shard)}) is down")
        return result[shard]

    # --- ids ---------------------------------------------------------------------------------------

    def _document(self, doc: Document, shard: int) -> Document:
        return replace(doc, id=global_id(doc.id, shard, self.n))

    def _passage(self, passage: Passage, shard: int) -> Passage:
        return replace(passage, id=global_id(passage.id, shard, self.n),
                       document_id=global_id(passage.document_id, shard, self.n))

    def _by_shard(self, ids) -> dict[int, list[int]]:
        groups: dict[int, list[int]] = {}
        for gid in ids:
            shard, local = split_id(gid, self.n)
            groups.setdefault(shard, []).append(local)
        return groups

    def _where(self, where: dict | None, shard: int) -> dict | None | bool:
        """A filter as one shard reads it (an id=N filter names one shard); False: nothing there."""
        if not where or "id" not in where:
            return where
        gid = as_document_id(str(where["id"]))
        if gid is None:
            return where
        owner, local = split_id(gid, self.n)
        return dict(where, id=str(local)) if owner == shard else False

    # --- encoder -----------------------------------------------------------------------------------

    @property
    def encoder(self):
        """The query encoder, in this process (loaded on first use)."""
        with self._lock:
            if self._encoder is None:
                from rag.models.encoders import load_encoder
                from rag.models.generators import model_cache_dir

                self._encoder = load_encoder(self.manifest.encoder_path, self.encoder_backend,
                                             cache_dir=model_cache_dir(self.data_dir))
            return self._encoder

    def query_vector(self, text: str, plain: np.ndarray | None = None) -> np.ndarray:
        """The vector dense search uses for a question (a cluster has no query adapter: the encoder's)."""
        return self.encoder.encode([text])[0] if plain is None else plain

    def preload(self) -> None:
        """Load the query encoder and every shard's index now."""
        self.encoder  # noqa: B018
        self._each("passage_count")
        probe = np.eye(1, self.dim, dtype=np.float32)[0]  # any unit vector: opening the index is the point
        self._gather("dense_search", {s: (probe, 1, None) for s in range(self.n)})

    # --- reads -------------------------------------------------------------------------------------

    def passage_count(self) -> int:
        return sum(self._each("passage_count").values())

    def generation(self) -> int:
        return sum(self.generations().values())

    def generations(self) -> dict[int, int]:
        """Each shard's store generation (moves with every write to that shard)."""
        return self._each("generation")

    def passage_counts(self) -> dict[int, int]:
        out = {}
        for shard, counts in self._each("passage_counts").items():
            out.update({global_id(d, shard, self.n): c for d, c in counts.items()})
        return out

    def documents(self, collection: str | None = None) -> list[Document]:
        docs = [self._document(d, shard) for shard, found in self._each("documents", collection).items()
                for d in found]
        return sorted(docs, key=lambda d: (d.path, d.id))

    def document(self, id: int) -> Document:
        shard, local = split_id(id, self.n)
        return self._document(self._one(shard, "document", local), shard)

    def documents_by_id(self, ids) -> dict[int, Document]:
        found = self._gather("documents_by_id", {s: (local,) for s, local in self._by_shard(ids).items()})
        return {global_id(i, s, self.n): self._document(d, s) for s, docs in found.items() for i, d in docs.items()}

    def _holder(self, key: str) -> tuple[int, Document] | None:
        """The shard holding the document whose path is ``key`` (its own shard first, then the others:
        a record of a multi-record file lives on its file's shard)."""
        first = shard_of(key, self.n)
        for shard in [first] + [s for s in range(self.n) if s != first]:
            try:
                doc = self._one(shard, "find_document", key)
            except RagError:
                continue
            if doc.path == key:
                return shard, doc
        return None

    def find_document(self, key: str | int) -> Document:
        """By exact path, or by (global) id."""
        if not isinstance(key, int):
            held = self._holder(str(key))
            if held:
                return self._document(held[1], held[0])
        if as_document_id(str(key)) is None:
            raise RagError(f"no document with path or id {key!r}")
        return self.document(as_document_id(str(key)))

    def document_text(self, id: int) -> str:
        shard, local = split_id(id, self.n)
        return self._one(shard, "document_text", local)

    def page_starts(self, doc_id: int) -> list[int]:
        shard, local = split_id(doc_id, self.n)
        return self._one(shard, "page_starts", local)

    def passages_of(self, doc_id: int) -> list[Passage]:
        shard, local = split_id(doc_id, self.n)
        return [self._passage(p, shard) for p in self._one(shard, "passages_of", local)]

    def passages(self, ids) -> dict[int, Passage]:
        found = self._gather("passages", {s: (local,) for s, local in self._by_shard(ids).items()})
        return {global_id(i, s, self.n): self._passage(p, s) for s, ps in found.items() for i, p in ps.items()}

    def duplicate_of(self, id: int) -> int | None:
        shard, local = split_id(id, self.n)
        original = self._one(shard, "duplicate_of", local)
        return None if original is None else global_id(original, shard, self.n)

    def embeddings(self, ids=None) -> tuple[np.ndarray, np.ndarray]:
        """Stored (global ids, vectors) of the given passages, or all."""
        if ids is None:
            found = self._each("embeddings")
        else:
            found = self._gather("embeddings", {s: (local,) for s, local in self._by_shard(ids).items()})
        ids_out, vectors = [], []
        for shard, (local, vecs) in found.items():
            ids_out.append(np.asarray(local, dtype=np.int64) * self.n + shard)
            vectors.append(vecs)
        if not ids_out:
            return np.zeros(0, dtype=np.int64), np.zeros((0, self.dim), dtype=np.float32)
        return np.concatenate(ids_out), np.concatenate(vectors).astype(np.float32, copy=False)

    def source_state(self, source: str) -> tuple[str, str] | None:
        return self._one(shard_of(source, self.n), "source_state", source)

    def sources(self) -> list[str]:
        return sorted(s for found in self._each("sources").values() for s in found)

    def dense_search(self, vector: np.ndarray, n: int, where: dict[str, str] | None = None
                     ) -> list[tuple[int, float]]:
        """Every shard's top n (filters applied there first), merged by cosine similarity: exactly the
        top n of one store holding every passage (with an exact backend; as exact as the backend else)."""
        vector = np.asarray(vector, dtype=np.float32).reshape(-1)
        args = {s: (vector, n, w) for s in range(self.n) if (w := self._where(where, s)) is not False}
        merged = [(global_id(pid, s, self.n), score) for s, ranked in self._gather("dense_search", args).items()
                  for pid, score in ranked]
        merged.sort(key=lambda pair: -pair[1])
        return merged[:n]

    def keyword_search(self, query: str, k: int, where: dict[str, str] | None = None) -> list[tuple[int, float]]:
        """BM25 with the whole cluster's statistics (rag.search.bm25): one store's ranking and scores."""
        from rag.search.bm25 import global_ranking

        args = {s: (query, k, w) for s in range(self.n) if (w := self._where(where, s)) is not False}
        evidence = self._gather("keyword_evidence", args)
        if not evidence:
            return []
        shards = list(evidence)
        # statistics come from every shard, filtered or not, as one store's bm25() counts every row
        unfiltered = [s for s in range(self.n) if s not in evidence]
        if unfiltered:
            evidence.update(self._gather("keyword_evidence", {s: (query, 0, None) for s in unfiltered}))
            shards = list(evidence)
        ranked = global_ranking([evidence[s] for s in shards], k)
        return [(global_id(pid, shards[position], self.n), score) for position, pid, score in ranked]

    def stats(self) -> dict:
        """The shards' counts summed, plus each shard's own."""
        per_shard = self._each("stats")
        total = {"documents": 0, "duplicates": 0, "passages": 0, "collections": {},
                 "sizes": {"database": 0, "index": 0}}
        for info in per_shard.values():
            for name in ("documents", "duplicates", "passages"):
                total[name] += info[name]
            for name in ("database", "index"):
                total["sizes"][name] += info["sizes"][name]
            for name, c in info["collections"].items():
                into = total["collections"].setdefault(name, {"documents": 0, "passages": 0})
                into["documents"] += c["documents"]
                into["passages"] += c["passages"]
        total["collections"] = dict(sorted(total["collections"].items()))
        from rag.models.span_reader import reader_status

        total.update(reader=reader_status(self.data_dir), backend=self.backend, encoder=self.manifest.encoder, dim=self.dim,
                     encoder_backend=self.encoder_backend, data_dir=str(self.data_dir),
                     cluster={"shards": self.n, "per_shard": [
                         {"shard": s, "data_dir": per_shard[s]["data_dir"], "documents": per_shard[s]["documents"],
                          "passages": per_shard[s]["passages"]} for s in sorted(per_shard)]})
        return total

    # --- writes ------------------------------------------------------------------------------------

    def remove_document(self, key: str | int, save: bool = True) -> list[int]:
        """Remove a document (or every record of a file) on the shard that holds it; global passage ids."""
        gid = key if isinstance(key, int) else None
        shard = None
        if gid is None:
            first = shard_of(str(key), self.n)
            for s in [first] + [s for s in range(self.n) if s != first]:
                if self._one(s, "source_state", str(key)) is not None:
                    shard = s
                    break
            if shard is None:
                held = self._holder(str(key))
                if held:
                    shard, key = held[0], held[1].path
                else:
                    gid = as_document_id(str(key))
        if shard is None:
            if gid is None:
                raise RagError(f"no document with path or id {key!r}")
            shard, key = split_id(gid, self.n)
        removed = self._gather("remove_document", {shard: (key, save)}, retry=False)[shard]
        return [global_id(i, shard, self.n) for i in removed]

    @staticmethod
    def _count_writes(writes: list, report) -> None:
        for written in ray.get(writes):
            for key, replaced, duplicates, passages, error in written:
                if error:
                    report.fail(key, error)
                    continue
                report.updated += int(replaced)
                report.added += int(not replaced)
                report.duplicates += duplicates
                report.passages += passages

    def import_library(self, library, batch: int = 64):
        """Copy a one-machine library (documents, passages, locations and stored vectors) onto the shards,
        each source to its shard, without re-encoding; sources already there unchanged are skipped."""
        from rag.ingest.locations import Location
        from rag.ingest.pipeline import IngestReport
        from rag.models.encoders import backends_can_share_a_store
        from rag.store.database import NewDocument

        info = library.stats()
        if info["encoder"] and (info["encoder"] != self.manifest.encoder or info["dim"] != self.dim
                                or not backends_can_share_a_store(library.encoder_backend, self.encoder_backend)):
            raise RagError(f"{library.data_dir} was encoded with {info['encoder']} ({library.encoder_backend}), this "
                           f"cluster library with {self.manifest.encoder} ({self.encoder_backend}): their vectors differ")
        report = IngestReport()
        started = time.perf_counter()
        pending: dict[int, list] = {}
        writes = []
        for source in library.sources():
            digest, collection = library.source_state(source)
            shard = shard_of(source, self.n)
            if self._one(shard, "source_state", source) == (digest, collection):
                report.skipped += 1
                continue
            docs = []
            for doc in library.documents_of_source(source):
                passages = library.passages_of(doc.id)
                ids, vectors = library.embeddings(ids=[p.id for p in passages])
                row = {pid: i for i, pid in enumerate(ids.tolist())}
                docs.append(NewDocument(
                    path=doc.path, title=doc.title, text=library.document_text(doc.id), content_hash=doc.content_hash,
                    spans=[(p.start, p.end) for p in passages],
                    vectors=vectors[[row[p.id] for p in passages]] if passages else np.zeros((0, self.dim), np.float32),
                    collection=doc.collection, size=doc.size, mtime=doc.mtime, metadata=doc.metadata,
                    locations=[Location(p.page, p.last_page, p.heading) for p in passages],
                    page_starts=library.page_starts(doc.id)))
            pending.setdefault(shard, []).append((source, digest, docs))
            if len(pending[shard]) >= batch:
                writes.append(self.shards[shard].write_sources.remote(pending.pop(shard)))
        writes += [self.shards[s].write_sources.remote(sources) for s, sources in pending.items()]
        self._count_writes(writes, report)
        self.save_index()
        report.seconds = time.perf_counter() - started
        return report

    def save_index(self) -> None:
        self._gather("save_index", {s: () for s in range(self.n)}, retry=False)

    def rebuild_index(self, backend: str | None = None, **params) -> dict[int, int]:
        """Every shard's index rebuilt from its stored vectors (no re-encoding), with ``backend`` (default: the
        current one) and ``params``; {shard: vectors it holds}. A new backend goes into the manifest and
        the shard actors start again with it first, so one that Ray restarts later keeps it."""
        if backend and backend != self.manifest.backend:
            check_backend(backend)
            self.manifest.backend = self.backend = backend
            write_manifest(self.data_dir, self.manifest)
            for actor in self.shards:
                ray.kill(actor, no_restart=True)
            self.shards = self._start_shards()
        refs = [actor.rebuild_index.remote(self.backend, params) for actor in self.shards]
        counts = {}
        for shard, ref in enumerate(refs):
            try:
                counts[shard] = ray.get(ref)
            except RayTaskError as exc:
                raise self._unwrap(exc) from None
            except RayActorError as exc:
                raise RagError(f"shard {shard} of {self.n} ({self.shard_dir(shard)}) is down: its index was not "
                               f"rebuilt ({_reason(exc)}); run the command again") from exc
        return counts

    def ingest(self, items: list, collection: str, settings: dict, encoders: int | None = None,
               report=None, prune_roots: list[str] | None = None):
        """Read, chunk and encode ``items`` (file paths or SourceDocuments) on a pool of encoder actors,
        then write each source on its shard; bad sources are reported and the rest go in."""
        from rag.ingest.pipeline import IngestReport
        from rag.models.generators import model_cache_dir

        report = report or IngestReport()
        if not collection or not str(collection).strip():
            raise RagError("the collection name must not be empty")
        self.encoder  # noqa: B018 - the driver's copy makes the ONNX export once, before the actors load it
        started = time.perf_counter()
        size = RECORDS_PER_TASK if items and isinstance(items[0], SourceDocument) else FILES_PER_TASK
        batches = [items[i:i + size] for i in range(0, len(items), size)]
        count = encoders or max(1, min(int(ray.cluster_resources().get("CPU", 1)), len(batches)))
        actor = ray.remote(**ENCODER_OPTIONS)(EncoderActor)
        pool = [actor.remote(self.manifest.encoder_path, self.encoder_backend, str(model_cache_dir(self.data_dir)),
                             self.shards, 1) for _ in range(count if batches else 0)]
        running: dict = {}
        writes: list = []
        try:
            next_batch = 0
            load = [0] * len(pool)  # calls queued on each encoder actor: the least busy gets the next batch
            while next_batch < len(batches) or running:
                while next_batch < len(batches) and min(load) < IN_FLIGHT:
                    worker = load.index(min(load))
                    ref = pool[worker].prepare.remote(batches[next_batch], collection, settings)
                    running[ref] = (batches[next_batch], worker)
                    load[worker] += 1
                    next_batch += 1
                done, _ = ray.wait(list(running), num_returns=1)
                batch, worker = running.pop(done[0])
                load[worker] -= 1
                try:
                    results, seconds = ray.get(done[0])
                except (RayTaskError, RayActorError) as exc:
                    reason = f"{type(self._unwrap(exc)).__name__}: {self._unwrap(exc)}" if isinstance(
                        exc, RayTaskError) else f"encoder actor lost: {exc}"
                    for item in batch:
                        report.fail(getattr(item, "uri", str(item)), reason)
                    continue
                report.encode_seconds += seconds
                by_shard: dict[int, list] = {}
                for result in results:
                    if result[0] == "failed":
                        report.fail(result[1], result[2])
                    elif result[0] == "skipped":
                        report.skipped += 1
                    else:
                        _, shard, key, digest, docs = result
                        by_shard.setdefault(shard, []).append((key, digest, docs))
                writes += [self.shards[s].write_sources.remote(sources) for s, sources in by_shard.items()]
            self._count_writes(writes, report)
            if prune_roots:
                report.removed = sum(ray.get([s.prune.remote(prune_roots) for s in self.shards]))
            self.save_index()
        finally:
            for worker in pool:
                ray.kill(worker, no_restart=True)
            report.seconds = time.perf_counter() - started
        return report

    def ingest_paths(self, paths: list[str], collection: str = "default", include=None, exclude=None,
                     chunk_tokens: int | None = None, overlap: int | None = None, prune: bool = False,
                     options=None, max_bytes: int | None = None, default_excludes: bool = True,
                     max_passages: int | None = None, encoders: int | None = None, **_local_only):
        """rag.ingest.pipeline.ingest_paths on a cluster (it hands a cluster library's ingests here): the
        files must be readable where the encoder actors run (one machine, or a shared file system)."""
        from rag.ingest.loaders import LoadOptions
        from rag.ingest.pipeline import DEFAULT_MAX_BYTES, IngestReport, find_files

        if not paths:
            raise RagError("nothing to ingest: give files, folders or - for stdin")
        if "-" in paths:
            raise RagError("stdin ('-') cannot be ingested into a cluster library: save it to a file first")
        files, missing = find_files(list(paths), include, exclude, default_excludes)
        report = IngestReport()
        for path, reason in missing:
            report.fail(path, reason)
        settings = {"chunk_tokens": chunk_tokens, "overlap": overlap, "options": options or LoadOptions(),
                    "max_bytes": max_bytes or DEFAULT_MAX_BYTES, "max_passages": max_passages}
        return self.ingest([str(f) for f in files], collection, settings, encoders=encoders, report=report,
                           prune_roots=[os.path.abspath(Path(p).expanduser()) for p in paths] if prune else None)

    def ingest_documents(self, docs: Iterable[SourceDocument], collection: str = "default",
                         chunk_tokens: int | None = None, overlap: int | None = None, encoders: int | None = None,
                         **_local_only):
        """rag.ingest.pipeline.ingest_documents on a cluster: in-memory records, keyed by their uri."""
        settings = {"chunk_tokens": chunk_tokens, "overlap": overlap, "options": None, "max_bytes": 0,
                    "max_passages": None}
        return self.ingest(list(docs), collection, settings, encoders=encoders)


def open_cluster_library(data: str | Path | None, address: str, shards: int | None = None, model: str | None = None,
                         backend: str | None = None, encoder=None, encoder_backend: str | None = None,
                         create: bool = True, allow_partial: bool = False) -> ClusterLibrary:
    """Open (or, with ``create``, make) the cluster library in ``data`` on the Ray cluster at ``address``."""
    from rag.models.encoders import DEFAULT_ENCODER, DEFAULT_ENCODER_BACKEND, backends_can_share_a_store, load_encoder
    from rag.models.generators import model_cache_dir
    from rag.store.database import DB_NAME

    directory = resolve_data_dir(data)
    manifest = read_manifest(directory)
    if manifest is None:
        if (directory / DB_NAME).exists():
            raise RagError(f"{directory} holds a one-machine library; a cluster library needs its own --data "
                           "directory (or leave out --cluster)")
        if not create:
            raise RagError(f"no cluster library in {directory} (no {MANIFEST_FILE}): check --data or RAG_DATA, "
                           "or run `rag ingest PATH --cluster ADDRESS` first")
        if shards is not None and shards < 1:
            raise RagError(f"--shards must be at least 1, got {shards}")
        chosen_backend = backend or default_backend()
        check_backend(chosen_backend)
        encoder = encoder or load_encoder(model, encoder_backend or DEFAULT_ENCODER_BACKEND,
                                          cache_dir=model_cache_dir(directory))
        count = shards or DEFAULT_SHARDS
        manifest = Manifest(shards=count, encoder=encoder.name,
                            encoder_path=None if encoder.name == DEFAULT_ENCODER else getattr(encoder, "path", None),
                            encoder_backend=getattr(encoder, "backend", None) or encoder_backend or DEFAULT_ENCODER_BACKEND,
                            dim=int(encoder.dim), backend=chosen_backend,
                            shard_dirs=[f"{SHARDS_DIR}/shard-{i:03d}" for i in range(count)])
        write_manifest(directory, manifest)
    else:
        if shards is not None and shards != manifest.shards:
            raise RagError(f"{directory / MANIFEST_FILE}: this cluster library has {manifest.shards} shards; "
                           "--shards applies only when one is first created")
        if encoder_backend and not backends_can_share_a_store(manifest.encoder_backend, encoder_backend):
            raise RagError(f"this cluster library was encoded with the {manifest.encoder_backend} encoder back end, "
                           f"whose vectors differ from {encoder_backend}'s; use --encoder-backend "
                           f"{manifest.encoder_backend}, or another --data directory")
        if backend and backend != manifest.backend:
            check_backend(backend)
            manifest.backend = backend  # each shard's Library rebuilds its index with it on open
            write_manifest(directory, manifest)
    connect(address)
    return ClusterLibrary(directory, manifest, encoder=encoder, allow_partial=allow_partial)
