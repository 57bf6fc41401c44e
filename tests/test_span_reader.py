"""The shipped span reader: it loads offline from the package, answers known questions with the span
marked in its sentence, declines below its no-answer margin, and is the default reader."""
from __future__ import annotations

import json

import numpy as np
import pytest
from click.testing import CliRunner

from rag.answer.evidence import answer_in_context
from rag.answer.pipeline import NOT_FOUND, ask
from rag.answer.readers import DEFAULT_READER
from rag.cli import main
from rag.models.span_reader import (
    SHIPPED, SpanReader, best_span, load_span_reader, read_manifest, reader_directory, whole_words,
)

PARAGRAPH = ("The Veltmoor orchestra was founded in 1902 by the conductor Anja Roos. It has 96 musicians "
             "and plays in the Glass Hall, which seats 2,400 people. Its first recording was made in 1931.")


@pytest.fixture(scope="module")
def shipped(model_cache) -> SpanReader:
    return load_span_reader(SHIPPED, model_cache)


def test_the_shipped_reader_is_package_data_with_its_record(shipped):
    manifest = read_manifest(SHIPPED)
    assert manifest["kind"] == "span-reader" and "all-MiniLM-L6-v2" in manifest["base_model"]
    assert manifest["train_groups"] and manifest["validation_groups"]
    assert not set(manifest["train_groups"]) & set(manifest["validation_groups"])
    assert len(manifest["data"]["sha256"]) == 64 and manifest["recipe"]["rank"] > 0
    assert manifest["scores"]["given_paragraph"]["f1"] > 0.5
    size = sum(p.stat().st_size for p in SHIPPED.iterdir())
    assert size < 10 * 2**20  # an adapter and a head, not a model
    assert reader_directory(None) == SHIPPED


@pytest.mark.parametrize("question,answer", [
    ("When was the Veltmoor orchestra founded?", "1902"),
    ("Who founded the Veltmoor orchestra?", "Anja Roos"),
    ("How many musicians does the orchestra have?", "96"),
    ("How many people does the Glass Hall seat?", "2,400"),
])
def test_the_shipped_reader_answers_known_questions(shipped, question, answer):
    span = shipped.spans(question, [PARAGRAPH])[0]
    assert answer in span.text and len(span.text) < 40
    assert PARAGRAPH[span.start:span.end] == span.text


def test_the_answer_comes_from_the_passage_that_holds_it(shipped):
    other = "Green tea is made from the leaves of Camellia sinensis. It originated in China."
    span, _ = shipped.choose("Who founded the Veltmoor orchestra?", [other, PARAGRAPH], [0.5, 0.5])
    assert span.passage == 1 and "Anja Roos" in span.text


def test_long_passages_are_read_in_windows(shipped):
    filler = " ".join(f"The survey of site {i} counted {i + 3} stones near the river." for i in range(60))
    text = filler + " " + PARAGRAPH
    span = shipped.spans("Who founded the Veltmoor orchestra?", [text])[0]
    assert "Anja Roos" in span.text and text[span.start:span.end] == span.text


def test_the_reader_declines_below_its_margin(shipped, monkeypatch):
    question = "Who founded the Veltmoor orchestra?"
    span, _ = shipped.choose(question, [PARAGRAPH])
    assert span is not None
    monkeypatch.setattr(shipped.settings, "no_answer_margin", span.score - span.null + 1.0)
    assert shipped.choose(question, [PARAGRAPH])[0] is None


def test_best_span_keeps_inside_the_passage_and_in_order():
    start = np.array([9.0, 1.0, 5.0, 0.0, 2.0])
    end = np.array([9.0, 0.0, 1.0, 4.0, 3.0])
    context = np.array([False, True, True, True, True])
    assert best_span(start, end, context) == (2, 3, 9.0)
    assert best_span(start, end, context, max_tokens=1) == (2, 2, 6.0)
    assert best_span(start, end, np.zeros(5, bool))[0] == -1


