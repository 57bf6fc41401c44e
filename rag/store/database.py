"""The document store: one SQLite file holding documents, passages, their embeddings and an FTS5 index.

The database is the source of truth. Each source (a file, or one in-memory record) is written in a
single transaction - documents, passages, embeddings and FTS rows together - so a crash leaves the
old state or the new one. Passage ids come from AUTOINCREMENT and are never reused, which lets the
vector index catch up by "every passage id above the last one I saw" (see rag.library).

Repeated passages (licence headers, footers, boilerplate, or one file's run of identical chunks) keep
a row each, so every document keeps its passages, pages and citations; what repeats is recognised by
``text_hash`` (the encoder's input: title and text, whitespace folded). Every passage with the same
hash holds the same vector, the one first stored for it, so the text is encoded once (rag.ingest.pipeline asks
for it before encoding) and the vector index stores it once (indexes.copies) while search still
returns each passage that holds it. Rankings order equal scores by the passage's document path, then
its place in the document, never by the order writes landed in.
"""
from __future__ import annotations

import hashlib
import json
import math
import os
import re
import sqlite3
import threading
from dataclasses import dataclass, field
from datetime import datetime, timezone
from pathlib import Path
from typing import Any, Iterator

import numpy as np
import sqlite_utils

from rag.contract import as_document_id
from rag.errors import RagError
from rag.ingest.locations import Location
from rag.records import Document, Passage

DB_NAME = "rag.db"
BUSY_TIMEOUT = 60.0  # seconds a write waits for another process's transaction

_SCHEMA = """
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT);
CREATE TABLE IF NOT EXISTS documents (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    path TEXT NOT NULL UNIQUE,
    source TEXT NOT NULL,
    source_hash TEXT NOT NULL,
    title TEXT NOT NULL DEFAULT '',
    collection TEXT NOT NULL DEFAULT 'default',
    content_hash TEXT NOT NULL,
    size INTEGER NOT NULL DEFAULT 0,
    mtime REAL,
    metadata TEXT NOT NULL DEFAULT '{}',
    ingested_at TEXT NOT NULL,
    text TEXT,
    duplicate_of INTEGER REFERENCES documents(id),
    page_starts TEXT
);
CREATE INDEX IF NOT EXISTS documents_source ON documents(source);
CREATE INDEX IF NOT EXISTS documents_content ON documents(collection, content_hash);
CREATE INDEX IF NOT EXISTS documents_duplicate ON documents(duplicate_of);
CREATE TABLE IF NOT EXISTS passages (
    id INTEGER PRIMARY KEY AUTOINCREMENT,
    document_id INTEGER NOT NULL REFERENCES documents(id),
    ord INTEGER NOT NULL,
    text TEXT NOT NULL,
    start INTEGER NOT NULL,
    "end" INTEGER NOT NULL,
    page INTEGER,
    last_page INTEGER,
    heading TEXT,
    text_hash TEXT
);
CREATE INDEX IF NOT EXISTS passages_document ON passages(document_id, ord);
CREATE TABLE IF NOT EXISTS embeddings (passage_id INTEGER PRIMARY KEY, vector BLOB NOT NULL);
CREATE VIRTUAL TABLE IF NOT EXISTS passages_fts USING fts5(title, body, tokenize='porter unicode61');
"""

# Columns added after the first release: (table, column, type). Opening an older rag.db adds them
# in place; rows written before stay NULL ("unknown"), which every reader accepts.
_ADDED_COLUMNS = [
    ("documents", "page_starts", "TEXT"),  # JSON list: character offset where each PDF page starts
    ("passages", "page", "INTEGER"),
    ("passages", "last_page", "INTEGER"),
    ("passages", "heading", "TEXT"),
    ("passages", "text_hash", "TEXT"),  # passage_hash(title, text): what the encoder reads
]
# Made after the columns they index exist (a store from before text_hash gets the column first).
_LATE_INDEXES = "CREATE INDEX IF NOT EXISTS passages_text ON passages(text_hash);"

_DOC_COLUMNS = "id, path, title, collection, content_hash, size, mtime, metadata, ingested_at"
_PASSAGE_COLUMNS = 'id, document_id, ord, text, start, "end", page, last_page, heading'


