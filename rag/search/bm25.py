"""BM25 over several stores as if they were one: keyword search on a sharded (cluster) library.

Each store ranks with FTS5's ``bm25()``, whose statistics (passage count, average length, how many
passages hold each term) are its own: the same passage scores differently in a small shard and in one
big store, so per-shard scores cannot be merged as they are, and rank fusion of per-shard lists only
approximates one store's ranking. Instead every shard sends its *evidence*: its local top n, each
candidate's length and term frequencies (tokenized by SQLite's own FTS5 tokenizer, so they are what
``bm25()`` counts), plus its statistics. Summed statistics are exactly those of one store holding
everything, so the candidates are rescored with FTS5's formula and global statistics: the result is
one store's ranking, provided each global top-n passage is in its shard's local top n (a shard holds
1/S of the data and is asked for all n, so a passage would have to fall from global rank <= n to
local rank > n, which the test and the SciFact benchmark check does not happen in practice).
"""
from __future__ import annotations

import math
import re
import sqlite3
import threading
from dataclasses import dataclass, field

from rag.stopwords import STOP_WORDS

K1 = 1.2  # FTS5 bm25() defaults (fts5_aux.c)
B = 0.75
TOKENIZER = "porter unicode61"  # as the store's passages_fts (rag.store.database._SCHEMA)


def keyword_words(text: str) -> list[str]:
    """The query's words as keyword search matches them: lower-cased, stop words dropped (unless
    nothing else is left), each once."""
    words = [w.lower() for w in re.findall(r"\w+", text)]
    kept = [w for w in words if w not in STOP_WORDS] or words
    return list(dict.fromkeys(kept))


@dataclass
class KeywordEvidence:
    """What one store knows about a keyword query, for a global rescoring."""

    rows: int  # passages in the store
    tokens: int  # tokens in all of them, title + body
    hits: list[int]  # per word: passages that hold it
    # (passage id, its tokens, frequency of each word in it): the store's local top n
    candidates: list[tuple[int, int, list[int]]] = field(default_factory=list)


def read_varint(data: bytes, at: int) -> tuple[int, int]:
    """An SQLite varint (big-endian 7-bit groups, the 9th byte whole) at ``at``: (value, next offset)."""
    value = 0
    for i in range(8):
        byte = data[at + i]
        value = (value << 7) | (byte & 0x7F)
        if not byte & 0x80:
            return value, at + i + 1
    return (value << 8) | data[at + 8], at + 9


def fts_totals(conn: sqlite3.Connection, table: str = "passages_fts") -> tuple[int, int]:
    """(rows, tokens over every column) from FTS5's averages record (rowid 1 of its %_data table):
    what bm25() reads, without a scan."""
    row = conn.execute(f"SELECT block FROM {table}_data WHERE id = 1").fetchone()
    if row is None or not row[0]:
        return 0, 0
    data = bytes(row[0])
    rows, at = read_varint(data, 0)
    tokens = 0
    while at < len(data):
        size, at = read_varint(data, at)
        tokens += size
    return rows, tokens


