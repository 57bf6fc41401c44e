"""Global BM25 (rag.search.bm25): rescoring a store's evidence reproduces FTS5's own bm25(), and split stores
rescored together rank as the one store holding everything. Real SQLite stores, no Ray."""
from __future__ import annotations

import math

import numpy as np
import pytest

from rag.search.bm25 import fts_totals, global_ranking, keyword_words, read_varint
from rag.store.database import NewDocument, Store

TEXTS = [
    ("Lighthouses", "The Skerryvore lighthouse stands on a reef; its light_keeper kept the lamp burning."),
    ("Bread", "A sourdough starter is fed flour and water; sourdough bread rises slowly, bread keeps well."),
    ("Glaciers", "The Aletsch glacier is the largest glacier in the Alps; glaciers retreat as summers warm."),
    ("Bees", "An apiary keeps hives of bees; the bees make honey and the keeper takes the honey in autumn."),
    ("Reefs", "Coral reefs are built by small animals; a reef shelters fish, and storms break reef coral."),
    ("Lamps", "Oil lamps lit the lighthouse before electric light; a light_keeper trimmed the wicks nightly."),
    ("Rivers", "Rivers carry meltwater from the glacier to the sea; a river delta spreads silt and sand."),
    ("Honey", "Heather honey is thick; bees gather it late in summer, and the honey keeps for years."),
]
QUERIES = ["lighthouse keeper lamp", "glacier river", "honey bees keeper", "bread", "the reef and the storms",
           "light_keeper", "sea"]


def _fill(store: Store, rows: list[tuple[str, str]], offset: int = 0) -> None:
    for i, (title, text) in enumerate(rows):
        doc = NewDocument(path=f"note-{offset + i}.txt", title=title, text=text, content_hash=f"h{offset + i}",
                          spans=[(0, len(text))], vectors=np.zeros((1, 4), dtype=np.float32))
        store.write_source(doc.path, doc.content_hash, [doc])


@pytest.fixture
def whole(tmp_path):
    store = Store(tmp_path / "whole" / "rag.db")
    _fill(store, TEXTS)
    yield store
    store.close()


def test_varint_reads_sqlite_encoding():
    assert read_varint(bytes([0x05]), 0) == (5, 1)
    assert read_varint(bytes([0x81, 0x00]), 0) == (128, 2)
    assert read_varint(bytes([0x82, 0x80, 0x01]), 0) == ((2 << 14) | 1, 3)


def test_totals_match_a_count_of_rows_and_tokens(whole):
    rows, tokens = fts_totals(whole.conn)
    assert rows == len(TEXTS)
    assert tokens == sum(len(_tokens(t)) + len(_tokens(b)) for t, b in TEXTS)


def _tokens(text: str) -> list[str]:
    """FTS5's tokens of ``text`` (a throwaway in-memory table)."""
    from rag.search.bm25 import Tokens

    tokens = Tokens()
    with tokens.lock:
        tokens.conn.execute("INSERT INTO t (rowid, title, body) VALUES (1, ?, '')", (text,))
        return [r[0] for r in tokens.conn.execute("SELECT term FROM v ORDER BY offset")]


def _ranked(pairs) -> list[tuple[float, str]]:
    """(score rounded, text) best first: ties in any order compare equal."""
    return sorted(((round(score, 9), text) for score, text in pairs), key=lambda p: (-p[0], p[1]))


@pytest.mark.parametrize("query", QUERIES)
def test_rescoring_one_store_gives_fts5_bm25(whole, query):
    expected = whole.keyword_search(query, 10)
    assert expected, query
    ranked = global_ranking([whole.keyword_evidence(query, 10)], 10)
    assert len(ranked) == len(expected)
    by_id = dict(expected)
    for _, pid, score in ranked:
        assert math.isclose(score, by_id[pid], rel_tol=1e-9, abs_tol=1e-12)


@pytest.mark.parametrize("query", QUERIES)
def test_split_stores_rank_as_one(tmp_path, whole, query):
    parts = [Store(tmp_path / f"part{i}" / "rag.db") for i in range(3)]
    try:
        for i, part in enumerate(parts):
            _fill(part, TEXTS[i::3], offset=i * 100)
        ranked = global_ranking([p.keyword_evidence(query, 10) for p in parts], 10)
        got = [(score, parts[position].passages([pid])[pid].text) for position, pid, score in ranked]
        want = [(score, whole.passages([pid])[pid].text) for pid, score in whole.keyword_search(query, 10)]
        assert _ranked(got) == _ranked(want)
    finally:
        for part in parts:
            part.close()


def test_words_as_keyword_search_reads_them():
    assert keyword_words("The reef, and THE storms!") == ["reef", "storms"]
    assert keyword_words("the") == ["the"]