def test_answer_in_context_marks_the_answer_in_its_sentence():
    text = "Lists are mutable. Tuples are immutable, so they can be keys. Sets are unordered."
    found = answer_in_context(text, "they can be keys")
    assert found["text"] == "Tuples are immutable, so they can be keys."
    assert found["text"][found["answer_start"]:found["answer_end"]] == "they can be keys"
    spanning = answer_in_context(text, "mutable. Tuples")
    assert spanning["text"].startswith("Lists") and spanning["text"].endswith("keys.")
    assert answer_in_context(text, "dictionaries") is None


@pytest.fixture(scope="module")
def orchestra_dir(notes_data_dir):
    return notes_data_dir("span-ask", {
        "orchestra.txt": PARAGRAPH,
        "tea.txt": "Green tea is made from the leaves of Camellia sinensis. It originated in China and spread to Japan.",
        "glacier.txt": "The Pallis glacier is 14 kilometres long. It has retreated by 900 metres since 1950.",
    })


def test_span_is_the_default_reader_and_answers_through_ask(orchestra_dir, encoder):
    from rag.library import open_library

    assert DEFAULT_READER == "span"
    with open_library(orchestra_dir, encoder=encoder) as library:
        answer = ask(library, "How many people does the Glass Hall seat?", k=3)
        off_topic = ask(library, "What is the airspeed of an unladen swallow carrying a coconut?", k=3)
    assert "2,400" in answer.text and answer.citations[0].hit.document.path.endswith("orchestra.txt")
    assert answer.sentence["text"] == "It has 96 musicians and plays in the Glass Hall, which seats 2,400 people."
    assert "2,400" in answer.sentence["text"][answer.sentence["answer_start"]:answer.sentence["answer_end"]]
    assert answer.to_json()["sentence"]["passage_id"] == answer.citations[0].hit.passage.id
    assert off_topic.text == NOT_FOUND and off_topic.sentence is None


def test_the_cli_shows_the_answer_in_its_sentence(orchestra_dir):
    result = CliRunner().invoke(main, ["ask", "When was the orchestra's first recording made?", "--data",
                                       str(orchestra_dir)])
    assert result.exit_code == 0, result.output
    assert "1931" in result.output.splitlines()[0]
    assert "In context [1]: Its first recording was made in 1931." in result.output
    shown = CliRunner().invoke(main, ["stats", "--data", str(orchestra_dir)])
    assert "reader:      span, shipped" in shown.output
    body = json.loads(CliRunner().invoke(main, ["stats", "--json", "--data", str(orchestra_dir)]).output)
    assert body["reader"]["source"] == "shipped"


def test_the_onnx_form_reads_as_the_trained_weights_do(shipped):
    assert shipped.backend == "onnx"
    torch_reader = SpanReader(SHIPPED, backend="torch")
    texts = [PARAGRAPH, "Green tea is made from the leaves of Camellia sinensis. It originated in China."]
    for question in ("Who founded the Veltmoor orchestra?", "Where did green tea originate?"):
        ours, theirs = shipped.spans(question, texts), torch_reader.spans(question, texts)
        assert [s.text for s in ours] == [s.text for s in theirs]
        assert np.allclose([s.score for s in ours], [s.score for s in theirs], atol=1e-3)


def test_an_unknown_reader_back_end_is_refused():
    from rag.errors import RagError

    with pytest.raises(RagError, match="unknown span reader back end"):
        SpanReader(SHIPPED, backend="tpu")


def test_a_span_is_widened_to_whole_words():
    text = "There is a strong presence of Border Reiver surnames, such as Armstrong."
    start = text.index("Border")
    assert whole_words(text, start, text.index("surnames") + len("surname")) == (start, text.index(","))
    assert whole_words(text, text.index("eiver"), text.index("eiver") + 5) == (text.index("Reiver"), text.index(" surnames"))
    assert whole_words(text, start, start + len("Border")) == (start, start + len("Border"))  # already whole
    assert whole_words("1,000 people", 2, 5) == (2, 5)  # punctuation is a word boundary
    assert whole_words("use set(), not {}", 4, 8) == (4, 9)  # "set(" -> "set()"
    assert whole_words("use set(), not {}", 4, 7) == (4, 7)  # "set" opens nothing
    assert whole_words("a (b) c", 2, 5) == (2, 5)  # already closed
