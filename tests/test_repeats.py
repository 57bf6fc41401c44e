"""Search that finds what is there: repeated passages are encoded and indexed once and hide nothing,
text without words is reported and never indexed, and results do not depend on the write order."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from indexes import available_backends
from rag.cli import main
from rag.ingest.pipeline import ingest_documents, ingest_paths
from rag.library import open_library
from rag.records import SourceDocument
from rag.search.ranking import MODES, search

BACKEND = "hnsw" if "hnsw" in available_backends() else "flat"
KESTREL = "Kestrels hover over open fields while hunting voles, facing into the wind and watching the grass below."
TIDES = "Tides rise and fall twice a day because the moon and the sun pull on the oceans."
NOTICE = ("This notice must be kept with every copy of the collection, and it may not be removed, shortened "
          "or changed in any way by those who share the files.")
QUERY = "kestrels hovering while hunting voles"


def test_thousands_of_identical_passages_hide_no_real_note(tmp_path, encoder):
    """The report's case at a small scale: a run of one letter, and a file of a few thousand identical
    passages, next to two one-line notes. The run is skipped by name; the copies are encoded once and
    held once by the index, and the kestrel note comes first in dense and hybrid search."""
    docs = tmp_path / "docs"
    docs.mkdir()
    (docs / "kestrel.txt").write_text(KESTREL, encoding="utf-8")
    (docs / "tides.txt").write_text(TIDES, encoding="utf-8")
    (docs / "huge_line.txt").write_text("x" * 400_000, encoding="utf-8")
    (docs / "boilerplate.txt").write_text("\n\n".join([NOTICE] * 16_000), encoding="utf-8")
    with open_library(tmp_path / "data", encoder=encoder, backend=BACKEND) as library:
        report = ingest_paths(library, [str(docs)])
        assert report.added == 3 and report.failed == 1
        assert report.failures[0][0] == str(docs / "huge_line.txt") and "no words" in report.failures[0][1]
        passages = library.passages_of(library.find_document(str(docs / "boilerplate.txt")).id)
        texts = {p.text for p in passages}
        assert len(passages) >= 2000 and len(texts) <= 3
        _, vectors = library.embeddings(ids=[p.id for p in passages])
        assert len(np.unique(vectors, axis=0)) == len(texts)  # one vector per distinct text
        index = library.index
        assert len(index) == library.passage_count()  # every passage can be found ...
        assert len(index) - len(index.copies) == len(texts) + 2  # ... and the index holds each text once
        for mode in ("dense", "hybrid"):
            hits = search(library, QUERY, k=3, mode=mode)
            assert hits[0].document.path == str(docs / "kestrel.txt"), mode
        # the repeated notice is found in every passage that holds it, in the file's order
        hits = search(library, NOTICE, k=5, mode="dense")
        tied = [h.passage.order for h in hits if h.score == hits[-1].score]
        assert len(tied) >= 3 and tied == sorted(tied) and {h.passage.text for h in hits} <= texts
        # removing the first holders keeps the shared vector for the rest
        library.remove_document(str(docs / "boilerplate.txt"))
        assert len(library.index) == library.passage_count() == 2


def test_text_without_words_is_reported_by_name_and_never_indexed(tmp_path, encoder):
    docs = tmp_path / "docs"
    docs.mkdir()
    bad = {
        "letters.txt": "x" * 50_000,  # one character repeated
        "spaced.txt": "x " * 20_000,
        "pairs.txt": "ab cd " * 5_000,  # two words, ten thousand times
        "symbols.md": "=-" * 10_000,
        "noise.txt": "".join(chr(c) for c in np.random.default_rng(0).integers(1, 256, 30_000)),  # binary as text
    }
    for name, text in bad.items():
        (docs / name).write_text(text, encoding="latin-1")
    (docs / "records.jsonl").write_text(json.dumps({"title": "Voles", "text": "Voles dig shallow tunnels."}) + "\n"
                                        + json.dumps({"title": "Junk", "text": "z" * 5000}) + "\n", encoding="utf-8")
    (docs / "mixed.txt").write_text(f"Kestrel notes\n\n{KESTREL}\n\n{'x' * 20_000}\n\nThey nest in old barns.",
                                    encoding="utf-8")
    with open_library(tmp_path / "data", encoder=encoder, backend=BACKEND) as library:
        report = ingest_paths(library, [str(docs)])
        failures = dict(report.failures)
        assert set(failures) == {str(docs / name) for name in bad} | {f"{docs / 'records.jsonl'}#2"}
        assert all("no words" in failures[str(docs / name)] for name in bad if name != "noise.txt")
        assert report.added == 2  # the good record, and the real text around the run of x
        paths = {d.path for d in library.documents()}
        assert paths == {f"{docs / 'records.jsonl'}#1", str(docs / "mixed.txt")}
        mixed = library.passages_of(library.find_document(str(docs / "mixed.txt")).id)
        assert mixed and not any(set(p.text) == {"x"} for p in mixed)  # no passage of x alone
        assert "They nest in old barns." in " ".join(p.text for p in mixed)
        records = ingest_documents(library, [SourceDocument(uri="junk", title="Junk", text="#" * 300)])
        assert records.failures and records.failures[0][0] == "junk"
    # the command line names each file and exits 1, as for every bad input
    result = CliRunner().invoke(main, ["ingest", str(docs / "letters.txt"), "--data", str(tmp_path / "cli"),
                                       "--no-progress"])
    assert result.exit_code == 1 and f"failed: {docs / 'letters.txt'}: no words" in result.output


# Four survey pages under one title: each a page of its own, then the same closing paragraph (the same
# passage four times), plus two identical files; ingested in two orders into two stores.
SURVEY_TITLE = "Seabird survey"
SHARED = ("Every count in this survey was made from the cliff path between May and July, in fair weather, by two "
          "volunteers who walked the whole path once in the morning and once again in the evening of each day.")
PAGES = {
    "puffins": "Puffins dig burrows in the soft turf at the top of the cliffs and raise one chick each summer, "
               "which they feed on sand eels carried crosswise in their colourful bills.",
    "gannets": "Gannets dive from thirty metres into the sea with their wings folded back, and their colony "
               "on the stack is white with birds and guano from spring until the autumn gales.",
    "kittiwakes": "Kittiwakes build nests of mud and grass on the narrowest ledges of the sheer cliff faces, "
                  "where foxes and rats cannot reach their eggs or their young.",
    "fulmars": "Fulmars glide along the cliff edge on stiff wings and spit a foul oil at anyone who comes "
               "too close to the single egg they lay on a bare ledge.",
}


def survey_documents() -> list[SourceDocument]:
    docs = [SourceDocument(uri=f"survey/{name}", title=SURVEY_TITLE, text=f"{text}\n\n{SHARED}")
            for name, text in PAGES.items()]
    copy = "Razorbills stand upright on the ledges like small penguins and lay one egg on bare rock."
    docs += [SourceDocument(uri=f"copies/{name}", title="Razorbills", text=copy) for name in ("b", "a")]
    return docs


def rankings(library) -> dict:
    """Each query's keyword, dense and hybrid top k, as (document path, place in the document)."""
    out = {}
    for query in ("when and how were the birds counted", "cliff path volunteers", "birds that dive into the sea",
                  "razorbills", "survey"):
        for mode in MODES:
            hits = search(library, query, k=6, mode=mode)
            out[query, mode] = [(h.document.path, h.passage.order) for h in hits]
    return out


