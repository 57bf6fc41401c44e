"""Ingestion end to end: every file format, bad files, incremental re-runs, prune/rm, chunking limits,
the CLI, and a real `rag ingest` killed with SIGKILL then resumed."""
from __future__ import annotations

import json
import os
import signal
import sqlite3
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from indexes import available_backends
from rag.cli import main
from rag.errors import RagError
from rag.ingest.chunking import chunk
from rag.ingest.loaders import LoadOptions
from rag.ingest.pipeline import ingest_documents, ingest_paths
from rag.library import open_library
from rag.records import SourceDocument
from rag.search.ranking import search
from rag.store.database import Store

BACKEND = "hnsw" if "hnsw" in available_backends() else "flat"
REPO = Path(__file__).resolve().parent.parent


def assert_consistent(library) -> None:
    """Every passage has its embedding and FTS row, and the vector index holds exactly the passages."""
    counts = library.integrity()
    assert counts["passages"] == counts["embeddings"] == counts["fts"] == counts["index"]
    assert counts["passages_without_embedding"] == counts["passages_without_fts"] == 0
    assert counts["documents_without_passages"] == 0
    assert np.array_equal(library.index.ids(), library.passage_ids())


def make_pdf(path: Path, title: str, paragraphs: list[str]) -> None:
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.add_page()
    pdf.set_font("Helvetica", size=11)
    for paragraph in paragraphs:
        pdf.multi_cell(0, 6, paragraph)
        pdf.ln(4)
    pdf.output(str(path))


def write_corpus(folder: Path) -> None:
    """One real file of every supported format, plus files the loader must refuse."""
    folder.mkdir(parents=True, exist_ok=True)
    (folder / "notes.txt").write_text("Gardening notes\n\nTomatoes need full sun and regular watering.\n\n"
                                      "Basil grows well next to tomatoes.", encoding="utf-8")
    (folder / "guide.md").write_text("# Sourdough guide\n\nFeed the starter with flour and water every day.\n\n"
                                     "## Baking\n\nBake the loaf in a hot Dutch oven for forty minutes.", encoding="utf-8")
    (folder / "page.html").write_text(
        "<html><head><title>Lighthouse keepers</title></head><body><nav>Home | About | Contact</nav>"
        "<article><h1>Lighthouse keepers</h1><p>Lighthouse keepers tended the lamp through stormy nights, "
        "trimming wicks and polishing the great lens so ships could find the harbour.</p>"
        "<p>Automation ended the profession in most countries by the late twentieth century.</p></article>"
        "<footer>Copyright</footer></body></html>", encoding="utf-8")
    make_pdf(folder / "report.pdf", "Glacier report",
             ["Glaciers in the Alps lost a large part of their volume during the last decades.",
              "Meltwater feeds rivers in summer and the retreat exposes bare rock."])
    with open(folder / "records.jsonl", "w", encoding="utf-8") as fh:
        fh.write(json.dumps({"id": "q1", "title": "Chess openings", "body": "The Sicilian defence answers e4 with c5.",
                             "level": "advanced"}) + "\n")
        fh.write(json.dumps({"id": "q2", "title": "Chess endgames", "body": "King and pawn endings reward opposition.",
                             "level": "beginner"}) + "\n")
    (folder / "single.json").write_text(json.dumps({"id": "v1", "body": "Volcanic eruptions eject ash high into the atmosphere.",
                                                    "title": "Volcanoes"}), encoding="utf-8")
    (folder / "birds.csv").write_text("name,habitat,description\nPuffin,sea cliffs,Puffins dive for small fish "
                                      "in cold northern seas.\nKingfisher,rivers,The kingfisher perches over "
                                      "slow streams before diving.\n", encoding="utf-8")
    bad = folder / "bad"
    bad.mkdir()
    (bad / "binary.txt").write_bytes(b"\x89PNG\r\n\x1a\n\x00\x00\x00\rIHDR" + bytes(range(256)))
    (bad / "broken.pdf").write_bytes(b"%PDF-1.4\n1 0 obj << /Type /Catalog >> garbage without xref")
    (bad / "empty.md").write_bytes(b"")
    (bad / "invalid.jsonl").write_text('{"id": "z", "body": "fine"}\n{not json\n', encoding="utf-8")
    (folder / ".hidden").mkdir()
    (folder / ".hidden" / "secret.txt").write_text("never ingested", encoding="utf-8")
    (folder / "image.png").write_bytes(b"\x89PNG not a supported type")


