"""Retrieval metrics against rankings worked out by hand (trec_eval semantics)."""
from __future__ import annotations

from math import log2

import pytest

from eval.metrics import evaluate, judged_queries, per_query, trec_order

QRELS = {
    "graded": {"d1": 2, "d2": 1, "d3": 0},
    "no-relevant": {"d1": 0},
    "late": {"d5": 1},
    "nothing-retrieved": {"d9": 1},
    "ties": {"b": 1},
}
RUN = {
    # ranks: d3 (grade 0), d1 (grade 2), d4 (unjudged), d2 (grade 1)
    "graded": {"d2": 0.6, "d3": 0.9, "d4": 0.7, "d1": 0.8},
    "no-relevant": {"d1": 1.0},
    # ten non-relevant documents first: d5 is 11th
    "late": {**{f"x{i:02d}": 2.0 - i / 100 for i in range(10)}, "d5": 1.0},
    "nothing-retrieved": {},
    # all tied: trec_eval ranks by doc id descending -> c, b, a
    "ties": {"a": 1.0, "b": 1.0, "c": 1.0},
}

HAND = {
    "graded": {
        "ndcg@10": (2 / log2(3) + 1 / log2(5)) / (2 / log2(2) + 1 / log2(3)),
        "recall@10": 1.0, "recall@100": 1.0, "mrr@10": 1 / 2, "map@100": (1 / 2 + 2 / 4) / 2,
    },
    "late": {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 1.0, "mrr@10": 0.0, "map@100": 1 / 11},
    "nothing-retrieved": {"ndcg@10": 0.0, "recall@10": 0.0, "recall@100": 0.0, "mrr@10": 0.0, "map@100": 0.0},
    "ties": {"ndcg@10": 1 / log2(3), "recall@10": 1.0, "recall@100": 1.0, "mrr@10": 1 / 2, "map@100": 1 / 2},
}


def test_trec_order_breaks_ties_by_descending_doc_id():
    assert trec_order({"a": 1.0, "c": 1.0, "b": 1.0, "z": 0.5, "y": 2.0}) == ["y", "c", "b", "a", "z"]


def test_queries_without_relevant_documents_are_skipped():
    assert judged_queries(QRELS) == sorted(["graded", "late", "nothing-retrieved", "ties"])
    assert "no-relevant" not in per_query(QRELS, RUN)


def test_per_query_metrics_match_hand_computation():
    rows = per_query(QRELS, RUN)
    assert set(rows) == set(HAND)
    for query, expected in HAND.items():
        for name, value in expected.items():
            assert rows[query][name] == pytest.approx(value, abs=1e-9), (query, name)


def test_means_are_over_judged_queries_only():
    means = evaluate(QRELS, RUN)
    for name in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"):
        assert means[name] == pytest.approx(sum(HAND[q][name] for q in HAND) / 4, abs=1e-9), name


def test_recall_curve_cutoffs():
    rows = per_query(QRELS, RUN, recall_cutoffs=(1, 2, 11))
    assert rows["graded"]["recall@1"] == 0.0
    assert rows["graded"]["recall@2"] == 0.5
    assert rows["late"]["recall@11"] == 1.0
    assert rows["ties"]["recall@1"] == 0.0 and rows["ties"]["recall@2"] == 1.0


def test_nothing_to_evaluate_is_an_error():
    with pytest.raises(ValueError, match="no query has a relevant document"):
        evaluate({"q": {"d": 0}}, {"q": {"d": 1.0}})
