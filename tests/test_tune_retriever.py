"""`rag tune retriever`: the query-side adapter trained on the hand-written fixture over a real store.

Real training (the packaged MiniLM through sentence-transformers, peft LoRA), a real SQLite store with
the fixture's paragraphs among distractors that share their words; stored vectors must not change.
"""
from __future__ import annotations

import hashlib
import json
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rag.cli import main
from rag.tune.retriever import gold_passages, rank_scores

from qa_fixture import PARAGRAPHS, QUESTIONS, write_fixture

# Passages that share the fixture's names and kinds of facts but not its answers.
DISTRACTORS = {
    "Quillport market": "The Quillport market opens every Tuesday. Traders sell cheese, wool and lamps, "
                        "and the square was paved in 1960.",
    "Edda": "Edda is a town in the hills north of the capital. Its museum holds maps and a salt cellar.",
    "Coffee": "Coffee comes from the roasted seeds of a berry. It reached Europe through Venice.",
    "Choir": "The Veltmoor choir sings in the old church, which seats 300 people, every Sunday.",
    "River": "The Pallis river runs for 80 kilometres from the glacier to the sea past many farms.",
    "Tramway": "The Quillport tramway opened later than the railway and closed when buses came.",
}


@pytest.fixture()
def store(tmp_path, encoder) -> Path:
    from rag.ingest.pipeline import ingest_documents
    from rag.library import open_library
    from rag.records import SourceDocument

    data_dir = tmp_path / "data"
    library = open_library(data_dir, encoder=encoder)
    docs = {**PARAGRAPHS, **DISTRACTORS}
    ingest_documents(library, [SourceDocument(uri=f"notes/{t}.md", title=t, text=x) for t, x in docs.items()])
    library.close()
    return data_dir


def _embeddings(data_dir: Path) -> bytes:
    from rag.library import Library

    with Library(data_dir, create=False) as library:
        ids, vectors = library.embeddings()
        return ids.tobytes() + vectors.tobytes()


def _dense_first_hits(data_dir: Path) -> int:
    """How many fixture questions have their own paragraph first in dense search."""
    from rag.library import Library
    from rag.search.ranking import search

    with Library(data_dir, create=False) as library:
        return sum(search(library, q, k=1, mode="dense")[0].document.title == t for t, q, _ in QUESTIONS)


def test_the_gold_passages_are_those_holding_the_answer_in_its_context(store, tmp_path):
    from rag.library import Library
    from rag.tune.qa_data import load_qa

    data = load_qa(write_fixture(tmp_path / "fixture.json"))
    with Library(store, create=False) as library:
        golds = gold_passages(library, data.examples)
        titles = {p.id: library.document(p.document_id).title
                  for p in library.passages(library.passage_ids().tolist()).values()}
    assert all(len(g) == 1 for g in golds)
    # "Quillport" (the answer to the first question) is in other passages too; only its context's counts
    assert [titles[g[0]] for g in golds] == [e.group for e in data.examples]


def test_rank_scores_on_hand_made_rankings():
    scores = rank_scores([[1, 2, 3], [4, 5, 6, 7, 8, 9], [10]], [[1], [9], [99]])
    assert scores == {"questions": 3, "top1": 1 / 3, "top5": 1 / 3, "top20": 2 / 3, "mrr": (1 + 1 / 6) / 3}


