"""SQuAD scoring (the official normalization on hand-made cases), the SQuAD loader, and the question file."""
from __future__ import annotations

import json

import pytest

from eval.answer_bench import QUESTIONS, load_questions, spread
from eval.squad import contains, exact_match, f1_score, is_squad, load_squad, normalize_answer
from rag.errors import RagError


@pytest.mark.parametrize("text, normal", [
    ("The Denver Broncos", "denver broncos"),          # lower case, article dropped
    ("  an   apple,  a pear. ", "apple pear"),          # punctuation gone, spaces collapsed
    ("Levi's Stadium", "levis stadium"),                # apostrophe is punctuation
    ("24–10", "24–10"),                                 # an en dash is not ASCII punctuation (as in the script)
    ("theatre", "theatre"),                             # "the" only as a whole word
    ("A", ""),
])
def test_official_normalization(text, normal):
    assert normalize_answer(text) == normal


def test_exact_match_f1_and_containment():
    gold = ["Denver Broncos", "the Broncos"]
    assert exact_match("the Denver Broncos.", gold) == 1.0
    assert exact_match("Broncos", gold) == 1.0          # matches "the Broncos" after normalization
    assert exact_match("Denver", gold) == 0.0
    assert f1_score("Denver", gold) == pytest.approx(2 / 3)   # p=1, r=1/2 against "denver broncos"
    assert f1_score("the Denver Broncos won", gold) == pytest.approx(0.8)  # p=2/3, r=1
    assert f1_score("Carolina", gold) == 0.0
    assert f1_score("", [""]) == 1.0 and exact_match("", [""]) == 1.0  # a refusal on an unanswerable question
    assert contains("They were the Denver Broncos [1]", gold) == 1.0
    assert contains("Denverite Broncosaurus", gold) == 0.0    # whole words only
    assert contains("anything", []) == 0.0


def squad_file(tmp_path, version="1.1", impossible=False):
    qas = [{"id": "q1", "question": "Who founded Quillport?", "answers": [{"text": "Ilsa Marrow", "answer_start": 0}]}]
    if impossible:
        qas.append({"id": "q2", "question": "Who painted Quillport?", "answers": [], "is_impossible": True})
    data = {"version": version, "data": [
        {"title": "Quill_port", "paragraphs": [{"context": "Quillport was founded by Ilsa Marrow.", "qas": qas},
                                               {"context": "It sells salt.", "qas": []}]}]}
    path = tmp_path / "dev.json"
    path.write_text(json.dumps(data), encoding="utf-8")
    return path


def test_load_squad_v1_and_v2(tmp_path):
    dataset = load_squad(squad_file(tmp_path))
    assert [d.title for d in dataset.documents] == ["Quill port", "Quill port"]
    assert [d.uri for d in dataset.documents] == ["squad:0:0", "squad:0:1"]
    assert dataset.questions[0].answers == ["Ilsa Marrow"] and not dataset.has_unanswerable
    v2 = load_squad(squad_file(tmp_path, "v2.0", impossible=True))
    assert v2.has_unanswerable and v2.questions[1].answers == [] and not v2.questions[1].answerable
    assert load_squad(tmp_path).path.name == "dev.json"  # a directory holding one file
    assert is_squad(tmp_path) and not is_squad(QUESTIONS)


@pytest.mark.parametrize("content, message", [
    ("not json", "not a readable SQuAD JSON"),
    ('{"version": "1.1"}', 'no top-level "data"'),
    ('{"data": [{"title": "x", "paragraphs": [{"qas": []}]}]}', r"paragraphs\[0\]: no \"context\""),
    ('{"data": [{"title": "x", "paragraphs": [{"context": "c", "qas": [{"id": "1"}]}]}]}', r"qas\[0\]: bad question"),
])
def test_malformed_squad_names_the_place(tmp_path, content, message):
    path = tmp_path / "bad.json"
    path.write_text(content, encoding="utf-8")
    with pytest.raises(RagError, match=message):
        load_squad(path)


def test_the_shipped_questions_load_and_bad_records_name_the_line(tmp_path):
    questions = load_questions(QUESTIONS)
    assert len(questions) >= 15 and any(not q.answerable for q in questions)
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "a", "question": "ok?", "answers": ["x"]}\n{"answers": []}\n')
    with pytest.raises(RagError, match="q.jsonl:2"):
        load_questions(bad)


def test_limit_spreads_questions_over_the_file():
    items = list(range(10))
    assert spread(items, 3) == [0, 3, 6] and spread(items, None) == items and spread(items, 50) == items
