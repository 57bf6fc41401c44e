"""The answer benchmark's scoring and question file (the run itself is `rag eval answer`)."""
from __future__ import annotations

import pytest

from eval.answer_bench import QUESTIONS, contains_answer, load_questions, token_f1
from rag.errors import RagError


def test_containment_and_token_f1_keep_code_punctuation():
    assert contains_answer("Use the // operator [2]", ["//"])
    assert contains_answer("Python was named after Monty Python\u2019s show", ["Monty Python's"])
    assert not contains_answer("use /", ["//"])
    assert token_f1("set()", ["set()"]) == 1.0
    assert token_f1("You call set() [1]", ["set()"]) == pytest.approx(2 / 3)  # you call set ( ) vs set ( )
    assert token_f1("nothing alike", ["lru_cache"]) == 0.0


def test_the_shipped_questions_load_and_bad_records_name_the_line(tmp_path):
    questions = load_questions(QUESTIONS)
    assert len(questions) >= 15 and any(not q.answerable for q in questions)
    assert all(q.pages for q in questions if q.answerable)
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"id": "a", "question": "ok?", "answers": ["x"]}\n{"answers": []}\n')
    with pytest.raises(RagError, match="q.jsonl:2"):
        load_questions(bad)