@pytest.fixture
def library(tmp_path, encoder):
    lib = open_library(tmp_path / "data", backend=BACKEND, encoder=encoder)
    yield lib
    lib.close()


OPTIONS = LoadOptions(text_field="body", id_field="id", title_field="title", text_columns=["description"])


def test_every_format_and_every_bad_file(library, tmp_path):
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    report = ingest_paths(library, [str(corpus)], options=OPTIONS, collection="mixed")
    failures = dict(report.failures)
    bad = corpus / "bad"
    assert set(failures) == {str(bad / n) for n in ("binary.txt", "broken.pdf", "empty.md", "invalid.jsonl")}
    assert "binary" in failures[str(bad / "binary.txt")]
    assert "PDF" in failures[str(bad / "broken.pdf")]
    assert "empty" in failures[str(bad / "empty.md")]
    assert "line 2" in failures[str(bad / "invalid.jsonl")]
    assert report.failed == 4 and report.added == 7  # txt, md, html, pdf, jsonl, json, csv
    docs = {d.path: d for d in library.documents()}
    assert len(docs) == 9  # the jsonl and csv files hold two records each
    assert docs[str(corpus / "guide.md")].title == "Sourdough guide"
    assert docs[str(corpus / "page.html")].title == "Lighthouse keepers"
    html_text = library.document_text(docs[str(corpus / "page.html")].id)
    assert "great lens" in html_text and "Home | About" not in html_text
    assert docs[str(corpus / "report.pdf")].title == "Glacier report"
    assert "Meltwater feeds rivers" in library.document_text(docs[str(corpus / "report.pdf")].id)
    q2 = docs[str(corpus / "records.jsonl") + "#q2"]
    assert q2.title == "Chess endgames" and q2.metadata == {"level": "beginner"}
    assert library.document_text(q2.id) == "King and pawn endings reward opposition."
    puffin = docs[str(corpus / "birds.csv") + "#1"]
    assert library.document_text(puffin.id).startswith("Puffins dive")
    assert puffin.metadata == {"name": "Puffin", "habitat": "sea cliffs"}
    assert all(d.collection == "mixed" for d in docs.values())
    assert not any(".hidden" in p or p.endswith(".png") for p in docs)
    assert_consistent(library)
    top = search(library, "glacier melting in the Alps", k=1)[0]
    assert top.document.path.endswith("report.pdf")
    top = search(library, "puffin", k=1, mode="keyword", where={"habitat": "sea cliffs"})[0]
    assert top.document.title == "birds.csv#1"


def test_oversized_and_missing_paths_are_reported(library, tmp_path):
    big = tmp_path / "big.txt"
    big.write_text("word " * 400, encoding="utf-8")
    small = tmp_path / "small.txt"
    small.write_text("A small file about owls.", encoding="utf-8")
    report = ingest_paths(library, [str(big), str(small), str(tmp_path / "nope.txt")], max_bytes=1000)
    failures = dict(report.failures)
    assert "too large" in failures[str(big)]
    assert "no such file" in failures[str(tmp_path / "nope.txt")]
    assert report.added == 1 and report.failed == 2