def test_results_do_not_depend_on_the_order_writes_landed_in(tmp_path, encoder):
    """The same documents written in two orders give the same top k in every mode: equal scores
    (the repeated paragraph, identical files) are ordered by path, not by who was stored first.
    Each source is encoded on its own (encode_batch=1), so both stores hold the same vectors."""
    results = []
    for name, docs in (("forward", survey_documents()), ("backward", survey_documents()[::-1])):
        with open_library(tmp_path / name, encoder=encoder, backend=BACKEND) as library:
            report = ingest_documents(library, docs, chunk_tokens=64, overlap=0, encode_batch=1)
            assert report.added == len(docs) and report.duplicates == 1
            shared = [p for d in library.documents() for p in library.passages_of(d.id) if p.text == SHARED]
            assert len(shared) == len(PAGES)
            results.append(rankings(library))
            counted = search(library, "when and how were the birds counted", k=4, mode="dense")
            assert len({h.score for h in counted}) == 1 and {h.passage.text for h in counted} == {SHARED}
    forward, backward = results
    assert forward == backward
    counted = forward["when and how were the birds counted", "dense"]
    assert [path for path, _ in counted[:4]] == sorted(f"survey/{name}" for name in PAGES)  # the copies, by path
    assert forward["razorbills", "keyword"][0][0] == "copies/a"  # identical files: the first path holds the text
