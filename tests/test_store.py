"""The SQLite store on its own: transactions, replacement, duplicates, FTS escaping, filters, encoder guard."""
from __future__ import annotations

import numpy as np
import pytest

from rag.errors import RagError
from rag.store.database import NewDocument, Store, keyword_query, passage_hash, where_sql

DIM = 8


def new_doc(path: str, text: str, title: str = "", collection: str = "default", metadata=None, seed: int = 0):
    """A document cut at blank lines, with unit vectors (the store does not care where vectors come from)."""
    spans, pos = [], 0
    for part in text.split("\n\n"):
        start = text.index(part, pos)
        spans.append((start, start + len(part)))
        pos = start + len(part)
    rng = np.random.default_rng(seed)
    vectors = rng.normal(size=(len(spans), DIM)).astype(np.float32)
    vectors /= np.linalg.norm(vectors, axis=1, keepdims=True)
    import hashlib

    return NewDocument(path=path, title=title or path, text=text, content_hash=hashlib.sha256(text.encode()).hexdigest(),
                       spans=spans, vectors=vectors, collection=collection, metadata=metadata or {})


@pytest.fixture
def store(tmp_path):
    s = Store(tmp_path / "rag.db")
    s.check_encoder("test-encoder", DIM)
    yield s
    s.close()


def assert_consistent(store: Store) -> None:
    counts = store.counts()
    assert counts["passages"] == counts["embeddings"] == counts["fts"]
    assert counts["passages_without_embedding"] == counts["passages_without_fts"] == 0
    assert counts["documents_without_passages"] == 0


def test_write_and_read_back_with_offsets(store):
    text = "Alpha paragraph about cats.\n\nBeta paragraph about dogs.\n\nGamma about birds."
    result = store.write_source("/docs/a.txt", "h1", [new_doc("/docs/a.txt", text, title="Animals",
                                                             metadata={"lang": "en"})])
    assert len(result.added_ids) == 3 and not result.replaced and result.vectors.shape == (3, DIM)
    doc = store.find_document("/docs/a.txt")
    assert doc.title == "Animals" and doc.metadata == {"lang": "en"} and doc.collection == "default"
    assert store.document(doc.id).path == "/docs/a.txt"
    full = store.document_text(doc.id)
    passages = store.passages_of(doc.id)
    assert [p.order for p in passages] == [0, 1, 2]
    for p in passages:
        assert full[p.start:p.end] == p.text
    assert store.passage(passages[1].id).text == "Beta paragraph about dogs."
    ids, vectors = store.embeddings(ids=[p.id for p in passages])
    assert ids.tolist() == [p.id for p in passages]
    np.testing.assert_allclose(vectors, result.vectors)
    assert_consistent(store)
    assert store.source_state("/docs/a.txt") == ("h1", "default")


def test_replacing_a_source_drops_old_passages_everywhere(store):
    first = store.write_source("/a.txt", "h1", [new_doc("/a.txt", "old words here\n\nmore old words")])
    second = store.write_source("/a.txt", "h2", [new_doc("/a.txt", "fresh content only")])
    assert second.replaced and sorted(second.removed_ids.tolist()) == sorted(first.added_ids.tolist())
    assert min(second.added_ids) > max(first.added_ids)  # ids are never reused
    assert store.keyword_search("old", 10) == []
    assert [pid for pid, _ in store.keyword_search("fresh", 10)] == second.added_ids.tolist()
    assert store.counts()["documents"] == 1
    assert_consistent(store)


