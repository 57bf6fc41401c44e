"""`rag eval answer` end to end on SQuAD files the test writes (v1.1 and v2.0), with the extract reader."""
from __future__ import annotations

import json

from click.testing import CliRunner

from rag.cli import main

PARAGRAPHS = [
    ("Quill_port", "Quillport was founded in 1742 by the cartographer Ilsa Marrow. It is known for its blue salt mines.",
     [("q1", "When was Quillport founded?", ["1742"]), ("q2", "Who founded Quillport?", ["Ilsa Marrow", "Marrow"])]),
    ("Glacier_notes", "The Vatna glacier retreated 40 metres in 2019. Its meltwater feeds the river Skeid.",
     [("q3", "How many metres did the Vatna glacier retreat in 2019?", ["40 metres", "40"])]),
    ("Sourdough", "A sourdough starter is fed twice a day with flour and water.",
     [("q4", "What is a sourdough starter fed with?", ["flour and water"])]),
]
KEYS = {"reader", "hyde", "exact_match", "f1", "contains", "cited_ok", "grounded", "refusal_ok", "p50_s", "p95_s"}


def write_squad(path, unanswerable: bool = False):
    data = []
    for title, context, qas in PARAGRAPHS:
        items = [{"id": i, "question": q, "answers": [{"text": a, "answer_start": context.find(a)} for a in answers]}
                 for i, q, answers in qas]
        data.append({"title": title, "paragraphs": [{"context": context, "qas": items}]})
    if unanswerable:
        data[0]["paragraphs"][0]["qas"].append({"id": "q5", "question": "How many moons does the planet Neptune have?",
                                                "answers": [], "is_impossible": True})
    path.write_text(json.dumps({"version": "v2.0" if unanswerable else "1.1", "data": data}), encoding="utf-8")
    return path


def test_squad_v1_json_shape_and_scores(tmp_path, encoder):
    dataset = write_squad(tmp_path / "dev.json")
    result = CliRunner().invoke(main, ["eval", "answer", str(dataset), "--readers", "extract", "-k", "2",
                                       "--data", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert set(report) == {"dataset", "results"}
    assert report["dataset"] == {"path": str(dataset), "questions": 4, "documents": 3}
    [row] = report["results"]
    assert set(row) == KEYS and row["reader"] == "extract" and row["hyde"] is False
    assert row["refusal_ok"] is None  # v1.1 has no unanswerable questions
    assert row["grounded"] == 1.0  # extracted spans are passage text
    assert row["exact_match"] >= 0.75 and row["f1"] >= row["exact_match"] and row["cited_ok"] >= 0.75
    assert 0 < row["p50_s"] <= row["p95_s"]
    assert list((tmp_path / "data" / "eval").glob("squad-*")), "the store is cached under <data>/eval/"
    assert list((tmp_path / "data" / "bench").glob("answer-dev.png"))
    # The second run reuses the cached store (nothing is ingested again) and gives the same scores.
    again = CliRunner().invoke(main, ["eval", "answer", str(dataset), "--readers", "extract", "-k", "2",
                                      "--data", str(tmp_path / "data")])
    assert again.exit_code == 0, again.output
    assert "ingesting" not in again.output and "extract" in again.output and "EM" in again.output


def test_squad_v2_unanswerable_questions_are_scored_as_refusals(tmp_path, encoder):
    dataset = write_squad(tmp_path / "dev-v2.json", unanswerable=True)
    result = CliRunner().invoke(main, ["eval", "answer", str(tmp_path), "--readers", "extract", "-k", "2",
                                       "--data", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["path"] == str(dataset) and report["dataset"]["questions"] == 5
    assert report["results"][0]["refusal_ok"] == 1.0  # off-topic for every paragraph: "not in the documents"


def test_bad_input_is_a_clear_error(tmp_path):
    bad = tmp_path / "bad.json"
    bad.write_text('{"version": "1.1"}', encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", "answer", str(bad), "--data", str(tmp_path / "data")])
    assert result.exit_code != 0 and "no top-level" in result.output
    result = CliRunner().invoke(main, ["eval", "answer", str(bad), "--readers", "oracle", "--data", str(tmp_path)])
    assert result.exit_code != 0 and "unknown reader" in result.output and "Traceback" not in result.output


def test_given_paragraph_reads_each_question_from_its_own_paragraph(tmp_path, encoder):
    dataset = write_squad(tmp_path / "dev.json")
    result = CliRunner().invoke(main, ["eval", "answer", str(dataset), "--readers", "extract", "-k", "2",
                                       "--given-paragraph", "--data", str(tmp_path / "data")])
    assert result.exit_code == 0, result.output
    assert "4 questions each read from its own paragraph" in result.output
    [saved] = (tmp_path / "data" / "bench").glob("answer-*.json")
    report = json.loads(saved.read_text())
    assert report["setting"] == "given paragraph"
    rows = report["rows"]["extract/plain"]
    assert [r["id"] for r in rows] == ["q1", "q2", "q3", "q4"]
    # Every answer cites the question's own paragraph, which holds its gold answer.
    assert all(r["cited_ok"] == 1.0 and r["retrieved"] == 1.0 for r in rows)
    assert report["results"][0]["exact_match"] >= 0.75


def test_given_paragraph_needs_squad_data(tmp_path):
    questions = tmp_path / "q.jsonl"
    questions.write_text('{"id": "a", "question": "What is a list?", "answers": ["a sequence"]}\n', encoding="utf-8")
    docs = tmp_path / "docs"
    (docs / "tutorial").mkdir(parents=True)
    (docs / "tutorial" / "lists.html").write_text("<html><body><h1>Lists</h1><p>A list is a mutable sequence."
                                                  "</p></body></html>", encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", "answer", "--questions", str(questions), "--given-paragraph",
                                       "--readers", "extract", "--docs", str(docs), "--data", str(tmp_path / "data")])
    assert result.exit_code != 0 and "needs SQuAD data" in result.output and "Traceback" not in result.output
    assert not (tmp_path / "data" / "bench").exists(), "refused before anything is ingested"


def test_questions_on_articles_the_span_reader_trained_on_are_left_out(tmp_path, encoder):
    from rag.models.span_reader import SHIPPED, read_manifest

    trained = read_manifest(SHIPPED)["train_groups"][0]
    dataset = tmp_path / "dev.json"
    write_squad(dataset)
    raw = json.loads(dataset.read_text())
    raw["data"][0]["title"] = trained.replace(" ", "_")  # SQuAD writes titles with underscores
    dataset.write_text(json.dumps(raw), encoding="utf-8")
    result = CliRunner().invoke(main, ["eval", "answer", str(dataset), "--readers", "span,extract", "-k", "2",
                                       "--data", str(tmp_path / "data"), "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    assert report["dataset"]["questions"] == 2 and report["dataset"]["left_out"] == 2
    assert [r["reader"] for r in report["results"]] == ["span", "extract"]
