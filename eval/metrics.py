"""Retrieval quality metrics with trec_eval's semantics, computed by trec_eval's own code (pytrec_eval).

What trec_eval does, and so what these numbers mean:
- graded relevance: nDCG's gain is the qrels grade itself (linear); recall, MAP and MRR count any
  grade >= 1 as relevant;
- a run is ranked by score, best first; ties are broken by document id in *descending* string
  order (trec_eval sorts on (score, docno) both descending), whatever order the caller listed them;
- a query whose qrels hold no relevant document is skipped (it is not in the mean); a judged query
  that retrieved nothing counts as 0 (trec_eval -c).
"""
from __future__ import annotations

import pytrec_eval

Qrels = dict[str, dict[str, int]]  # query id -> doc id -> grade
Run = dict[str, dict[str, float]]  # query id -> doc id -> score (higher is better)

METRICS = ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100")
RECALL_CUTOFFS = (1, 2, 3, 5, 10, 20, 30, 50, 100)

_TREC_NAMES = {"ndcg@10": "ndcg_cut_10", "recall@10": "recall_10", "recall@100": "recall_100", "map@100": "map_cut_100"}


def trec_order(scores: dict[str, float]) -> list[str]:
    """Doc ids in the order trec_eval ranks them: score descending, ties by doc id descending."""
    return [doc for doc, _ in sorted(scores.items(), key=lambda kv: (kv[1], kv[0]), reverse=True)]


def judged_queries(qrels: Qrels) -> list[str]:
    """Queries with at least one relevant (grade >= 1) document: the ones trec_eval averages over."""
    return sorted(q for q, docs in qrels.items() if any(grade >= 1 for grade in docs.values()))


def per_query(qrels: Qrels, run: Run, recall_cutoffs: tuple[int, ...] = ()) -> dict[str, dict[str, float]]:
    """Every metric of METRICS (and recall@k for each extra cutoff) for each judged query."""
    queries = judged_queries(qrels)
    if not queries:
        raise ValueError("no query has a relevant document: nothing to evaluate")
    judged = {q: {d: int(g) for d, g in qrels[q].items()} for q in queries}
    cutoffs = sorted({10, 100, *recall_cutoffs})
    # Every measure stops at a cutoff, so the run can stop there too (in trec_eval's own order).
    ranked = {q: trec_order(run.get(q, {}))[: cutoffs[-1]] for q in queries}
    full = {q: {d: float(run[q][d]) for d in ranked[q]} for q in queries}
    top10 = {q: {d: full[q][d] for d in ranked[q][:10]} for q in queries}

    measures = {"ndcg_cut.10", "map_cut.100", "recall." + ",".join(map(str, cutoffs))}
    main = pytrec_eval.RelevanceEvaluator(judged, measures).evaluate(full)
    mrr = pytrec_eval.RelevanceEvaluator(judged, {"recip_rank"}).evaluate(top10)

    results: dict[str, dict[str, float]] = {}
    for q in queries:
        row = {name: main[q][trec] for name, trec in _TREC_NAMES.items()}
        row["mrr@10"] = mrr[q]["recip_rank"]
        for k in recall_cutoffs:
            row[f"recall@{k}"] = main[q][f"recall_{k}"]
        results[q] = row
    return results


def evaluate(qrels: Qrels, run: Run, recall_cutoffs: tuple[int, ...] = ()) -> dict[str, float]:
    """The mean of each metric over the judged queries (see the module docstring for the rules)."""
    rows = per_query(qrels, run, recall_cutoffs)
    names = list(next(iter(rows.values())))
    return {name: sum(row[name] for row in rows.values()) / len(rows) for name in names}