def test_duplicate_content_is_stored_once_and_survives_removal_of_the_original(store):
    text = "Shared text about volcanoes.\n\nLava and ash."
    store.write_source("/one.txt", "h", [new_doc("/one.txt", text, title="One")])
    dup = store.write_source("/two.txt", "h", [new_doc("/two.txt", text, title="Two")])
    assert dup.duplicates == 1 and len(dup.added_ids) == 0
    assert store.counts()["passages"] == 2
    two = store.find_document("/two.txt")
    assert [p.text for p in store.passages_of(two.id)] == ["Shared text about volcanoes.", "Lava and ash."]
    assert store.document_text(two.id) == text
    # removing the original hands its passages to the duplicate, keyword title included
    assert len(store.remove_document("/one.txt").removed_ids) == 0
    assert store.counts()["passages"] == 2
    passages = store.passages_of(two.id)
    assert {p.document_id for p in passages} == {two.id}
    assert store.keyword_search("Two", 5)
    assert_consistent(store)
    # another collection keeps its own copy
    other = store.write_source("/three.txt", "h", [new_doc("/three.txt", text, collection="other")])
    assert other.duplicates == 0 and len(other.added_ids) == 2


def test_remove_by_id_and_path_and_unknown(store):
    store.write_source("/a.txt", "h1", [new_doc("/a.txt", "first")])
    store.write_source("/b.txt", "h2", [new_doc("/b.txt", "second")])
    b = store.find_document("/b.txt")
    assert len(store.remove_document(str(b.id)).removed_ids) == 1
    assert len(store.remove_document("/a.txt").removed_ids) == 1
    assert store.counts()["documents"] == 0
    with pytest.raises(RagError, match="no document"):
        store.remove_document("/missing.txt")


def test_multi_record_source_is_one_unit(store):
    docs = [new_doc(f"/data.jsonl#{i}", f"record {i} text", seed=i) for i in range(3)]
    store.write_source("/data.jsonl", "h1", docs)
    assert store.counts()["documents"] == 3
    assert len(store.remove_document("/data.jsonl").removed_ids) == 3
    assert store.counts()["documents"] == 0


@pytest.mark.parametrize("query", ['json.dumps(', '"unbalanced', "a AND OR NOT (", "col:val*", "^NEAR(x y)", "-", "'; DROP"])
def test_keyword_queries_never_break_fts_syntax(store, query):
    store.write_source("/a.txt", "h", [new_doc("/a.txt", "json dumps serialises objects\n\nval and col here")])
    store.keyword_search(query, 5)  # must not raise


def test_keyword_query_quotes_words_and_drops_stop_words():
    assert keyword_query('What is "json.dumps"?') == '"json" OR "dumps"'
    assert keyword_query("the of") == '"the" OR "of"'  # nothing but stop words: keep them
    assert keyword_query("?!") == ""


def test_keyword_search_ranks_title_and_stems(store):
    store.write_source("/a.txt", "h1", [new_doc("/a.txt", "Running quickly through fields", title="Sports")])
    store.write_source("/b.txt", "h2", [new_doc("/b.txt", "A quiet library", title="Books about running")])
    found = {store.passage(pid).document_id for pid, _ in store.keyword_search("runs", 5)}
    assert found == {store.find_document("/a.txt").id, store.find_document("/b.txt").id}


def test_filters_apply_in_sql(store):
    store.write_source("/notes/a.md", "h1", [new_doc("/notes/a.md", "kiwi fruit", collection="notes",
                                                     metadata={"lang": "en", "year": 2020})])
    store.write_source("/web/b.html", "h2", [new_doc("/web/b.html", "kiwi bird", collection="web",
                                                     metadata={"lang": "fr"})])
    doc_of = lambda hits: {store.document(store.passage(pid).document_id).path for pid, _ in hits}  # noqa: E731
    assert doc_of(store.keyword_search("kiwi", 5, {"collection": "notes"})) == {"/notes/a.md"}
    assert doc_of(store.keyword_search("kiwi", 5, {"path": "*.html"})) == {"/web/b.html"}
    assert doc_of(store.keyword_search("kiwi", 5, {"lang": "fr"})) == {"/web/b.html"}
    assert doc_of(store.keyword_search("kiwi", 5, {"year": "2020"})) == {"/notes/a.md"}
    assert len(store.candidate_ids({"collection": "web"})) == 1
    assert len(store.candidate_ids({"collection": "nope"})) == 0
    with pytest.raises(RagError, match="bad filter field"):
        where_sql({"bad key'": "x"})