def test_incremental_edit_delete_prune_rm(library, tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in {"a.txt": "Apples are crunchy fruit.", "b.txt": "Bananas are yellow.",
                       "c.txt": "Cherries grow on trees."}.items():
        (folder / name).write_text(text, encoding="utf-8")
    first = ingest_paths(library, [str(folder)])
    assert (first.added, first.skipped, first.passages) == (3, 0, 3)
    again = ingest_paths(library, [str(folder)])
    assert (again.added, again.updated, again.skipped, again.passages) == (0, 0, 3, 0)

    (folder / "b.txt").write_text("Blueberries are small and blue.", encoding="utf-8")
    edited = ingest_paths(library, [str(folder)])
    assert (edited.updated, edited.skipped) == (1, 2)
    assert search(library, "bananas", mode="keyword") == []
    assert search(library, "blueberries", mode="keyword")[0].document.path == str(folder / "b.txt")
    assert_consistent(library)

    (folder / "c.txt").unlink()
    pruned = ingest_paths(library, [str(folder)], prune=True)
    assert pruned.removed == 1 and pruned.skipped == 2
    assert str(folder / "c.txt") not in {d.path for d in library.documents()}
    assert_consistent(library)

    a = library.find_document(str(folder / "a.txt"))
    assert len(library.remove_document(str(a.id))) == 1
    assert [d.path for d in library.documents()] == [str(folder / "b.txt")]
    assert_consistent(library)
    with pytest.raises(RagError):
        library.remove_document(str(a.id))


def test_duplicate_files_are_stored_once(library, tmp_path):
    for name in ("one.txt", "two.txt"):
        (tmp_path / name).write_text("Identical text about penguins in Antarctica.", encoding="utf-8")
    report = ingest_paths(library, [str(tmp_path / "one.txt"), str(tmp_path / "two.txt")])
    assert report.added == 2 and report.duplicates == 1 and report.passages == 1
    two = library.find_document(str(tmp_path / "two.txt"))
    assert library.passages_of(two.id)[0].text.startswith("Identical text")
    assert_consistent(library)


def test_ingest_documents_by_uri(library):
    docs = [SourceDocument(uri=f"corpus:{i}", title=t, text=x) for i, (t, x) in enumerate(
        [("Mars", "Mars has two small moons, Phobos and Deimos."), ("Jupiter", "Jupiter is the largest planet.")])]
    assert ingest_documents(library, docs).added == 2
    assert ingest_documents(library, docs).skipped == 2
    docs[1].text = "Jupiter has a great red spot."
    report = ingest_documents(library, docs + [SourceDocument(uri="corpus:empty", title="", text="  ")])
    assert (report.updated, report.skipped, report.failed) == (1, 1, 1)
    assert search(library, "red spot", k=1)[0].document.path == "corpus:1"
    assert_consistent(library)


def test_chunks_fit_the_encoder_window_and_keep_offsets(encoder):
    sentences = [f"Sentence number {i} talks about topic {i % 7} with some extra words." for i in range(120)]
    text = "\n\n".join(" ".join(sentences[i:i + 6]) for i in range(0, 120, 6))
    text += "\n\n" + "x" * 5000  # one giant unbreakable word
    spans = chunk(text, encoder.tokenizer, 100, overlap=20)
    counts = encoder.count_tokens([text[a:b] for a, b in spans])
    assert max(counts) <= 100
    assert spans[0][0] == 0 and spans[-1][1] == len(text)
    # everything is covered: no gap between consecutive passages holds anything but whitespace
    for (_, end), (start, _) in zip(spans, spans[1:]):
        assert text[end:start].strip() == ""
    assert any(start < end for (_, end), (start, _) in zip(spans, spans[1:]))  # some overlap
    # paragraphs that fit are never cut: a passage boundary falls on a paragraph end when possible
    first = text[spans[0][0]:spans[0][1]]
    assert first.endswith(".")


def test_ingested_passages_fit_the_window_with_title_and_special_tokens(library, tmp_path, encoder):
    long_title = "A very long title " * 20
    text = "\n\n".join("Paragraph %d: " % i + "lorem ipsum dolor sit amet " * 30 for i in range(8))
    ingest_documents(library, [SourceDocument(uri="long", title=long_title, text=text)])
    doc = library.find_document("long")
    full = library.document_text(doc.id)
    for passage in library.passages_of(doc.id):
        assert full[passage.start:passage.end] == passage.text
        n = len(encoder.tokenizer(passage.text)["input_ids"])  # with [CLS] and [SEP]
        assert n + 32 <= encoder.max_tokens  # room left for the (cut) title prefix


def test_bad_options_and_encoder_mismatch(library, tmp_path, encoder):
    (tmp_path / "a.txt").write_text("text", encoding="utf-8")
    with pytest.raises(RagError, match="overlap"):
        ingest_paths(library, [str(tmp_path / "a.txt")], chunk_tokens=50, overlap=60)
    with pytest.raises(RagError, match="collection"):
        ingest_paths(library, [str(tmp_path / "a.txt")], collection=" ")
    ingest_paths(library, [str(tmp_path / "a.txt")])
    other = Store(library.data_dir / "rag.db")  # another process changing the store's encoder
    other.set_meta("encoder", "some-other-model")
    other.close()
    with pytest.raises(RagError, match="built with encoder some-other-model"):
        open_library(library.data_dir, encoder=encoder)


def test_index_is_rebuilt_or_caught_up_from_the_store(library, tmp_path, encoder):
    for i in range(3):
        (tmp_path / f"{i}.txt").write_text(f"Document {i} about rivers and lakes number {i}.", encoding="utf-8")
    ingest_paths(library, [str(tmp_path)])
    data = library.data_dir
    library.close()
    import shutil

    shutil.rmtree(data / "index")  # lost index: rebuilt from stored embeddings, no encoding
    reopened = open_library(data, encoder=encoder)
    assert_consistent(reopened)
    # a store write the index never saw (as after a crash before the index was saved)
    state = json.loads((data / "index" / "rag.json").read_text())
    (tmp_path / "3.txt").write_text("A new document about mountains.", encoding="utf-8")
    reopened.close()
    other = open_library(data, encoder=encoder)
    other._index = None
    ingest_paths(other, [str(tmp_path / "3.txt")])
    (data / "index" / "rag.json").write_text(json.dumps(state))  # pretend the save was lost
    other.close()
    again = open_library(data, encoder=encoder)
    assert_consistent(again)
    assert search(again, "mountains", k=1)[0].document.path.endswith("3.txt")
    again.close()


def test_cli_ingest_search_stats_docs_rm_reindex(tmp_path, encoder):
    corpus = tmp_path / "corpus"
    write_corpus(corpus)
    data = str(tmp_path / "data")
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(corpus), "--data", data, "--no-progress", "--index", BACKEND,
                                  "--text-field", "body", "--id-field", "id", "--text-columns", "description",
                                  "--collection", "demo"])
    assert result.exit_code == 1, result.output  # bad files make the exit status non-zero
    assert "7 added, 0 updated, 0 skipped, 4 failed" in result.output
    assert "binary.txt" in result.output and "passages/s" in result.output

    result = runner.invoke(main, ["search", "lighthouse lamp", "--data", data, "--json", "-k", "2"])
    assert result.exit_code == 0, result.output
    payload = json.loads(result.output)
    assert set(payload) == {"query", "mode", "results"} and payload["mode"] == "hybrid"
    first = payload["results"][0]
    assert set(first) == {"rank", "score", "passage_id", "text", "document", "matched_terms", "page", "last_page",
                          "heading"}  # as /api/search
    assert set(first["document"]) == {"id", "path", "title", "collection"}
    assert first["document"]["title"] == "Lighthouse keepers" and "lighthouse" in first["matched_terms"]
    assert first["heading"] == "Lighthouse keepers" and first["page"] is None  # the HTML page's <h1>

    result = runner.invoke(main, ["search", "sourdough starter", "--data", data, "--mode", "keyword",
                                  "--where", "path=*.md"])
    assert result.exit_code == 0 and " 1. [" in result.output and "**Sourdough**" in result.output
    result = runner.invoke(main, ["search", "x", "--data", data, "--where", "nonsense"])
    assert result.exit_code == 2 and "FIELD=VALUE" in result.output

    result = runner.invoke(main, ["stats", "--data", data, "--json"])
    stats = json.loads(result.output)
    assert stats["documents"] == 9 and stats["encoder"] == "all-MiniLM-L6-v2" and stats["backend"] == BACKEND
    result = runner.invoke(main, ["docs", "--data", data])
    assert "Glacier report" in result.output and "demo" in result.output

    result = runner.invoke(main, ["rm", str(corpus / "records.jsonl"), "--data", data])
    assert result.exit_code == 0 and "removed" in result.output
    result = runner.invoke(main, ["rm", "999999", "--data", data])
    assert result.exit_code == 1
    result = runner.invoke(main, ["reindex", "--index", "flat", "--data", data])
    assert result.exit_code == 0 and "flat index rebuilt" in result.output
    result = runner.invoke(main, ["ingest", "-", "--data", data, "--no-progress", "--stdin-name", "pasted.md"],
                           input="# Pasted\n\nOrigami cranes are folded from one square sheet.")
    assert result.exit_code == 0, result.output
    lib = open_library(data, encoder=encoder)
    assert lib.backend == "flat" and lib.find_document("pasted.md").title == "Pasted"
    assert len(lib.documents()) == 8
    assert_consistent(lib)
    lib.close()


