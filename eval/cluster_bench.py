"""`rag eval cluster`: a library sharded over Ray against one store, on the same data.

Two measurements:
- ingest throughput (passages/s) of the local single-process ingest and of the cluster ingest with
  1, 2, ... encoder actors, on the same BEIR documents, each into a fresh directory;
- retrieval quality and latency: the dataset's queries against one store and against an N-shard
  cluster library holding the same documents, through the same ``rag.search.ranking.search`` the CLI and
  the web use: nDCG@10 per mode (dense must match exactly, keyword and hybrid within 0.005), the
  share of queries whose top 10 passages are the same, and search p50/p95 per query.
Figures are only meaningful on an otherwise idle machine.
"""
from __future__ import annotations

import json
import random
import shutil
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from eval.beir import BeirDataset, BeirDocument, corpus_fingerprint, load_beir
from rag.errors import RagError
from rag.records import SourceDocument

COLLECTION = "beir"
DEPTH = 100  # passages retrieved per query (document scores are their best passage's)
MODES = ("dense", "keyword", "hybrid")


@dataclass
class IngestRow:
    setup: str  # "local" or "cluster, N encoder actors"
    encoders: int | None
    documents: int
    passages: int
    seconds: float

    @property
    def passages_per_s(self) -> float:
        return self.passages / self.seconds if self.seconds > 0 else 0.0

    def to_json(self) -> dict:
        return {"setup": self.setup, "encoders": self.encoders, "documents": self.documents,
                "passages": self.passages, "seconds": round(self.seconds, 3),
                "passages_per_s": round(self.passages_per_s, 2)}


@dataclass
class QualityRow:
    mode: str
    one_ndcg: float
    cluster_ndcg: float
    same_top10: float  # share of queries whose top 10 passages (document, order) are identical
    one_p50: float
    one_p95: float
    cluster_p50: float
    cluster_p95: float

    def to_json(self) -> dict:
        return {"mode": self.mode, "one_store_ndcg@10": round(self.one_ndcg, 4),
                "cluster_ndcg@10": round(self.cluster_ndcg, 4),
                "delta": round(self.cluster_ndcg - self.one_ndcg, 4), "same_top10": round(self.same_top10, 4),
                "one_store_ms": {"p50": round(self.one_p50 * 1000, 2), "p95": round(self.one_p95 * 1000, 2)},
                "cluster_ms": {"p50": round(self.cluster_p50 * 1000, 2), "p95": round(self.cluster_p95 * 1000, 2)}}


@dataclass
class ClusterReport:
    dataset: str
    documents: int
    queries: int
    shards: int
    ingest: list[IngestRow] = field(default_factory=list)
    quality: list[QualityRow] = field(default_factory=list)
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "documents": self.documents, "queries": self.queries,
                "shards": self.shards, "ingest": [r.to_json() for r in self.ingest],
                "quality": [r.to_json() for r in self.quality], "notes": self.notes}


def subset(dataset: BeirDataset, query_ids: list[str], size: int | None) -> list[BeirDocument]:
    """The whole corpus, or ``size`` documents: every one judged for the queries, then random others (seed 0)."""
    corpus = dataset.corpus
    if not size or size >= len(corpus):
        return list(corpus.values())
    judged = list(dict.fromkeys(d for q in query_ids for d in dataset.qrels.get(q, {}) if d in corpus))
    chosen = set(judged)
    rest = [d for d in corpus if d not in chosen]
    random.Random(0).shuffle(rest)
    return [corpus[d] for d in judged + rest[:max(0, size - len(judged))]]


def records(docs: list[BeirDocument]) -> list[SourceDocument]:
    """As `rag eval retrieval` ingests them (eval.retrieval._source_documents)."""
    return [SourceDocument(uri=f"beir:{d.id}", title=d.title, text=d.text or d.title, metadata={"beir_id": d.id})
            for d in docs]