def test_mixing_encoders_is_refused(store):
    store.write_source("/a.txt", "h", [new_doc("/a.txt", "text")])
    store.check_encoder("test-encoder", DIM)  # the same one is fine
    with pytest.raises(RagError, match="built with encoder test-encoder"):
        store.check_encoder("other-model", 768)


def test_failed_transaction_leaves_nothing(store):
    good = new_doc("/a.txt", "one\n\ntwo")
    bad = new_doc("/a.txt#2", "three")
    bad.vectors = None  # the second document cannot be written: the first must not stay either
    with pytest.raises(TypeError):
        store.write_source("/a.txt", "h", [good, bad])
    assert store.counts()["documents"] == 0 and store.counts()["passages"] == 0
    assert store.generation() == 0


def test_stats(store):
    store.write_source("/a.txt", "h1", [new_doc("/a.txt", "one\n\ntwo", collection="x")])
    stats = store.stats()
    assert stats["documents"] == 1 and stats["passages"] == 2
    assert stats["collections"] == {"x": {"documents": 1, "passages": 2}}
    assert stats["encoder"] == "test-encoder" and stats["dim"] == DIM
    assert stats["sizes"]["database"] > 0


# --- repeated passages: one vector per text, order independent of who wrote first ---------------------

def test_a_repeated_passage_keeps_the_first_vector_while_any_holder_remains(store):
    shared = "All rights reserved; see the licence file."
    a = store.write_source("/a.txt", "ha", [new_doc("/a.txt", f"{shared}\n\nAbout owls.", title="Notes", seed=1)])
    b = store.write_source("/b.txt", "hb", [new_doc("/b.txt", f"{shared}\n\nAbout larks.", title="Notes", seed=2)])
    c = store.write_source("/c.txt", "hc", [new_doc("/c.txt", f"{shared}\n\nAbout wrens.", title="Other", seed=3)])
    # the same title and text read the same to the encoder: b's given vector is replaced by a's
    np.testing.assert_array_equal(b.vectors[0], a.vectors[0])
    assert not np.array_equal(b.vectors[1], a.vectors[1])
    assert not np.array_equal(c.vectors[0], a.vectors[0])  # another title: another encoder input
    _, stored = store.embeddings(ids=[b.added_ids[0]])
    np.testing.assert_array_equal(stored[0], a.vectors[0])
    found = store.vectors_of_texts([passage_hash("Notes", shared), passage_hash("Notes", "other"), "no-such-hash"])
    assert list(found) == [passage_hash("Notes", shared)]
    np.testing.assert_array_equal(found[passage_hash("Notes", shared)], a.vectors[0])
    store.remove_document("/a.txt")  # the first holder goes; the text's vector stays with the others
    _, stored = store.embeddings(ids=[b.added_ids[0]])
    np.testing.assert_array_equal(stored[0], a.vectors[0])
    d = store.write_source("/d.txt", "hd", [new_doc("/d.txt", f"{shared}\n\nAbout gulls.", title="Notes", seed=4)])
    np.testing.assert_array_equal(d.vectors[0], a.vectors[0])
    assert_consistent(store)


def test_equal_keyword_scores_go_in_path_order_whatever_the_write_order(tmp_path):
    paths = ["/m.txt", "/z.txt", "/a.txt", "/q.txt"]
    results = []
    for name, order in (("one", paths), ("two", paths[::-1])):
        s = Store(tmp_path / name / "rag.db")
        s.check_encoder("test-encoder", DIM)
        for i, path in enumerate(order):  # the same title and first paragraph: equal BM25 scores
            s.write_source(path, path, [new_doc(path, f"Puffins nest in burrows.\n\nPage {path}.",
                                                title="Seabirds", seed=i)])
        for k in (1, 2, 4):
            hits = s.keyword_search("puffins", k)
            assert len({score for _, score in hits}) == 1
            results.append([(s.document(s.passage(pid).document_id).path, s.passage(pid).order) for pid, _ in hits])
        s.close()
    assert results[:3] == results[3:]
    assert results[2] == [("/a.txt", 0), ("/m.txt", 0), ("/q.txt", 0), ("/z.txt", 0)]