def test_ingest_killed_mid_run_then_resumed(tmp_path, encoder):
    """A real `rag ingest` process killed with SIGKILL leaves a consistent store; rerunning completes it."""
    folder = tmp_path / "many"
    folder.mkdir()
    total = 60
    for i in range(total):
        (folder / f"doc{i:03d}.txt").write_text(f"Note {i}. The weather on day {i} was mild with light wind "
                                                f"from the west and {i % 9} millimetres of rain.", encoding="utf-8")
    data = tmp_path / "data"
    command = [sys.executable, "-c", "from rag.cli import main; main()", "ingest", str(folder), "--data", str(data), "--no-progress",
               "--batch-passages", "4", "--index", BACKEND]
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "PYTHONPATH": str(REPO)}
    proc = subprocess.Popen(command, cwd=REPO, env=env, stdout=subprocess.PIPE, stderr=subprocess.PIPE)
    db = data / "rag.db"
    deadline = time.time() + 300
    stored = 0
    while time.time() < deadline and proc.poll() is None:
        if db.exists():
            try:
                with sqlite3.connect(f"file:{db}?mode=ro", uri=True, timeout=1) as conn:
                    stored = conn.execute("SELECT COUNT(*) FROM documents").fetchone()[0]
            except sqlite3.OperationalError:
                stored = 0
            if stored >= 5:
                break
        time.sleep(0.02)
    assert proc.poll() is None, proc.communicate()
    proc.send_signal(signal.SIGKILL)
    proc.wait()
    lib = open_library(data, encoder=encoder)
    killed_at = len(lib.documents())
    assert 5 <= killed_at < total
    assert_consistent(lib)  # the index was caught up or rebuilt from the store
    lib.close()

    done = subprocess.run(command, cwd=REPO, env=env, capture_output=True, text=True, timeout=600)
    assert done.returncode == 0, done.stderr
    assert f"{killed_at} skipped" in done.stdout
    lib = open_library(data, encoder=encoder)
    assert len(lib.documents()) == total
    assert_consistent(lib)
    assert search(lib, "day 37 weather", k=3, mode="keyword")[0].document.path.endswith("doc037.txt")
    lib.close()
