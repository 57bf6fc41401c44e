"""Search over a small real store: every mode, filters applied before top-k, HyDE's query vector,
fusion, errors, offsets, concurrent use, and every index backend rebuilt from stored embeddings."""
from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor

import numpy as np
import pytest

from indexes import available_backends
from rag.errors import RagError
from rag.ingest.pipeline import ingest_documents
from rag.library import open_library
from rag.records import SourceDocument
from rag.search import ranking as search_module
from rag.search.ranking import MODES, fuse, search

BACKEND = "hnsw" if "hnsw" in available_backends() else "flat"

TOPICS = {
    "bees": ("Honey bees", "Honey bees collect nectar from flowers and turn it into honey inside the hive.\n\n"
             "A colony has one queen, thousands of workers and a few hundred drones."),
    "volcano": ("Volcanoes", "A volcano erupts when magma rises through cracks in the crust.\n\n"
                "Ash clouds from large eruptions can ground aircraft for days."),
    "chess": ("Chess", "Chess is played on a board of sixty-four squares.\n\n"
              "Castling moves the king two squares towards a rook."),
    "bread": ("Baking bread", "Yeast ferments the sugars in dough and releases carbon dioxide, so bread rises.\n\n"
              "Knead the dough until it is smooth and elastic."),
    "tides": ("Ocean tides", "Tides are caused by the gravitational pull of the moon and the sun on the oceans."),
    "python": ("json module", "json.dumps(obj) serialises a Python object to a JSON formatted string."),
    "bees-notes": ("Beekeeping notes", "Beekeepers wear veils and use smoke to calm the bees before opening a hive."),
}


@pytest.fixture(scope="module")
def library(tmp_path_factory, encoder):
    lib = open_library(tmp_path_factory.mktemp("search") / "data", backend=BACKEND, encoder=encoder)
    docs = []
    for key, (title, text) in TOPICS.items():
        collection = "notes" if key.endswith("notes") or key == "python" else "encyclopedia"
        meta = {"lang": "en", "topic": key.split("-")[0]}
        path = f"/corpus/{key}.md" if collection == "encyclopedia" else f"/notes/{key}.txt"
        docs.append(SourceDocument(uri=path, title=title, text=text, metadata=meta))
    encyclopedia = [d for d in docs if d.uri.startswith("/corpus/")]
    notes = [d for d in docs if d.uri.startswith("/notes/")]
    assert ingest_documents(lib, encyclopedia, collection="encyclopedia").added == len(encyclopedia)
    assert ingest_documents(lib, notes, collection="notes").added == len(notes)
    yield lib
    lib.close()


@pytest.mark.parametrize("mode", MODES)
def test_every_mode_finds_the_topic(library, mode):
    hits = search(library, "how do volcanoes erupt magma", k=3, mode=mode)
    assert hits[0].document.title == "Volcanoes"
    assert [h.rank for h in hits] == list(range(1, len(hits) + 1))
    scores = [h.score for h in hits]
    assert scores == sorted(scores, reverse=True)
    for hit in hits:
        full = library.document_text(hit.document.id)
        assert full[hit.passage.start:hit.passage.end] == hit.passage.text
        assert hit.document.path and hit.document.collection and hit.document.metadata["lang"] == "en"


def test_dense_finds_meaning_without_shared_words(library):
    assert search(library, "insects that make something sweet", k=1)[0].document.title in {"Honey bees",
                                                                                        "Beekeeping notes"}


def test_keyword_is_exact_and_punctuation_safe(library):
    hits = search(library, 'json.dumps("obj")', mode="keyword")
    assert hits[0].document.title == "json module"
    assert search(library, "zzzunknownword", mode="keyword") == []
    for query in ['"', "AND", "(x OR", "NEAR(a b)", "*", "col:x"]:
        search(library, query, mode="keyword")
        search(library, query, mode="hybrid")


def test_hybrid_fuses_both_rankings(library):
    query = "castling the king"
    hybrid = search(library, query, k=5, mode="hybrid")
    dense = [h.passage.id for h in search(library, query, k=100, mode="dense")]
    keyword = [h.passage.id for h in search(library, query, k=100, mode="keyword")]
    expected = fuse([keyword, dense], 60)[:5]
    assert [h.passage.id for h in hybrid] == [i for i, _ in expected]
    assert hybrid[0].score == pytest.approx(expected[0][1])


def test_fuse_is_reciprocal_rank_fusion():
    fused = fuse([[1, 2, 3], [3, 1]], k=60)
    scores = dict(fused)
    assert scores[1] == pytest.approx(1 / 61 + 1 / 62)
    assert scores[3] == pytest.approx(1 / 63 + 1 / 61)
    assert scores[2] == pytest.approx(1 / 62)
    assert [i for i, _ in fused] == [1, 3, 2]
    assert fuse([]) == []