@dataclass
class NewDocument:
    """One document ready to be written: its text, chunks (offsets) and their embeddings."""

    path: str
    title: str
    text: str
    content_hash: str
    spans: list[tuple[int, int]]  # (start, end) character offsets of each passage
    vectors: np.ndarray  # (len(spans), dim) float32
    collection: str = "default"
    size: int = 0
    mtime: float | None = None
    metadata: dict[str, Any] = field(default_factory=dict)
    locations: list[Location] = field(default_factory=list)  # one per span; empty: unknown
    page_starts: list[int] = field(default_factory=list)  # PDF: offset where each page starts


@dataclass
class WriteResult:
    """What one source write changed, so the vector index can follow."""

    added_ids: np.ndarray  # new passage ids
    vectors: np.ndarray  # their vectors, (n, dim)
    removed_ids: np.ndarray  # passage ids gone from the store
    replaced: bool  # the source existed before
    duplicates: int = 0  # documents stored as a duplicate of existing content
    generation: int = 0  # the store generation this write made
    previous: int = 0  # the generation just before it (another process may have written since we looked)


def passage_hash(title: str, text: str) -> str:
    """What identifies a passage's vector: the encoder reads the title and the text (rag.ingest.pipeline's
    encoder_input), and whitespace runs tokenize alike, so they are folded to one space."""
    folded = f"{' '.join(title.split())}\n{' '.join(text.split())}"
    return hashlib.sha256(folded.encode("utf-8", "surrogatepass")).hexdigest()


def _now() -> str:
    return datetime.now(timezone.utc).isoformat(timespec="seconds")


def _document(row: sqlite3.Row) -> Document:
    return Document(
        id=row["id"], path=row["path"], title=row["title"], collection=row["collection"],
        content_hash=row["content_hash"], size=row["size"], mtime=row["mtime"],
        metadata=json.loads(row["metadata"] or "{}"), ingested_at=row["ingested_at"],
    )


def _passage(row: sqlite3.Row) -> Passage:
    return Passage(id=row["id"], document_id=row["document_id"], order=row["ord"], text=row["text"],
                   start=row["start"], end=row["end"], page=row["page"], last_page=row["last_page"],
                   heading=row["heading"])


def keyword_query(text: str) -> str:
    """An FTS5 MATCH expression: every word quoted (user punctuation never reaches FTS syntax), OR-ed."""
    from rag.search.bm25 import keyword_words, phrase

    return " OR ".join(phrase(w) for w in keyword_words(text))


_META_KEY = re.compile(r"^[A-Za-z0-9_.\-]+$")


def where_sql(where: dict[str, str] | None) -> tuple[str, list]:
    """SQL conditions on the documents table ``d`` for --where filters.

    collection=NAME exact; path=GLOB and title=GLOB (shell-style, case-sensitive); id=N;
    any other FIELD=VALUE matches the document metadata field (as text).
    """
    clauses, params = [], []
    for key, value in (where or {}).items():
        value = str(value)
        if key == "collection":
            clauses.append("d.collection = ?")
        elif key in ("path", "title"):
            clauses.append(f"d.{key} GLOB ?")
        elif key == "id":
            clauses.append("d.id = ?")
        else:
            if not _META_KEY.match(key):
                raise RagError(f"bad filter field {key!r}: use letters, digits, '_', '-' or '.'")
            clauses.append("CAST(json_extract(d.metadata, ?) AS TEXT) = ?")
            params.append(f'$."{key}"')
        params.append(value)
    return (" AND ".join(clauses) or "1"), params


