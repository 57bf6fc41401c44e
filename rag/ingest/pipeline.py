"""Ingestion: sources -> documents -> passages -> embeddings -> store + index.

Passages are encoded in large batches gathered across files (the encoder sorts them by length, so
big batches keep it near its raw speed), but each source is then committed on its own
transaction: a crash loses at most the batch in flight, and the next run redoes only that.
"""
from __future__ import annotations

import copy
import fnmatch
import hashlib
import os
import queue
import re
import sys
import threading
import time
from dataclasses import dataclass, field
from pathlib import Path
from typing import Iterable, Iterator

import numpy as np

from rag.errors import RagError
from rag.ingest.chunking import Chunker, cap_spans
from rag.ingest.loaders import LOADERS, LoadError, LoadOptions, load_bytes
from rag.ingest.locations import locate
from rag.records import SourceDocument
from rag.store.database import NewDocument, passage_hash

# Passages gathered before one encode call: large enough for length-sorted batching to pay off.
ENCODE_BATCH = 2048
FIRST_BATCH = 256  # ... but the first one is sent early, then sizes double up to ENCODE_BATCH
DEFAULT_MAX_BYTES = 50 * 1024 * 1024
TITLE_MAX_TOKENS = 32  # a longer title is cut to this before it is prefixed to each passage
TITLE_MAX_CHARS = 400  # ... and to this many characters first (one huge "word" is one token)
DEFAULT_OVERLAP = 32

# Skipped while walking folders (files named on the command line are always read).
DEFAULT_EXCLUDES = (
    ".*", "_sources", "_static", "_images", "_downloads", "__pycache__", "node_modules",
    "genindex*.html", "py-modindex.html", "search.html",
)


@dataclass
class IngestReport:
    added: int = 0
    updated: int = 0
    skipped: int = 0
    failed: int = 0
    removed: int = 0  # pruned sources
    duplicates: int = 0  # documents whose content was already stored (kept as aliases)
    failures: list[tuple[str, str]] = field(default_factory=list)
    passages: int = 0
    seconds: float = 0.0
    encode_seconds: float = 0.0

    @property
    def passages_per_second(self) -> float:
        return self.passages / self.seconds if self.seconds > 0 else 0.0

    def fail(self, path: str, reason: str) -> None:
        self.failed += 1
        self.failures.append((path, reason))

    def to_json(self) -> dict:
        return {"added": self.added, "updated": self.updated, "skipped": self.skipped, "failed": self.failed,
                "removed": self.removed, "duplicates": self.duplicates,
                "failures": [{"path": p, "reason": r} for p, r in self.failures],
                "passages": self.passages, "seconds": round(self.seconds, 3),
                "passages_per_second": round(self.passages_per_second, 2)}


@dataclass
class Source:
    """One unit of commit: a file (possibly many records) or one in-memory record."""

    key: str
    hash: str
    docs: list[SourceDocument]
    size: int = 0
    mtime: float | None = None


@dataclass
class _Pending:
    source: Source
    docs: list[NewDocument]
    texts: list[str]  # encoder inputs, one per passage, in doc order
    hashes: list[str] = field(default_factory=list)  # rag.store.database.passage_hash of each, in the same order


def content_hash(title: str, text: str) -> str:
    return hashlib.sha256(f"{title}\x00{text}".encode("utf-8")).hexdigest()


# --- text with nothing to search ---------------------------------------------------------------

_TOKEN = re.compile(r"\w+")
_CONTROL = re.compile(r"[\x00-\x08\x0e-\x1f\x7f-\x9f]")  # control characters other than whitespace
NOISE_SHARE = 0.05  # more control characters than this share: binary data that decoded as text
MIN_VOCABULARY = 10  # fewer distinct words than this, repeated 100 times over: nothing to read either


def is_word(token: str) -> bool:
    """A run of letters or digits that could be a word: not underscores alone, not one character
    repeated (``xxxx``), not a long run of a few characters (``abababab...``)."""
    if not token.strip("_"):
        return False
    if len(token) > 3 and token.count(token[0]) == len(token):
        return False
    return len(token) <= 40 or len(set(token)) >= 5