def measure_ingest(items: list[SourceDocument], root: Path, address: str, encoder, shards: int,
                   encoder_counts: list[int]) -> list[IngestRow]:
    """Local ingest, then the cluster ingest with each encoder count, each into a fresh directory."""
    from rag.cluster.library import open_cluster_library
    from rag.ingest.pipeline import ingest_documents
    from rag.library import open_library

    rows = []
    directory = root / "ingest-local"
    shutil.rmtree(directory, ignore_errors=True)
    with open_library(directory, backend="flat", encoder=encoder) as library:
        report = ingest_documents(library, items, collection=COLLECTION)
    rows.append(IngestRow("local (one process)", None, len(items), report.passages, report.seconds))
    for count in encoder_counts:
        directory = root / f"ingest-cluster-{count}"
        shutil.rmtree(directory, ignore_errors=True)
        with open_cluster_library(directory, address, shards=shards, backend="flat", encoder=encoder) as library:
            report = library.ingest_documents(items, collection=COLLECTION, encoders=count)
        if report.failed:
            raise RagError(f"cluster ingest with {count} encoder actors failed for {report.failed} documents: "
                           + "; ".join(f"{p}: {r}" for p, r in report.failures[:3]))
        rows.append(IngestRow(f"cluster, {count} encoder actor{'s' if count > 1 else ''}", count, len(items),
                              report.passages, report.seconds))
    return rows


def _stores(items: list[SourceDocument], root: Path, address: str, encoder, shards: int):
    """One store over ``items`` (flat index: exact) and a cluster library holding the same passages and
    vectors (ClusterLibrary.import_library: copied, not encoded a second time); built once and reused."""
    from rag.cluster.library import open_cluster_library
    from rag.ingest.pipeline import ingest_documents
    from rag.library import open_library

    marker = root / "built.json"
    want = {"documents": len(items), "shards": shards}
    built = json.loads(marker.read_text()) if marker.exists() else None
    if built != want:
        shutil.rmtree(root / "one", ignore_errors=True)
        shutil.rmtree(root / f"cluster-{shards}", ignore_errors=True)
    one = open_library(root / "one", backend="flat", encoder=encoder)
    cluster = open_cluster_library(root / f"cluster-{shards}", address, shards=shards, backend="flat", encoder=encoder)
    if built != want:
        ingest_documents(one, items, collection=COLLECTION)
        cluster.import_library(one)
        root.mkdir(parents=True, exist_ok=True)
        marker.write_text(json.dumps(want))
    return one, cluster


def _run(library, dataset: BeirDataset, query_ids: list[str], mode: str):
    """{query: {beir id: score}}, {query: top-10 (path, passage order)}, seconds per query."""
    from rag.search.ranking import search

    run, top, seconds = {}, {}, []
    for q in query_ids:
        started = time.perf_counter()
        hits = search(library, dataset.queries[q], k=DEPTH, mode=mode)
        seconds.append(time.perf_counter() - started)
        scores: dict[str, float] = {}
        for hit in hits:
            doc = str(hit.document.metadata.get("beir_id", hit.document.path))
            scores[doc] = max(scores.get(doc, float("-inf")), hit.score)
        run[q] = scores
        top[q] = [(h.document.path, h.passage.order) for h in hits[:10]]
    return run, top, seconds


def _percentile(values: list[float], p: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(round(p / 100 * (len(ordered) - 1))))] if ordered else 0.0


def measure_quality(one, cluster, dataset: BeirDataset, query_ids: list[str], modes: list[str]) -> list[QualityRow]:
    from eval.metrics import evaluate

    qrels = {q: dataset.qrels[q] for q in query_ids}
    one.encoder.encode(["warm-up"])  # the first call pays one-off setup
    cluster.preload()
    rows = []
    for mode in modes:
        one_run, one_top, one_s = _run(one, dataset, query_ids, mode)
        cl_run, cl_top, cl_s = _run(cluster, dataset, query_ids, mode)
        same = sum(one_top[q] == cl_top[q] for q in query_ids) / len(query_ids)
        rows.append(QualityRow(mode, evaluate(qrels, one_run)["ndcg@10"], evaluate(qrels, cl_run)["ndcg@10"], same,
                               statistics.median(one_s), _percentile(one_s, 95), statistics.median(cl_s),
                               _percentile(cl_s, 95)))
    return rows