class Store:
    """An open rag.db. Safe to share across threads: every call holds one lock."""

    def __init__(self, path: str | os.PathLike):
        self.path = Path(path)
        self.path.parent.mkdir(parents=True, exist_ok=True)
        try:
            # concurrent writers (two ingests, the server's uploads) wait for each other's short transactions
            self.conn = sqlite3.connect(str(self.path), check_same_thread=False, isolation_level=None,
                                        timeout=BUSY_TIMEOUT)
            self.conn.row_factory = sqlite3.Row
            self.conn.execute("PRAGMA journal_mode=WAL")
            self.conn.execute("PRAGMA synchronous=NORMAL")
            self.conn.execute("PRAGMA foreign_keys=ON")
            self.conn.executescript(_SCHEMA)
            self._upgrade()
            self.conn.executescript(_LATE_INDEXES)
        except sqlite3.DatabaseError as exc:
            raise RagError(f"cannot open the store {self.path}: {exc}") from exc
        self.db = sqlite_utils.Database(self.conn)
        self.lock = threading.RLock()
        self._tokens = None  # rag.search.bm25.Tokens, made on the first keyword_evidence

    def close(self) -> None:
        with self.lock:
            self.conn.close()

    def _upgrade(self) -> None:
        """Bring a store made by an older version up to date in place, in one transaction (so two
        processes opening the same old file at once do not both try): add the columns it lacks
        (stored PDFs are then marked changed, so the next `rag ingest` of them reads their pages:
        old passages have none), and give every passage its text hash, with one vector per repeated
        text. A saved vector index from before this is rebuilt on open (indexes.storage format 2)."""
        def missing() -> list[tuple[str, str, str]]:
            have = {t: {r[1] for r in self.conn.execute(f"PRAGMA table_info({t})")} for t in ("documents", "passages")}
            return [(t, c, kind) for t, c, kind in _ADDED_COLUMNS if c not in have[t]]

        def unhashed() -> bool:
            return any(c == "text_hash" for _, c, _ in missing()) or self.conn.execute(
                "SELECT 1 FROM passages WHERE text_hash IS NULL LIMIT 1").fetchone() is not None

        if not missing() and not unhashed():
            return
        self.conn.execute("BEGIN IMMEDIATE")
        try:
            added = missing()
            for table, column, kind in added:
                self.conn.execute(f"ALTER TABLE {table} ADD COLUMN {column} {kind}")
            if ("passages", "page", "INTEGER") in added:
                self.conn.execute("UPDATE documents SET source_hash = '' WHERE lower(source) LIKE '%.pdf'")
            self.conn.execute(_LATE_INDEXES)
            if unhashed():
                self._hash_passages()
                self._bump()
            self.conn.execute("COMMIT")
        except BaseException:
            self.conn.execute("ROLLBACK")
            raise

    def _hash_passages(self, batch: int = 5000) -> None:
        """Inside the upgrade: hash every passage that has no hash yet, then give every holder of a
        repeated text the vector of its first holder (an older store may hold slightly different
        vectors for one text, encoded in different batches)."""
        after = 0
        while True:
            rows = self.conn.execute(
                "SELECT p.id, d.title, p.text FROM passages p JOIN documents d ON d.id = p.document_id "
                "WHERE p.id > ? AND p.text_hash IS NULL ORDER BY p.id LIMIT ?", (after, batch)).fetchall()
            if not rows:
                break
            self.conn.executemany("UPDATE passages SET text_hash = ? WHERE id = ?",
                                  [(passage_hash(r[1] or "", r[2]), r[0]) for r in rows])
            after = rows[-1][0]
        self.conn.execute(
            "UPDATE embeddings SET vector = (SELECT e.vector FROM passages h JOIN embeddings e ON e.passage_id = h.id "
            "WHERE h.text_hash = (SELECT text_hash FROM passages WHERE id = embeddings.passage_id) ORDER BY h.id LIMIT 1) "
            "WHERE passage_id IN (SELECT id FROM passages WHERE text_hash IN "
            "(SELECT text_hash FROM passages GROUP BY text_hash HAVING COUNT(*) > 1))")

    # --- meta: encoder, backend, generation -------------------------------------------------

    def meta(self, key: str, default: str | None = None) -> str | None:
        with self.lock:
            row = self.conn.execute("SELECT value FROM meta WHERE key = ?", (key,)).fetchone()
        return row[0] if row else default

    def set_meta(self, key: str, value: str) -> None:
        with self.lock:
            self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES (?, ?)", (key, str(value)))

    def generation(self) -> int:
        """Bumped by every write transaction; the vector index records the one it reflects."""
        return int(self.meta("generation", "0"))

    def _bump(self) -> tuple[int, int]:
        """Inside a write transaction: (generation before, generation after) this write."""
        row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
        before = int(row[0]) if row else 0
        self.conn.execute("INSERT OR REPLACE INTO meta(key, value) VALUES ('generation', ?)", (str(before + 1),))
        return before, before + 1

    def passage_ids(self) -> tuple[int, np.ndarray]:
        """(generation, every passage id ascending) read in one transaction, so they agree."""
        with self.lock:
            self.conn.execute("BEGIN")
            try:
                row = self.conn.execute("SELECT value FROM meta WHERE key = 'generation'").fetchone()
                ids = [r[0] for r in self.conn.execute("SELECT id FROM passages ORDER BY id")]
            finally:
                self.conn.execute("COMMIT")
        return int(row[0]) if row else 0, np.asarray(ids, dtype=np.int64)

    # --- reading ------------------------------------------------------------------------------

    def documents(self, collection: str | None = None) -> list[Document]:
        sql = f"SELECT {_DOC_COLUMNS} FROM documents"
        args: tuple = ()
        if collection:
            sql, args = sql + " WHERE collection = ?", (collection,)
        with self.lock:
            return [_document(r) for r in self.conn.execute(sql + " ORDER BY id", args)]

    def passage_counts(self) -> dict[int, int]:
        """Passages per document id (a duplicate counts its original's)."""
        with self.lock:
            counts = dict(self.conn.execute("SELECT document_id, COUNT(*) FROM passages GROUP BY document_id"))
            for doc_id, original in self.conn.execute(
                    "SELECT id, duplicate_of FROM documents WHERE duplicate_of IS NOT NULL"):
                counts[doc_id] = counts.get(original, 0)
        return counts

    def document(self, id: int) -> Document:
        with self.lock:
            row = self.conn.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE id = ?", (int(id),)).fetchone()
        if row is None:
            raise RagError(f"no document with id {id}")
        return _document(row)

    def documents_by_id(self, ids) -> dict[int, Document]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self.lock:
            rows = self.conn.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE id IN (SELECT value FROM json_each(?))",
                (json.dumps(ids),),
            ).fetchall()
        return {r["id"]: _document(r) for r in rows}

    def find_document(self, key: str | int) -> Document:
        """A document by id (an int or all-digit string) or by its exact path."""
        with self.lock:
            row = self.conn.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE path = ?", (str(key),)).fetchone()
            if row is None and as_document_id(key) is not None:
                row = self.conn.execute(f"SELECT {_DOC_COLUMNS} FROM documents WHERE id = ?",
                                        (as_document_id(key),)).fetchone()
        if row is None:
            raise RagError(f"no document with path or id {key!r}")
        return _document(row)

    def duplicate_of(self, id: int) -> int | None:
        with self.lock:
            row = self.conn.execute("SELECT duplicate_of FROM documents WHERE id = ?", (int(id),)).fetchone()
        return row[0] if row else None

    def _original_column(self, id: int, column: str):
        """A document's ``column`` ("text" or "page_starts"), read from its original when it is a duplicate."""
        with self.lock:
            row = self.conn.execute(
                f"SELECT COALESCE(o.{column}, d.{column}) FROM documents d "
                "LEFT JOIN documents o ON o.id = d.duplicate_of WHERE d.id = ?", (int(id),)).fetchone()
        if row is None:
            raise RagError(f"no document with id {id}")
        return row[0]

    def document_text(self, id: int) -> str:
        """The full text the passage offsets refer to (a duplicate shares its original's)."""
        return self._original_column(id, "text") or ""

    def page_starts(self, id: int) -> list[int]:
        """Where each PDF page starts in the document's text (a duplicate shares its original's);
        empty for other formats and for documents stored before pages were recorded."""
        starts = self._original_column(id, "page_starts")
        return json.loads(starts) if starts else []

    def passages_of(self, doc_id: int) -> list[Passage]:
        with self.lock:
            original = self.conn.execute("SELECT COALESCE(duplicate_of, id) FROM documents WHERE id = ?",
                                         (int(doc_id),)).fetchone()
            if original is None:
                raise RagError(f"no document with id {doc_id}")
            rows = self.conn.execute(f"SELECT {_PASSAGE_COLUMNS} FROM passages "
                                     "WHERE document_id = ? ORDER BY ord", (original[0],)).fetchall()
        return [_passage(r) for r in rows]

    def passage(self, id: int) -> Passage:
        found = self.passages([id])
        if int(id) not in found:
            raise RagError(f"no passage with id {id}")
        return found[int(id)]

    def passages(self, ids) -> dict[int, Passage]:
        ids = [int(i) for i in ids]
        if not ids:
            return {}
        with self.lock:
            rows = self.conn.execute(
                f"SELECT {_PASSAGE_COLUMNS} FROM passages "
                "WHERE id IN (SELECT value FROM json_each(?))", (json.dumps(ids),)).fetchall()
        return {r["id"]: _passage(r) for r in rows}

    def source_state(self, source: str) -> tuple[str, str] | None:
        """(source_hash, collection) of a stored source, or None when it is new."""
        with self.lock:
            row = self.conn.execute("SELECT source_hash, collection FROM documents WHERE source = ? LIMIT 1",
                                    (source,)).fetchone()
        return (row[0], row[1]) if row else None

    def documents_of_source(self, source: str) -> list[Document]:
        """Every document one source (a file, or a record) made, in the order they were stored."""
        with self.lock:
            return [_document(r) for r in self.conn.execute(
                f"SELECT {_DOC_COLUMNS} FROM documents WHERE source = ? ORDER BY id", (source,))]

    def sources(self) -> list[str]:
        with self.lock:
            return [r[0] for r in self.conn.execute("SELECT DISTINCT source FROM documents ORDER BY source")]

    def has_content(self, content_hash: str, collection: str, exclude_source: str | None = None) -> bool:
        """Is this content already stored in the collection (by another source)?"""
        with self.lock:
            return self.conn.execute(
                "SELECT 1 FROM documents WHERE content_hash = ? AND collection = ? AND duplicate_of IS NULL "
                "AND source IS NOT ?", (content_hash, collection, exclude_source)).fetchone() is not None

    def passage_count(self) -> int:
        with self.lock:
            return self.conn.execute("SELECT COUNT(*) FROM passages").fetchone()[0]

    def max_passage_id(self) -> int:
        with self.lock:
            return self.conn.execute("SELECT COALESCE(MAX(id), 0) FROM passages").fetchone()[0]

    # --- embeddings ---------------------------------------------------------------------------

    def embeddings(self, ids=None, after: int = 0, dim: int | None = None) -> tuple[np.ndarray, np.ndarray]:
        """(ids (n,) int64, vectors (n, dim) float32): the given passage ids, or all with id > after."""
        with self.lock:
            if ids is not None:
                rows = self.conn.execute(
                    "SELECT passage_id, vector FROM embeddings WHERE passage_id IN (SELECT value FROM json_each(?)) "
                    "ORDER BY passage_id", (json.dumps([int(i) for i in ids]),)).fetchall()
            else:
                rows = self.conn.execute("SELECT passage_id, vector FROM embeddings WHERE passage_id > ? "
                                         "ORDER BY passage_id", (int(after),)).fetchall()
        dim = dim or int(self.meta("dim", "0") or 0)
        out_ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
        if not rows:
            return out_ids, np.zeros((0, dim), dtype=np.float32)
        vectors = np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
        return out_ids, vectors

    def iter_embeddings(self, batch: int = 20000, dim: int | None = None) -> Iterator[tuple[np.ndarray, np.ndarray]]:
        """Every stored embedding in id order, a batch at a time (rebuilding an index)."""
        after = 0
        while True:
            with self.lock:
                rows = self.conn.execute("SELECT passage_id, vector FROM embeddings WHERE passage_id > ? "
                                         "ORDER BY passage_id LIMIT ?", (after, batch)).fetchall()
            if not rows:
                return
            ids = np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))
            yield ids, np.frombuffer(b"".join(r[1] for r in rows), dtype=np.float32).reshape(len(rows), -1)
            after = int(ids[-1])

    # --- search helpers -----------------------------------------------------------------------

    def candidate_ids(self, where: dict[str, str] | None) -> np.ndarray:
        """Passage ids whose document matches the filters."""
        clause, params = where_sql(where)
        with self.lock:
            rows = self.conn.execute(
                f"SELECT p.id FROM passages p JOIN documents d ON d.id = p.document_id WHERE {clause}",
                params).fetchall()
        return np.fromiter((r[0] for r in rows), dtype=np.int64, count=len(rows))

    def keyword_search(self, query: str, k: int, where: dict[str, str] | None = None) -> list[tuple[int, float]]:
        """BM25 over title + passage text (FTS5 bm25(), sign flipped so higher is better); equal
        scores in order of document path, then place in the document."""
        match = keyword_query(query)
        if not match:
            return []
        clause, params = where_sql(where)
        sql = ("SELECT f.rowid, -bm25(passages_fts) AS score FROM passages_fts f "
               "JOIN passages p ON p.id = f.rowid JOIN documents d ON d.id = p.document_id "
               f"WHERE passages_fts MATCH ? AND {clause} ORDER BY score DESC, d.path, p.ord LIMIT ?")
        with self.lock:
            try:
                rows = self.conn.execute(sql, [match, *params, int(k)]).fetchall()
            except sqlite3.OperationalError as exc:
                raise RagError(f"keyword search failed for {query!r}: {exc}") from exc
        return [(int(r[0]), float(r[1])) for r in rows]

    def with_repeats(self, ranked: list[tuple[int, float]], n: int, allowed=None) -> list[tuple[int, float]]:
        """The top n of a dense ranking, each passage joined by every passage holding the same text
        (the same vector, so the same score), equal scores in order of document path, then place in
        the document: what the ranking is, whichever of a text's passages the index met first.
        ``allowed``: the passage ids a filter lets through (None: all)."""
        if not ranked:
            return []
        with self.lock:
            rows = self.conn.execute(
                "SELECT p.id, p.text_hash, d.path, p.ord FROM passages p JOIN documents d ON d.id = p.document_id "
                "WHERE p.text_hash IN (SELECT text_hash FROM passages WHERE id IN (SELECT value FROM json_each(?)))",
                (json.dumps([int(i) for i, _ in ranked]),)).fetchall()
        text_of = {r[0]: r[1] for r in rows}
        score_of: dict[str, float] = {}
        for pid, score in ranked:
            if pid in text_of:
                score_of[text_of[pid]] = max(score, score_of.get(text_of[pid], -math.inf))
        hits = [(r[0], score_of[r[1]], r[2], r[3]) for r in rows
                if r[1] in score_of and (allowed is None or r[0] in allowed)]
        hits.sort(key=lambda hit: (-hit[1], hit[2], hit[3]))
        return [(pid, score) for pid, score, _, _ in hits[:n]]

    def vectors_of_texts(self, hashes) -> dict[str, np.ndarray]:
        """The stored vector of each text hash the store holds (rag.ingest.pipeline encodes only the others)."""
        hashes = list(dict.fromkeys(hashes))
        found: dict[str, np.ndarray] = {}
        with self.lock:
            for start in range(0, len(hashes), 500):
                for digest, vector in self.conn.execute(
                        "SELECT p.text_hash, e.vector FROM passages p JOIN embeddings e ON e.passage_id = p.id "
                        "WHERE p.text_hash IN (SELECT value FROM json_each(?)) GROUP BY p.text_hash",
                        (json.dumps(hashes[start:start + 500]),)):
                    found[digest] = np.frombuffer(vector, dtype=np.float32)
        return found

    def keyword_evidence(self, query: str, n: int, where: dict[str, str] | None = None):
        """This store's top n by BM25 with what a global rescoring needs (rag.search.bm25: keyword search over shards)."""
        from rag.search.bm25 import KeywordEvidence, Tokens, keyword_words, store_evidence

        words = keyword_words(query)
        if not words:
            return KeywordEvidence(rows=0, tokens=0, hits=[])
        candidates = [pid for pid, _ in self.keyword_search(query, n, where)]
        with self.lock:
            if self._tokens is None:
                self._tokens = Tokens()
            return store_evidence(self.conn, self._tokens, words, candidates)

    # --- writing ------------------------------------------------------------------------------

    def check_encoder(self, name: str, dim: int, path: str | None = None) -> None:
        """Record the encoder on first use; refuse a different one on a store that has vectors."""
        stored, stored_dim = self.meta("encoder"), self.meta("dim")
        if stored is None or (self.passage_count() == 0 and stored != name):
            self.set_meta("encoder", name)
            self.set_meta("dim", str(dim))
            if path:
                self.set_meta("encoder_path", path)
            return
        if stored != name or int(stored_dim or 0) != int(dim):
            raise RagError(
                f"this store was built with encoder {stored} ({stored_dim} dims), not {name} ({dim} dims); "
                f"use the same --model, or another --data directory for the new encoder")

    def write_source(self, source: str, source_hash: str, docs: list[NewDocument]) -> WriteResult:
        """Replace everything stored for ``source`` by ``docs`` in one transaction."""
        with self.lock:
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                old = [r[0] for r in self.conn.execute("SELECT id FROM documents WHERE source = ?", (source,))]
                removed: list[int] = []
                for doc_id in old:
                    removed += self._remove(doc_id)
                added, vectors, duplicates = [], [], 0
                for doc in docs:
                    ids, stored, dup = self._insert(source, source_hash, doc)
                    added += ids
                    duplicates += dup
                    if ids:
                        vectors.append(stored)
                previous, generation = self._bump()
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        dim = docs[0].vectors.shape[1] if docs else 0
        return WriteResult(
            added_ids=np.asarray(added, dtype=np.int64),
            vectors=np.concatenate(vectors) if vectors else np.zeros((0, dim), dtype=np.float32),
            removed_ids=np.asarray(removed, dtype=np.int64), replaced=bool(old), duplicates=duplicates,
            generation=generation, previous=previous)

    def _insert(self, source: str, source_hash: str, doc: NewDocument) -> tuple[list[int], np.ndarray, int]:
        """(new passage ids, the vectors stored for them, 1 if the document is a duplicate else 0).
        A passage whose text the store already holds gets that text's stored vector, not the given one."""
        original = self.conn.execute(
            "SELECT id, path FROM documents WHERE content_hash = ? AND collection = ? AND duplicate_of IS NULL "
            "AND path != ? LIMIT 1", (doc.content_hash, doc.collection, doc.path)).fetchone()
        # identical documents share the passages of the one with the first path, whichever came first
        takes_over = original is not None and doc.path < original["path"]
        cur = self.conn.execute(
            "INSERT INTO documents (path, source, source_hash, title, collection, content_hash, size, mtime, "
            "metadata, ingested_at, text, duplicate_of, page_starts) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?)",
            (doc.path, source, source_hash, doc.title, doc.collection, doc.content_hash, doc.size, doc.mtime,
             json.dumps(doc.metadata, default=str), _now(), doc.text if not original or takes_over else None,
             original[0] if original and not takes_over else None,
             json.dumps(doc.page_starts) if doc.page_starts and (not original or takes_over) else None))
        if takes_over:
            self._hand_over(original[0], cur.lastrowid)
        if original:
            return [], np.zeros((0, doc.vectors.shape[1]), dtype=np.float32), 1
        doc_id = cur.lastrowid
        ids, stored = [], []
        if doc.locations and len(doc.locations) != len(doc.spans):
            raise RagError(f"{doc.path}: {len(doc.locations)} passage locations for {len(doc.spans)} passages")
        locations = doc.locations or [Location()] * len(doc.spans)
        known: dict[str, bytes] = {}
        for order, ((start, end), vector, place) in enumerate(zip(doc.spans, doc.vectors, locations)):
            text = doc.text[start:end]
            digest = passage_hash(doc.title, text)
            if digest not in known:
                row = self.conn.execute("SELECT e.vector FROM passages p JOIN embeddings e ON e.passage_id = p.id "
                                        "WHERE p.text_hash = ? LIMIT 1", (digest,)).fetchone()
                known[digest] = row[0] if row else np.asarray(vector, dtype=np.float32).tobytes()
            pid = self.conn.execute(
                'INSERT INTO passages (document_id, ord, text, start, "end", page, last_page, heading, text_hash) '
                "VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                (doc_id, order, text, start, end, place.page, place.last_page, place.heading, digest)).lastrowid
            self.conn.execute("INSERT INTO embeddings (passage_id, vector) VALUES (?, ?)", (pid, known[digest]))
            self.conn.execute("INSERT INTO passages_fts (rowid, title, body) VALUES (?, ?, ?)", (pid, doc.title, text))
            ids.append(pid)
            stored.append(known[digest])
        vectors = np.frombuffer(b"".join(stored), dtype=np.float32).reshape(len(stored), -1) if stored else \
            np.zeros((0, doc.vectors.shape[1]), dtype=np.float32)
        return ids, vectors, 0

    def _hand_over(self, old: int, new: int) -> None:
        """Inside a transaction: ``new`` (a document with the same content) becomes the one that holds
        the passages, text and pages ``old`` held; ``old`` and every other duplicate point to it."""
        row = self.conn.execute("SELECT text, page_starts FROM documents WHERE id = ?", (old,)).fetchone()
        title = self.conn.execute("SELECT title FROM documents WHERE id = ?", (new,)).fetchone()[0]
        self.conn.execute("UPDATE documents SET duplicate_of = NULL, text = ?, page_starts = ? WHERE id = ?",
                          (row["text"], row["page_starts"], new))
        self.conn.execute("UPDATE documents SET duplicate_of = ? WHERE duplicate_of = ? AND id != ?", (new, old, new))
        self.conn.execute("UPDATE documents SET duplicate_of = ?, text = NULL, page_starts = NULL WHERE id = ?",
                          (new, old))
        self.conn.execute("UPDATE passages SET document_id = ? WHERE document_id = ?", (new, old))
        self.conn.execute("UPDATE passages_fts SET title = ? WHERE rowid IN "
                          "(SELECT id FROM passages WHERE document_id = ?)", (title, new))

    def _remove(self, doc_id: int) -> list[int]:
        """Delete one document inside the open transaction; its first duplicate by path inherits its passages."""
        row = self.conn.execute("SELECT duplicate_of FROM documents WHERE id = ?", (doc_id,)).fetchone()
        if row is None:
            return []
        heir = self.conn.execute("SELECT id FROM documents WHERE duplicate_of = ? ORDER BY path LIMIT 1",
                                 (doc_id,)).fetchone()
        removed: list[int] = []
        if row["duplicate_of"] is None and heir:
            self._hand_over(doc_id, heir[0])
        elif row["duplicate_of"] is None:
            removed = [r[0] for r in self.conn.execute("SELECT id FROM passages WHERE document_id = ?", (doc_id,))]
            for chunk in range(0, len(removed), 500):
                ids = json.dumps(removed[chunk:chunk + 500])
                self.conn.execute("DELETE FROM passages_fts WHERE rowid IN (SELECT value FROM json_each(?))", (ids,))
                self.conn.execute("DELETE FROM embeddings WHERE passage_id IN (SELECT value FROM json_each(?))", (ids,))
            self.conn.execute("DELETE FROM passages WHERE document_id = ?", (doc_id,))
        self.conn.execute("DELETE FROM documents WHERE id = ?", (doc_id,))
        return removed

    def remove_document(self, key: str | int) -> WriteResult:
        """Remove a document by id or path (every record of a multi-record file when given the file);
        ``removed_ids`` are the passage ids that left the store."""
        with self.lock:
            doc_ids = [] if isinstance(key, int) else [r[0] for r in self.conn.execute(
                "SELECT id FROM documents WHERE source = ? OR path = ?", (str(key), str(key)))]
            if not doc_ids and as_document_id(key) is not None:
                doc_ids = [r[0] for r in self.conn.execute("SELECT id FROM documents WHERE id = ?",
                                                           (as_document_id(key),))]
            if not doc_ids:
                raise RagError(f"no document with path or id {key!r}")
            self.conn.execute("BEGIN IMMEDIATE")
            try:
                removed = []
                for doc_id in doc_ids:
                    removed += self._remove(doc_id)
                previous, generation = self._bump()
                self.conn.execute("COMMIT")
            except BaseException:
                self.conn.execute("ROLLBACK")
                raise
        return WriteResult(added_ids=np.zeros(0, dtype=np.int64), vectors=np.zeros((0, 0), dtype=np.float32),
                           removed_ids=np.asarray(removed, dtype=np.int64), replaced=True,
                           generation=generation, previous=previous)

    # --- reporting ----------------------------------------------------------------------------

    def counts(self) -> dict[str, int]:
        """Row counts of every table that must agree (a consistency check after a crash)."""
        with self.lock:
            one = lambda sql: self.conn.execute(sql).fetchone()[0]  # noqa: E731
            return {
                "documents": one("SELECT COUNT(*) FROM documents"),
                "passages": one("SELECT COUNT(*) FROM passages"),
                "embeddings": one("SELECT COUNT(*) FROM embeddings"),
                "fts": one("SELECT COUNT(*) FROM passages_fts"),
                "passages_without_embedding": one(
                    "SELECT COUNT(*) FROM passages p LEFT JOIN embeddings e ON e.passage_id = p.id "
                    "WHERE e.passage_id IS NULL"),
                "passages_without_fts": one(
                    "SELECT COUNT(*) FROM passages p WHERE p.id NOT IN (SELECT rowid FROM passages_fts)"),
                "documents_without_passages": one(
                    "SELECT COUNT(*) FROM documents d WHERE d.duplicate_of IS NULL AND NOT EXISTS "
                    "(SELECT 1 FROM passages p WHERE p.document_id = d.id)"),
            }

    def stats(self) -> dict:
        """documents, passages, collections, backend, encoder, sizes (bytes)."""
        with self.lock:
            collections = {r[0]: {"documents": r[1], "passages": 0} for r in self.conn.execute(
                "SELECT collection, COUNT(*) FROM documents GROUP BY collection ORDER BY collection")}
            for name, n in self.conn.execute("SELECT d.collection, COUNT(*) FROM passages p "
                                             "JOIN documents d ON d.id = p.document_id GROUP BY d.collection"):
                collections[name]["passages"] = n
            documents = self.conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
            duplicates = self.conn.execute("SELECT COUNT(*) FROM documents WHERE duplicate_of IS NOT NULL").fetchone()[0]
        db_bytes = sum(p.stat().st_size for p in self.path.parent.glob(self.path.name + "*") if p.is_file())
        return {
            "documents": documents,
            "duplicates": duplicates,
            "passages": self.passage_count(),
            "collections": collections,
            "backend": self.meta("backend"),
            "encoder": self.meta("encoder"),
            "dim": int(self.meta("dim") or 0) or None,
            "sizes": {"database": db_bytes},  # the library adds the index's
            "data_dir": str(self.path.parent),
        }