def why_wordless(text: str) -> str | None:
    """Why ``text`` holds nothing to search (None when it holds words): such text would only add
    passages that all look alike, so it is skipped and never indexed."""
    if len(_CONTROL.findall(text)) > NOISE_SHARE * len(text):
        return "no words: control characters throughout (binary data read as text)"
    words = [w.lower() for w in _TOKEN.findall(text) if is_word(w)]
    if not words:
        return "no words: only symbols, spaces or one character repeated"
    vocabulary = len(set(words))
    if vocabulary < MIN_VOCABULARY and vocabulary < 0.01 * len(words):
        return f"no words: {vocabulary} distinct word(s) repeated {len(words):,} times"
    return None


def text_window(encoder) -> int:
    """Tokens the encoder reads for title + passage: its window less the special tokens it adds."""
    tokenizer = encoder.tokenizer
    special = tokenizer.num_special_tokens_to_add(pair=False) if hasattr(tokenizer, "num_special_tokens_to_add") else 2
    return int(encoder.max_tokens) - special


def title_prefix(tokenizer, title: str, window: int, chunk_tokens: int) -> tuple[str, int]:
    """The title as prefixed to each passage (cut to TITLE_MAX_TOKENS) and its token count; none when
    it would leave the passage less than half its size."""
    title = " ".join(title[:TITLE_MAX_CHARS].split())
    if not title:
        return "", 0
    offsets = tokenizer(title, add_special_tokens=False, return_offsets_mapping=True, verbose=False)["offset_mapping"]
    if len(offsets) > TITLE_MAX_TOKENS:
        title, offsets = title[: offsets[TITLE_MAX_TOKENS - 1][1]], offsets[:TITLE_MAX_TOKENS]
    if window - len(offsets) < chunk_tokens // 2:
        return "", 0
    return title, len(offsets)