def run_cluster_bench(dataset_dir: str | Path, data: Path, address: str, shards: int = 4,
                      encoder_counts: list[int] | None = None, limit: int | None = None, documents: int | None = None,
                      ingest_documents: int = 1000, modes: list[str] | None = None, split: str = "test",
                      skip_ingest: bool = False, skip_quality: bool = False) -> ClusterReport:
    """Both measurements (see the module docstring); stores live under <data>/eval/cluster/."""
    from rag.models.encoders import DEFAULT_ENCODER_BACKEND, load_encoder, store_suffix
    from rag.models.generators import model_cache_dir

    modes = list(modes or MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise RagError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    dataset = load_beir(dataset_dir, split)
    query_ids = list(dataset.queries)[: limit or None]
    docs = subset(dataset, query_ids, documents)
    encoder = load_encoder(None, DEFAULT_ENCODER_BACKEND, cache_dir=model_cache_dir(data))
    name = f"{dataset.name}-{corpus_fingerprint(dataset.path)}-{len(docs)}"
    root = data / "eval" / "cluster" / f"{name}{store_suffix(encoder.backend)}"  # float32: earlier runs' stores
    report = ClusterReport(dataset.name, len(docs), len(query_ids), shards)
    if not skip_ingest:
        items = records(docs[:ingest_documents])
        report.ingest = measure_ingest(items, root, address, encoder, shards, list(encoder_counts or [1, 2]))
        report.notes.append("ingest: passages/s over the whole run (reading, chunking, encoding, writing); the "
                            "cluster figures include starting the encoder actors and loading one model in each; "
                            "the local ingest's encoder uses every core, each encoder actor one")
    if not skip_quality:
        one, cluster = _stores(records(docs), root, address, encoder, shards)
        try:
            report.quality = measure_quality(one, cluster, dataset, query_ids, modes)
        finally:
            one.close()
            cluster.close()
        report.notes.append(f"quality: {len(docs):,} documents, {len(query_ids)} queries, flat index (exact), "
                            f"{DEPTH} passages per query through rag.search.ranking.search, a document scored by its best "
                            "passage; the cluster holds the one store's passages and vectors (import_library); "
                            "keyword and hybrid merge shards with global BM25 statistics (rag.search.bm25); passages with exactly "
                            "equal BM25 scores may come in another order than one store's (it breaks ties by "
                            "insertion order), which is all 'same top10' below 100% can show")
    return report


def format_table(report: ClusterReport) -> str:
    lines = [f"{report.dataset}: {report.documents:,} documents, {report.queries} queries, {report.shards} shards", ""]
    if report.ingest:
        lines += [f"{'ingest':<28} {'documents':>9} {'passages':>9} {'seconds':>8} {'passages/s':>10}"]
        for r in report.ingest:
            lines.append(f"{r.setup:<28} {r.documents:>9} {r.passages:>9} {r.seconds:>8.1f} {r.passages_per_s:>10.1f}")
        lines.append("")
    if report.quality:
        lines.append(f"{'mode':<8} {'one store':>9} {'cluster':>9} {'delta':>8} {'same top10':>10} "
                     f"{'one p50/p95 ms':>16} {'cluster p50/p95 ms':>19}")
        for r in report.quality:
            lines.append(f"{r.mode:<8} {r.one_ndcg:>9.4f} {r.cluster_ndcg:>9.4f} {r.cluster_ndcg - r.one_ndcg:>+8.4f} "
                         f"{r.same_top10:>10.1%} {f'{r.one_p50 * 1000:.1f}/{r.one_p95 * 1000:.1f}':>16} "
                         f"{f'{r.cluster_p50 * 1000:.1f}/{r.cluster_p95 * 1000:.1f}':>19}")
        lines.append("")
    lines += [f"* {n}" for n in report.notes]
    return "\n".join(lines)