class Tokens:
    """SQLite's FTS5 tokenizer on texts outside the store (an in-memory table and its fts5vocab view):
    exactly the tokens the store's index holds for them. One per store; thread-safe."""

    def __init__(self) -> None:
        self.conn = sqlite3.connect(":memory:", check_same_thread=False)
        self.conn.executescript(
            f"CREATE VIRTUAL TABLE t USING fts5(title, body, tokenize='{TOKENIZER}');"
            "CREATE VIRTUAL TABLE v USING fts5vocab(t, instance);")
        self.lock = threading.Lock()

    def frequencies(self, rows: list[tuple[int, str, str]], words: list[str]) -> dict[int, tuple[int, list[int]]]:
        """rows: (id, title, body) -> {id: (tokens, [frequency of each word's phrase])}."""
        with self.lock:
            self.conn.execute("DELETE FROM t")
            self.conn.executemany("INSERT INTO t (rowid, title, body) VALUES (?, ?, ?)", rows)
            self.conn.executemany("INSERT INTO t (rowid, title, body) VALUES (?, ?, '')",
                                  [(-1 - i, w) for i, w in enumerate(words)])  # the words, tokenized alike
            phrases: dict[int, list[str]] = {}
            for doc, term in self.conn.execute("SELECT doc, term FROM v WHERE doc < 0 ORDER BY doc DESC, offset"):
                phrases.setdefault(-1 - doc, []).append(term)
            lengths = dict(self.conn.execute("SELECT doc, COUNT(*) FROM v WHERE doc >= 0 GROUP BY doc"))
            positions: dict[str, dict[tuple[int, int], set[int]]] = {}
            for terms in phrases.values():
                for term in terms:
                    if term not in positions:
                        found: dict[tuple[int, int], set[int]] = {}
                        for doc, col, offset in self.conn.execute(
                                "SELECT doc, col, offset FROM v WHERE term = ? AND doc >= 0", (term,)):
                            found.setdefault((doc, col), set()).add(offset)
                        positions[term] = found
            self.conn.execute("DELETE FROM t")
        out = {}
        for pid, _, _ in rows:
            freqs = []
            for i in range(len(words)):
                terms = phrases.get(i, [])
                freqs.append(_phrase_count(terms, positions, pid) if terms else 0)
            out[pid] = (int(lengths.get(pid, 0)), freqs)
        return out


def _phrase_count(terms: list[str], positions: dict, doc: int) -> int:
    """Instances of the phrase ``terms`` (consecutive tokens, one column) in row ``doc``."""
    count = 0
    for (d, col), starts in positions[terms[0]].items():
        if d != doc:
            continue
        count += sum(1 for s in starts if all(s + j in positions[t].get((d, col), ()) for j, t in enumerate(terms)))
    return count


def phrase(word: str) -> str:
    return '"' + word.replace('"', '""') + '"'


def store_evidence(conn: sqlite3.Connection, tokens: Tokens, words: list[str],
                   candidates: list[int]) -> KeywordEvidence:
    """A store's statistics for ``words`` and the lengths and frequencies of its ``candidates``."""
    rows, total = fts_totals(conn)
    hits = [conn.execute("SELECT COUNT(*) FROM passages_fts WHERE passages_fts MATCH ?", (phrase(w),)).fetchone()[0]
            for w in words]
    # what passages_fts holds for them (its title is the owning document's), read by primary key
    texts = conn.execute("SELECT p.id, d.title, p.text FROM passages p JOIN documents d ON d.id = p.document_id "
                         "WHERE p.id IN (SELECT value FROM json_each(?))", (str(list(map(int, candidates))),)).fetchall()
    counted = tokens.frequencies([(int(r[0]), r[1] or "", r[2] or "") for r in texts], words)
    return KeywordEvidence(rows=rows, tokens=total, hits=hits,
                           candidates=[(pid, *counted[pid]) for pid in candidates if pid in counted])


def global_ranking(evidence: list[KeywordEvidence], n: int) -> list[tuple[int, int, float]]:
    """The top n (store position, passage id, score) by FTS5's bm25 with every store's statistics summed."""
    rows = sum(e.rows for e in evidence)
    if rows == 0:
        return []
    avgdl = sum(e.tokens for e in evidence) / rows
    words = len(evidence[0].hits)
    idf = []
    for i in range(words):
        hit = sum(e.hits[i] for e in evidence)
        value = math.log((0.5 + rows - hit) / (0.5 + hit))
        idf.append(value if value > 0 else 1e-6)  # as FTS5: a term in most rows still counts a little
    scored = []
    for position, e in enumerate(evidence):
        for pid, length, freqs in e.candidates:
            score = 0.0
            for i, f in enumerate(freqs):
                score += idf[i] * (f * (K1 + 1.0)) / (f + K1 * (1.0 - B + B * length / avgdl))
            scored.append((position, pid, score))
    scored.sort(key=lambda item: -item[2])
    return scored[:n]