def passage_spans(doc: SourceDocument, tokenizer, window: int, chunk_tokens: int, overlap: int
                  ) -> list[tuple[int, int]]:
    """(start, end) of each passage of ``doc`` as ingestion stores it: room left for the title prefix,
    cut at page ends and never across a heading (rag.ingest.chunking), wordless runs dropped, and a section
    holding nothing but its heading (a page title right above its first subsection) dropped too
    unless the document has nothing else."""
    _, prefix_tokens = title_prefix(tokenizer, doc.title, window, chunk_tokens)
    budget = min(chunk_tokens, window - prefix_tokens)
    spans = cap_spans(doc.text, Chunker(tokenizer, budget, min(overlap, budget // 2))
                      .chunk(doc.text, doc.page_starts, [offset for offset, _ in doc.headings]))
    # a run of one character (or of symbols) inside a real document is no passage either
    spans = [(a, b) for a, b in spans if why_wordless(doc.text[a:b]) is None]
    headings = {offset: _bare(heading) for offset, heading in doc.headings}
    with_text = [(a, b) for a, b in spans if headings.get(a) != _bare(doc.text[a:b])]
    return with_text or spans


_HEADING_MARKS = re.compile(r"[#=-]+")


def _bare(text: str) -> str:
    """A heading's words without Markdown's marks (``## Title``, a setext underline) or spacing."""
    return " ".join(_HEADING_MARKS.sub(" ", text).split())


def encoder_input(prefix: str, passage: str) -> str:
    """What the encoder sees for a passage: the document title on its own line, then the passage.
    The title gives a passage cut from a long page the context it lost (and matches how BEIR
    benchmarks encode title + text)."""
    return f"{prefix}\n{passage}" if prefix else passage


# --- walking the file system -------------------------------------------------------------------


def _matches(path: Path, patterns: Iterable[str]) -> bool:
    """A glob matches the file name, any folder name on the way, or the whole path."""
    text = path.as_posix()
    for pattern in patterns:
        if fnmatch.fnmatch(path.name, pattern) or fnmatch.fnmatch(text, pattern) \
                or fnmatch.fnmatch(text, f"*/{pattern}") or any(fnmatch.fnmatch(part, pattern) for part in path.parts[:-1]):
            return True
    return False


def find_files(paths: list[str], include=None, exclude=None, default_excludes: bool = True
               ) -> tuple[list[Path], list[tuple[str, str]]]:
    """Files to read under ``paths`` (folders walked recursively, sorted), and paths that do not exist."""
    include = list(include or [])
    exclude = list(exclude or []) + (list(DEFAULT_EXCLUDES) if default_excludes else [])
    files, missing = [], []
    for raw in paths:
        path = Path(raw).expanduser()
        if path.is_file():
            files.append(Path(os.path.abspath(path)))
        elif path.is_dir():
            root = Path(os.path.abspath(path))
            for dirpath, dirnames, filenames in os.walk(root):
                rel_dir = Path(dirpath).relative_to(root)
                dirnames[:] = sorted(d for d in dirnames if not _matches(rel_dir / d / "x", exclude))
                for name in sorted(filenames):
                    rel = rel_dir / name
                    if Path(name).suffix.lower() not in LOADERS or _matches(rel, exclude):
                        continue
                    if include and not _matches(rel, include):
                        continue
                    files.append(root / rel)
        else:
            missing.append((raw, "no such file or directory"))
    return list(dict.fromkeys(files)), missing


# Bump when the way documents are cut into passages changes: a source's stored hash carries it, so the next
# ingest of an unchanged file cuts it again rather than skipping it (2: passages stop at headings and
# end at sentence ends).
CUT_VERSION = 2


def source_hash(digest: str) -> str:
    """What a source's state is compared by: its content's digest and the cutting rules it was cut with."""
    return f"{digest}:cut{CUT_VERSION}"


def read_source(path: Path, options: LoadOptions, max_bytes: int) -> tuple[Source, bytes]:
    """Read one file and hash its bytes; LoadError says what is wrong with it."""
    try:
        stat = path.stat()
        if stat.st_size > max_bytes:
            raise LoadError(f"too large: {stat.st_size / 1e6:.1f} MB (limit {max_bytes / 1e6:.0f} MB, see --max-size)")
        if stat.st_size == 0:
            raise LoadError("empty file")
        data = path.read_bytes()
    except PermissionError as exc:
        raise LoadError("unreadable: permission denied") from exc
    except OSError as exc:
        raise LoadError(f"unreadable: {exc.strerror or exc}") from exc
    digest = hashlib.sha256(data).hexdigest()
    return Source(key=str(path), hash=source_hash(digest), docs=[], size=len(data), mtime=stat.st_mtime), data


# --- the pipeline --------------------------------------------------------------------------------


class Ingester:
    """Chunk sources, encode their passages in big batches, commit each source whole."""

    def __init__(self, library, collection: str, chunk_tokens: int | None, overlap: int | None,
                 report: IngestReport, progress: bool, encode_batch: int = ENCODE_BATCH,
                 max_passages: int | None = None):
        self.library = library
        self.max_passages = max_passages
        self.encode_batch = max(1, int(encode_batch))
        # the first encode starts early so parsing the next files overlaps it; later batches grow to full size
        self.threshold = min(FIRST_BATCH, self.encode_batch)
        self.encoder = library.encoder
        self.collection = collection
        self.report = report
        tokenizer = self.encoder.tokenizer
        self.window = text_window(self.encoder)
        if chunk_tokens is not None and chunk_tokens < 16:
            raise RagError(f"--chunk-tokens must be at least 16, got {chunk_tokens}")
        self.chunk_tokens = min(chunk_tokens or self.window, self.window)
        self.overlap = DEFAULT_OVERLAP if overlap is None else overlap
        if self.overlap < 0 or self.overlap >= self.chunk_tokens:
            raise RagError(f"--overlap must be between 0 and the chunk size ({self.chunk_tokens}), got {overlap}")
        # chunking runs on the reader thread: its own tokenizer copy, never shared with the encoder's
        self.tokenizer = copy.deepcopy(tokenizer)
        self.pending: list[_Pending] = []
        self.pending_passages = 0
        self.bar = None
        if progress:
            from tqdm import tqdm

            self.bar = tqdm(total=0, unit="passage", desc="encoding", file=sys.stderr, dynamic_ncols=True)

    def _title_prefix(self, title: str) -> tuple[str, int]:
        return title_prefix(self.tokenizer, title, self.window, self.chunk_tokens)

    def prepare(self, source: Source) -> _Pending | tuple[str, str]:
        """Chunk a source's documents into encoder inputs (runs ahead on the reader thread); a source
        over ``max_passages`` is a failure (path, reason) instead."""
        docs, texts, hashes = [], [], []
        for doc in source.docs:
            digest = content_hash(doc.title, doc.text)
            new = NewDocument(path=doc.uri, title=doc.title, text=doc.text, content_hash=digest, spans=[],
                              vectors=np.zeros((0, self.encoder.dim), dtype=np.float32), collection=self.collection,
                              size=len(doc.text.encode("utf-8")) if len(source.docs) > 1 else source.size or len(doc.text),
                              mtime=doc.mtime if doc.mtime is not None else source.mtime, metadata=dict(doc.metadata),
                              page_starts=list(doc.page_starts))
            if not self.library.has_content(digest, self.collection, exclude_source=source.key):
                prefix, _ = self._title_prefix(doc.title)
                new.spans = passage_spans(doc, self.tokenizer, self.window, self.chunk_tokens, self.overlap)
                if not new.spans:
                    return (source.key, "no words: not one passage holds a word"
                                        + (f" ({doc.uri})" if doc.uri != source.key else ""))
                new.locations = locate(new.spans, doc.page_starts, doc.headings)
                texts += [encoder_input(prefix, doc.text[a:b]) for a, b in new.spans]
                hashes += [passage_hash(doc.title, doc.text[a:b]) for a, b in new.spans]
            docs.append(new)
            if self.max_passages is not None and len(texts) > self.max_passages:
                return (source.key, f"too many passages: more than {self.max_passages} in one file "
                                    f"(the limit per upload is {self.max_passages})")
        return _Pending(source, docs, texts, hashes)

    def add(self, item: _Pending) -> None:
        """Queue a prepared source; encode when enough passages are waiting."""
        texts = item.texts
        self.pending.append(item)
        self.pending_passages += len(texts)
        if self.bar is not None:
            self.bar.total += len(texts)
            self.bar.refresh()
        if self.pending_passages >= self.threshold:
            self.flush()

    def flush(self) -> None:
        """Encode every waiting passage at once, then commit source by source."""
        if not self.pending:
            return
        started = time.perf_counter()
        self.assign_vectors(self.pending)
        self.report.encode_seconds += time.perf_counter() - started
        for item in self.pending:
            result = self.library.write_source(item.source.key, item.source.hash, item.docs)
            if result.replaced:
                self.report.updated += 1
            else:
                self.report.added += 1
            self.report.duplicates += result.duplicates
            self.report.passages += len(result.added_ids)
        self.pending, self.pending_passages = [], 0
        self.threshold = min(self.threshold * 2, self.encode_batch)

    def assign_vectors(self, pending: list[_Pending]) -> None:
        """Give every prepared document its passages' vectors, encoding each distinct text once: a
        text the store already holds reuses its stored vector, a text repeated in the batch is
        encoded for its first passage only (rag.store.database.passage_hash says which texts are the same)."""
        inputs: dict[str, str] = {}
        for item in pending:
            inputs.update((h, t) for h, t in zip(item.hashes, item.texts) if h not in inputs)
        vectors = self.library.vectors_of_texts(list(inputs))
        todo = [h for h in inputs if h not in vectors]
        vectors.update(zip(todo, self._encode([inputs[h] for h in todo])))
        if self.bar is not None:
            self.bar.update(sum(len(item.texts) for item in pending) - len(todo))
        for item in pending:
            at = 0
            for doc in item.docs:
                rows = [vectors[h] for h in item.hashes[at: at + len(doc.spans)]]
                doc.vectors = np.stack(rows) if rows else np.zeros((0, self.encoder.dim), dtype=np.float32)
                at += len(doc.spans)

    def _encode(self, texts: list[str]) -> np.ndarray:
        """Encode in length-sorted slices so the progress bar moves; same work as one big call."""
        if not texts:
            return np.zeros((0, self.encoder.dim), dtype=np.float32)
        order = np.argsort([len(t) for t in texts], kind="stable")[::-1]
        out = np.empty((len(texts), self.encoder.dim), dtype=np.float32)
        step = 256
        for i in range(0, len(order), step):
            rows = order[i: i + step]
            out[rows] = self.encoder.encode([texts[j] for j in rows])
            if self.bar is not None:
                self.bar.update(len(rows))
        return out

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


_DONE = object()


def _read_ahead(items: Iterator, prepare, size: int = 64) -> Iterator:
    """Run ``prepare`` over ``items`` on a background thread, at most ``size`` results ahead.

    Parsing and chunking the next files then overlaps encoding the current batch (the encoder
    and the parsers both release the GIL), which keeps the whole ingest close to the encoder's speed.
    """
    results: queue.Queue = queue.Queue(maxsize=size)
    stop = threading.Event()

    def work() -> None:
        try:
            for item in items:
                if stop.is_set():
                    return
                results.put(prepare(item))
            results.put(_DONE)
        except BaseException as exc:  # handed to the consumer, raised there
            results.put(exc)

    thread = threading.Thread(target=work, name="rag-ingest-reader", daemon=True)
    thread.start()
    try:
        while True:
            item = results.get()
            if item is _DONE:
                return
            if isinstance(item, BaseException):
                raise item
            yield item
    finally:
        stop.set()
        while thread.is_alive():  # unblock a reader waiting on a full queue, then let it finish
            try:
                results.get(timeout=0.1)
            except queue.Empty:
                pass


def _run(library, sources: Iterator[Source | tuple[str, str]], collection: str, chunk_tokens, overlap,
         progress: bool, report: IngestReport, encode_batch: int = ENCODE_BATCH,
         max_passages: int | None = None) -> IngestReport:
    if not collection or not str(collection).strip():
        raise RagError("the collection name must not be empty")
    library.encoder  # loading the model is not part of the ingest rate
    started = time.perf_counter()
    library.index  # load (or catch up) the index first, so each write can follow it
    ingester = Ingester(library, collection, chunk_tokens, overlap, report, progress, encode_batch, max_passages)

    def prepare(item):
        if isinstance(item, tuple):
            return item  # a failure: (path, reason)
        if library.source_state(item.key) == (item.hash, collection):
            return None  # unchanged
        return ingester.prepare(item)

    try:
        for item in _read_ahead(sources, prepare):
            if item is None:
                report.skipped += 1
            elif isinstance(item, tuple):
                report.fail(*item)
            else:
                ingester.add(item)
        ingester.flush()
    finally:
        ingester.close()
        library.save_index()
        report.seconds = time.perf_counter() - started
    return report


def ingest_documents(library, docs: Iterable[SourceDocument], collection: str = "default",
                     progress: bool = False, chunk_tokens: int | None = None,
                     overlap: int | None = None, encode_batch: int = ENCODE_BATCH) -> IngestReport:
    """Ingest in-memory records; the uri is the key (same uri and content: skipped; changed: replaced)."""
    if getattr(library, "is_cluster", False):  # rag.cluster: its encoder actors
        return library.ingest_documents(docs, collection=collection, chunk_tokens=chunk_tokens, overlap=overlap)
    report = IngestReport()

    return _run(library, (record_source(doc) for doc in docs), collection, chunk_tokens, overlap, progress, report,
                encode_batch)


def record_source(doc: SourceDocument) -> Source | tuple[str, str]:
    """An in-memory record as one source keyed by its uri, or (uri, reason) when it holds no text."""
    if not doc.text or not doc.text.strip():
        return (doc.uri, "empty: no text")
    if (reason := why_wordless(doc.text)) is not None:
        return (doc.uri, reason)
    size = len(doc.text.encode("utf-8"))
    return Source(key=doc.uri, hash=source_hash(content_hash(doc.title, doc.text)), docs=[doc], size=size, mtime=doc.mtime)


def ingest_paths(library, paths: list[str], collection: str = "default", include=None, exclude=None,
                 chunk_tokens: int | None = None, overlap: int | None = None, prune: bool = False,
                 progress: bool = False, options: LoadOptions | None = None, max_bytes: int = DEFAULT_MAX_BYTES,
                 stdin_name: str = "stdin", default_excludes: bool = True,
                 encode_batch: int = ENCODE_BATCH, max_passages: int | None = None,
                 encoders: int | None = None) -> IngestReport:
    """Ingest files and folders (``-`` reads stdin); bad files are reported and the rest go in.
    ``max_passages``: a file that would make more passages fails (the server's per-upload limit);
    ``encoders``: encoder actors on a cluster library (default: one per CPU of the cluster)."""
    if getattr(library, "is_cluster", False):  # rag.cluster: encoder actors, then each file's shard
        return library.ingest_paths(paths, collection=collection, include=include, exclude=exclude,
                                    chunk_tokens=chunk_tokens, overlap=overlap, prune=prune, options=options,
                                    max_bytes=max_bytes, default_excludes=default_excludes,
                                    max_passages=max_passages, encoders=encoders)
    options = options or LoadOptions()
    report = IngestReport()
    if not paths:
        raise RagError("nothing to ingest: give files, folders or - for stdin")
    use_stdin = "-" in paths
    files, missing = find_files([p for p in paths if p != "-"], include, exclude, default_excludes)

    def sources() -> Iterator[Source | tuple[str, str]]:
        yield from missing
        if use_stdin:
            data = sys.stdin.buffer.read()
            yield from parse_source(stdin_name, data, Source(key=stdin_name, hash=source_hash(hashlib.sha256(data).hexdigest()),
                                                       docs=[], size=len(data)), options,
                              fmt=Path(stdin_name).suffix.lower() if Path(stdin_name).suffix.lower() in LOADERS else ".txt")
        for path in files:
            try:
                source, data = read_source(path, options, max_bytes)
            except LoadError as exc:
                yield (str(path), str(exc))
                continue
            if library.source_state(source.key) == (source.hash, collection):
                yield source  # unchanged: skipped before any parsing
                continue
            yield from parse_source(str(path), data, source, options)

    _run(library, sources(), collection, chunk_tokens, overlap, progress, report, encode_batch, max_passages)
    if prune:
        report.removed = prune_missing(library, [p for p in paths if p != "-"])
    return report


def parse_source(path: str, data: bytes, source: Source, options: LoadOptions, fmt: str | None = None
           ) -> Iterator[Source | tuple[str, str]]:
    if not data.strip():
        yield (path, "empty file")
        return
    try:
        docs = load_bytes(path, data, options, fmt=fmt)
    except LoadError as exc:
        yield (path, str(exc))
        return
    except Exception as exc:  # a parser library failing on a damaged file must not stop the run
        yield (path, f"cannot read: {type(exc).__name__}: {exc}")
        return
    docs = [d for d in docs if d.text.strip()]
    if not docs:
        yield (path, "empty: no text found")
        return
    reasons = [why_wordless(d.text) for d in docs]
    if all(reasons):
        yield (path, reasons[0] if len(docs) == 1 else f"{reasons[0]} (every record)")
        return
    for doc, reason in zip(docs, reasons):  # one record of a file with nothing to search in it
        if reason:
            yield (doc.uri, reason)
    source.docs = [d for d, reason in zip(docs, reasons) if not reason]
    yield source


def prune_missing(library, roots: list[str]) -> int:
    """Remove stored files under ``roots`` that no longer exist; returns how many sources went."""
    prefixes = [os.path.abspath(Path(r).expanduser()) for r in roots]
    gone = 0
    for source in library.sources():
        if not source.startswith("/") or Path(source).exists():
            continue
        if any(source == p or source.startswith(p.rstrip("/") + "/") for p in prefixes):
            library.remove_document(source, save=False)
            gone += 1
    if gone:
        library.save_index()
    return gone
