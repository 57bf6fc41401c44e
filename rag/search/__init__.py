"""Finding passages: dense, keyword and hybrid ranking (ranking.py), BM25 statistics that merge across
stores and shards (bm25.py), HyDE query vectors (hyde.py) and the query terms a snippet marks
(snippets.py).

A change to how results are ranked, fused or tie-broken goes in ranking.py; the index backends
themselves live in the top-level ``indexes`` package.
"""