def test_dense_repeats_join_the_ranking_in_path_order(store):
    for i, path in enumerate(["/m.txt", "/z.txt", "/a.txt"]):
        store.write_source(path, path, [new_doc(path, f"Gannets dive.\n\nNote {i}.", title="Seabirds", seed=i)])
    z_first = store.passages_of(store.find_document("/z.txt").id)[0].id
    ranked = store.with_repeats([(z_first, 0.9), (z_first + 1, 0.5)], 3)
    paths = [store.document(store.passage(pid).document_id).path for pid, _ in ranked]
    assert paths == ["/a.txt", "/m.txt", "/z.txt"] and [s for _, s in ranked] == [0.9, 0.9, 0.9]
    allowed = {p.id for p in store.passages_of(store.find_document("/z.txt").id)}
    assert store.with_repeats([(z_first, 0.9), (z_first + 1, 0.5)], 3, allowed) == [(z_first, 0.9), (z_first + 1, 0.5)]


def test_identical_documents_share_the_passages_of_the_first_path(store):
    text = "Kittiwakes nest on cliffs.\n\nThey feed at sea."
    store.write_source("/z.txt", "h", [new_doc("/z.txt", text, title="Kittiwakes")])
    store.write_source("/a.txt", "h", [new_doc("/a.txt", text, title="Kittiwakes")])
    store.write_source("/m.txt", "h", [new_doc("/m.txt", text, title="Kittiwakes")])
    a, m, z = (store.find_document(p) for p in ("/a.txt", "/m.txt", "/z.txt"))
    assert store.duplicate_of(a.id) is None and store.duplicate_of(z.id) == a.id and store.duplicate_of(m.id) == a.id
    assert {p.document_id for p in store.passages_of(z.id)} == {a.id}
    assert store.document_text(z.id) == text and store.counts()["passages"] == 2
    store.remove_document("/a.txt")  # the next path takes over
    assert store.duplicate_of(m.id) is None and store.duplicate_of(z.id) == m.id
    assert {p.document_id for p in store.passages_of(z.id)} == {m.id}
    assert_consistent(store)


def test_a_store_from_before_text_hashes_is_upgraded_in_place(tmp_path):
    path = tmp_path / "rag.db"
    s = Store(path)
    s.check_encoder("test-encoder", DIM)
    for i, name in enumerate(["/a.txt", "/b.txt"]):  # the same passage, encoded in two batches: vectors differ
        s.write_source(name, name, [new_doc(name, f"Terns migrate far.\n\nStop {i}.", title="Terns", seed=i)])
    s.close()
    import sqlite3

    conn = sqlite3.connect(path)  # what an earlier version left: no text_hash, a vector per passage
    conn.executescript("DROP INDEX passages_text; ALTER TABLE passages DROP COLUMN text_hash;")
    rows = conn.execute("SELECT passage_id FROM embeddings ORDER BY passage_id").fetchall()
    rng = np.random.default_rng(9)
    for (pid,) in rows:
        conn.execute("UPDATE embeddings SET vector = ? WHERE passage_id = ?",
                     (rng.normal(size=DIM).astype(np.float32).tobytes(), pid))
    conn.commit()
    conn.close()
    s = Store(path)
    generation = s.generation()
    a, b = (s.passages_of(s.find_document(p).id) for p in ("/a.txt", "/b.txt"))
    ids, vectors = s.embeddings(ids=[a[0].id, b[0].id, a[1].id, b[1].id])
    vector = dict(zip(ids.tolist(), vectors))
    np.testing.assert_array_equal(vector[a[0].id], vector[b[0].id])  # one vector for the repeated text
    assert not np.array_equal(vector[a[1].id], vector[b[1].id])
    hashes = dict(s.conn.execute("SELECT id, text_hash FROM passages"))
    assert hashes[a[0].id] == hashes[b[0].id] == passage_hash("Terns", "Terns migrate far.")
    s.close()
    s = Store(path)  # opening again changes nothing
    assert s.generation() == generation
    s.close()