def test_fusion_ties_go_to_the_better_single_rank_then_to_the_earlier_ranking():
    assert [i for i, _ in fuse([[7], [8]])] == [7, 8] and [i for i, _ in fuse([[8], [7]])] == [8, 7]
    assert [i for i, _ in fuse([[1, 2], [2, 1]])] == [1, 2]  # equal sums; rank 1 in the first ranking wins
    keyword = [100, 5, *range(101, 162), 9]  # 5 at rank 2; 9 at rank 64 here and in the other ranking
    dense = [*range(100, 163), 9]
    fused = dict(fuse([keyword, dense]))
    assert fused[5] == fused[9] == 1 / 62  # 1/62 == 1/124 + 1/124
    order = [i for i, _ in fuse([keyword, dense])]
    assert order.index(5) < order.index(9)  # the better single rank first, whichever was met first
    assert [i for i, _ in fuse([dense, keyword])].index(5) < [i for i, _ in fuse([dense, keyword])].index(9)


@pytest.mark.parametrize("mode", MODES)
def test_filters_apply_before_top_k(library, mode):
    # "bees" would rank the encyclopedia article first; the filter must still give the notes one at k=1
    hits = search(library, "bees in the hive", k=1, mode=mode, where={"collection": "notes"})
    assert [h.document.title for h in hits] == ["Beekeeping notes"]
    hits = search(library, "bees in the hive", k=5, mode=mode, where={"path": "/corpus/*"})
    assert hits and all(h.document.path.startswith("/corpus/") for h in hits)
    hits = search(library, "bees in the hive or a rook", k=5, mode=mode, where={"topic": "chess"})
    assert {h.document.title for h in hits} == {"Chess"}
    assert search(library, "bees", k=5, mode=mode, where={"collection": "nothing"}) == []


def test_dense_filter_over_fetches_from_the_index_when_many_match(library, monkeypatch):
    monkeypatch.setattr(search_module, "EXACT_LIMIT", 0)  # force the index path instead of exact scoring
    hits = search(library, "bees in the hive", k=1, where={"collection": "notes"})
    assert [h.document.title for h in hits] == ["Beekeeping notes"]
    hits = search(library, "tides and the moon", k=3, where={"collection": "encyclopedia"})
    assert hits[0].document.title == "Ocean tides" and all(h.document.collection == "encyclopedia" for h in hits)


def test_query_vector_replaces_the_encoded_query(library, encoder):
    vector = encoder.encode(["kneading dough with yeast"])[0]
    hits = search(library, "chess", k=1, mode="dense", query_vector=vector)
    assert hits[0].document.title == "Baking bread"
    hybrid = search(library, "chess", k=2, mode="hybrid", query_vector=vector)
    assert {h.document.title for h in hybrid} == {"Baking bread", "Chess"}  # keyword side keeps the text
    with pytest.raises(RagError, match="dimension"):
        search(library, "chess", query_vector=np.ones(5, dtype=np.float32))


@pytest.mark.parametrize("bad", [dict(query=""), dict(query="   "), dict(mode="fuzzy"), dict(k=0), dict(k=-3),
                                 dict(k="5"), dict(k=10_000), dict(where={"bad field!": "x"})])
def test_bad_requests_are_rag_errors(library, bad):
    args = {"query": "bees", "k": 5, "mode": "dense", **bad}
    with pytest.raises(RagError):
        search(library, args.pop("query"), **args)


def test_concurrent_searches_match_sequential(library):
    queries = ["bees", "volcano ash", "chess board", "bread yeast", "moon tides", "json string"] * 4
    modes = [MODES[i % 3] for i in range(len(queries))]
    expected = [[h.passage.id for h in search(library, q, k=3, mode=m)] for q, m in zip(queries, modes)]
    with ThreadPoolExecutor(max_workers=6) as pool:
        got = list(pool.map(lambda qm: [h.passage.id for h in search(library, qm[0], k=3, mode=qm[1])],
                            zip(queries, modes)))
    assert got == expected


def test_hit_json_shape(library):
    hit = search(library, "bees", k=1)[0]
    payload = hit.to_json()
    assert set(payload) == {"rank", "score", "passage_id", "text", "document", "page", "last_page", "heading"}
    assert set(payload["document"]) == {"id", "path", "title"}
    assert payload["page"] is None and payload["last_page"] is None  # not a PDF


@pytest.mark.parametrize("backend", available_backends())
def test_every_backend_rebuilt_from_stored_embeddings(library, backend):
    """`rag reindex --index X`: no re-encoding, and dense search keeps working on every backend."""
    try:
        index = library.rebuild_index(backend)
        assert len(index) == library.passage_count()
        hits = search(library, "how do volcanoes erupt magma", k=3, mode="dense")
        assert 1 <= len(hits) <= 3  # approximate backends may find fewer than k on a tiny store
        assert {h.passage.id for h in hits} <= set(library.candidate_ids(None).tolist())
    finally:
        library.rebuild_index(BACKEND)