def test_tuning_the_retriever_moves_questions_not_passages(store, tmp_path):
    """The CLI trains and installs the adapter; stored vectors are byte-identical; search uses the adapter."""
    fixture = write_fixture(tmp_path / "fixture.json")
    before_vectors = _embeddings(store)
    before_hits = _dense_first_hits(store)
    args = ["tune", "retriever", str(fixture), "--data", str(store), "--validation-share", "0", "--epochs", "8",
            "--learning-rate", "2e-3", "--batch-size", "8", "--rank", "8", "--name", "fixture", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    manifest = done["manifest"]
    assert done["installed"] and manifest["name"] == "fixture"
    assert manifest["data"] == {"path": str(fixture), "sha256": hashlib.sha256(fixture.read_bytes()).hexdigest(),
                                "questions": len(QUESTIONS), "without_passage": 0}
    installed = Path(done["adapter"])
    assert {p.name for p in installed.iterdir()} == {"adapter_config.json", "adapter_model.safetensors",
                                                     "manifest.json"}
    assert sum(p.stat().st_size for p in installed.iterdir()) < 5_000_000
    losses = [loss for _, loss in json.loads((installed / "manifest.json").read_text())["losses"]]
    assert losses[-1] < losses[0]

    assert _embeddings(store) == before_vectors  # nothing re-encoded
    assert _dense_first_hits(store) >= before_hits
    assert _dense_first_hits(store) == len(QUESTIONS)  # it learned its training questions

    from rag.library import Library

    with Library(store, create=False) as library:
        question = QUESTIONS[0][1]
        plain = library.encoder.encode([question])[0]
        tuned = library.query_vector(question)
        assert tuned.shape == plain.shape and abs(float(np.linalg.norm(tuned)) - 1) < 1e-4
        assert float(tuned @ plain) < 0.9999  # a different vector ...
        assert library.query_vector(question, plain) is not plain  # ... also when the plain one is handed in
    stats = json.loads(CliRunner().invoke(main, ["stats", "--json", "--data", str(store)]).output)
    assert stats["retriever"]["query_adapter"] == "fixture" and stats["retriever"]["usable"]
    text = CliRunner().invoke(main, ["stats", "--data", str(store)]).output
    assert "query adapter 'fixture'" in text


def test_validation_measures_before_and_after_and_installs_only_what_is_better(store, tmp_path):
    fixture = write_fixture(tmp_path / "fixture.json")
    args = ["tune", "retriever", str(fixture), "--data", str(store), "--validation-share", "0.34", "--epochs", "2",
            "--batch-size", "8", "-k", "2", "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    done = json.loads(result.stdout)
    manifest = done["manifest"]
    scores = manifest["scores"]
    assert manifest["validation_groups"] and not set(manifest["validation_groups"]) & set(manifest["train_groups"])
    asked = sum(1 for t, _, _ in QUESTIONS if t in manifest["validation_groups"])
    for label in ("before", "after"):
        assert scores[label]["dense"]["questions"] == scores[label]["hybrid"]["questions"] == asked
        assert scores[label]["open"]["questions"] == asked and 0 <= scores[label]["open"]["f1"] <= 1
    assert [v["epoch"] for v in manifest["validation"]] == [0, 1, 2]
    assert done["installed"] == (scores["best_epoch"] > 0
                                 and scores["after"]["hybrid"]["mrr"] > scores["before"]["hybrid"]["mrr"])
    best = max(manifest["validation"], key=lambda v: (v["mrr"], -v["epoch"]))
    assert scores["best_epoch"] == best["epoch"]
    assert (Path(store) / "models" / "query-adapter").exists() == done["installed"]


def test_questions_about_documents_not_in_the_store_are_refused_and_nothing_is_written(store, tmp_path):
    from rag.store.database import DB_NAME

    questions = tmp_path / "elsewhere.jsonl"
    questions.write_text("\n".join(json.dumps({"question": f"What is item {n}?", "answers": [f"gadget {n}"],
                                               "context": f"Item {n} is a gadget {n} made in a town far away."})
                                   for n in range(4)) + "\n", encoding="utf-8")
    database = (store / DB_NAME).read_bytes()
    result = CliRunner().invoke(main, ["tune", "retriever", str(questions), "--data", str(store), "--no-open"])
    assert result.exit_code != 0
    assert "no training question has a passage holding its answer" in result.output
    assert "4 questions have no passage holding their answer" in result.output
    assert (store / DB_NAME).read_bytes() == database
    assert not (store / "models" / "query-adapter").exists()


def test_an_adapter_for_another_encoder_is_not_used(store, tmp_path):
    from rag.library import Library
    from rag.models.query_adapter import MANIFEST, adapter_directory

    directory = adapter_directory(store)
    directory.mkdir(parents=True)
    (directory / MANIFEST).write_text(json.dumps({"name": "other", "encoder": "some-other-model"}))
    with Library(store, create=False) as library:
        assert library.query_encoder is None
        status = library.retriever_status()
        assert not status["usable"] and "some-other-model" in status["message"]
        question = QUESTIONS[0][1]
        assert np.array_equal(library.query_vector(question), library.encoder.encode([question])[0])
