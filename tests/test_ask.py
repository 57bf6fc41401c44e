"""The answer pipeline end to end: a real store in tmp_path, the real encoder and the real default generator."""
from __future__ import annotations

import json
import re
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rag.answer.pipeline import NOT_FOUND, ask
from rag.cli import main
from rag.errors import RagError
from rag.ingest.pipeline import ingest_documents
from rag.library import open_library
from rag.records import SourceDocument
from rag.search.hyde import hyde_vector

REPO = Path(__file__).resolve().parents[1]

FACT = ("The Zorbanian capital city Quillport was founded in 1742 by the cartographer Ilsa Marrow. "
        "It is known for its blue salt mines, which supply most of the country's salt.")
DOCS = [
    SourceDocument(uri="notes/lists.md", title="Python lists",
                   text="Python lists are mutable sequences, typically used to store collections of homogeneous "
                        "items. Lists may be constructed with square brackets or the list() constructor."),
    SourceDocument(uri="notes/quillport.md", title="Quillport", text=FACT),
    SourceDocument(uri="notes/tea.md", title="Green tea",
                   text="Green tea is made from the leaves of Camellia sinensis that have not undergone withering "
                        "and oxidation. It originated in China and spread to Japan."),
    SourceDocument(uri="notes/json.md", title="json module",
                   text="The json module exposes an API familiar to users of the standard library marshal and "
                        "pickle modules. json.dumps serialises an object to a JSON formatted string."),
]


@pytest.fixture(scope="module")
def data_dir(tmp_path_factory, encoder):
    path = tmp_path_factory.mktemp("ask-data")
    library = open_library(path, encoder=encoder)
    ingest_documents(library, DOCS)
    library.close()
    return path


@pytest.fixture
def library(data_dir, encoder):
    lib = open_library(data_dir, encoder=encoder)
    yield lib
    lib.close()


def fact_passage_id(library) -> int:
    from rag.search.ranking import search

    return search(library, "Quillport Ilsa Marrow", k=1, mode="keyword")[0].passage.id


@pytest.mark.parametrize("reader", ["span", "extract", "prompt", "fid"])
def test_ask_answers_with_the_fact_and_cites_its_passage(library, generator, reader):
    answer = ask(library, "Who founded Quillport?", k=4, reader=reader, generator=generator)
    assert "Marrow" in answer.text
    assert [c.hit.passage.id for c in answer.citations] == [fact_passage_id(library)]
    assert answer.citations[0].hit.document.title == "Quillport"
    assert set(answer.timings) == {"retrieve", "hyde", "generate", "total"}
    assert answer.timings["total"] >= answer.timings["generate"] > 0
    data = answer.to_json()
    assert data["citations"][0]["document"]["path"].endswith("quillport.md")
    assert len(data["passages"]) == 4 and data["hyde"] == []


def test_the_extract_reader_never_loads_a_generator(library, tmp_path):
    answer = ask(library, "When was Quillport founded?", k=4, reader="extract", generator=str(tmp_path / "no-model"))
    assert answer.text == "1742 [1]" or answer.text.startswith("1742 [")
    assert answer.citations[0].hit.document.title == "Quillport"


def test_ask_streams_tokens(library, generator):
    pieces: list[str] = []
    answer = ask(library, "What is Quillport known for?", k=3, generator=generator, on_token=pieces.append)
    assert "salt" in "".join(pieces) and "salt" in answer.text


def test_hyde_writes_passages_and_moves_the_query_vector(library, generator):
    question = "Who founded Quillport?"
    vector, passages = hyde_vector(question, library, generator, n=2, max_new_tokens=32)
    assert len(passages) == 2 and all(p.strip() for p in passages)
    plain = library.encoder.encode([question])[0]
    assert vector.shape == plain.shape and abs(float(np.linalg.norm(vector)) - 1.0) < 1e-5
    assert float(vector @ plain) < 0.999
    # The same seed gives the same passages.
    assert hyde_vector(question, library.encoder, generator, n=2, max_new_tokens=32)[1] == passages


def test_ask_with_hyde_returns_the_hypothetical_passages(library, generator):
    answer = ask(library, "Who founded Quillport?", k=3, hyde=True, hyde_n=2, generator=generator)
    assert answer.hyde and answer.timings["hyde"] > 0
    assert "Marrow" in answer.text


def test_an_off_topic_question_says_the_documents_do_not_hold_the_answer(library, generator):
    answer = ask(library, "How many moons does the planet Neptune have?", k=3, generator=generator)
    assert answer.text == NOT_FOUND and answer.citations == []
    assert len(answer.passages) == 3


def test_errors_are_clear(library, generator, tmp_path, encoder):
    with pytest.raises(RagError, match="empty"):
        ask(library, "   ", generator=generator)
    with pytest.raises(RagError, match="unknown reader"):
        ask(library, "Who founded Quillport?", reader="oracle", generator=generator)
    with pytest.raises(RagError, match="not found"):
        ask(library, "Who founded Quillport?", reader="prompt", generator=str(tmp_path / "no-model"))
    empty = open_library(tmp_path / "empty", encoder=encoder)
    with pytest.raises(RagError, match="no documents"):
        ask(empty, "Who founded Quillport?", generator=generator)
    empty.close()


def test_cli_ask_json_and_text(data_dir, generator):
    runner = CliRunner()
    result = runner.invoke(main, ["ask", "Who founded Quillport?", "-k", "3", "--reader", "fid", "--json",
                                  "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    data = json.loads(result.stdout)
    assert set(data) == {"question", "answer", "sentence", "citations", "passages", "hyde", "timings"}
    assert "Marrow" in data["answer"]
    assert data["citations"][0]["document"]["title"] == "Quillport"
    assert set(data["citations"][0]) == {"n", "passage_id", "document", "page", "last_page", "heading"}
    result = runner.invoke(main, ["ask", "Who founded Quillport?", "-k", "3", "--data", str(data_dir)])
    assert result.exit_code == 0, result.output
    assert "Answer:" in result.output and "Marrow" in result.output
    assert "Citations:" in result.output and "quillport.md" in result.output and "Timings:" in result.output


def test_cli_ask_errors(tmp_path, data_dir):
    runner = CliRunner()
    result = runner.invoke(main, ["ask", "anything", "--data", str(tmp_path / "nothing")])
    assert result.exit_code == 1 and "no store in" in result.output and "Traceback" not in result.output
    result = runner.invoke(main, ["ask", "Who founded Quillport?", "--reader", "prompt", "--generator",
                                  str(tmp_path / "missing"), "--data", str(data_dir)])
    assert result.exit_code == 1 and "not found" in result.output and "Traceback" not in result.output


@pytest.mark.parametrize("reader", ["span", "extract", "prompt", "fid"])
def test_cli_ask_shows_no_warnings_from_the_libraries(data_dir, generator, reader):
    """The real command in its own process, as a user runs it: stderr holds no warning or deprecation
    notice (Python's warnings, transformers' log), e.g. the FutureWarning transformers 5.25 printed on every
    generator reader's answer while we passed the key/value cache by its old name."""
    done = subprocess.run([sys.executable, "-m", "rag.cli", "ask", "Who founded Quillport?", "-k", "3",
                           "--reader", reader, "--data", str(data_dir)],
                          cwd=REPO, capture_output=True, text=True, timeout=600)  # RAG_MODEL_CACHE: model_cache
    assert done.returncode == 0, done.stderr
    assert "Marrow" in done.stdout
    noisy = [line for line in done.stderr.splitlines() if re.search(r"warn|deprecat", line, re.IGNORECASE)]
    assert not noisy, "\n".join(noisy)
