"""Retrieval quality on a BEIR-format dataset: ingest once (cached), then score each backend x mode.

The corpus goes through the normal ingestion path into its own store, <data>/eval/<name>-<hash>/,
named by a hash of corpus.jsonl and the encoder, so a second run reuses it. Each vector backend is
built from the stored embeddings (and cached next to the store). Retrieval is the product's: the
same index search, the same FTS5 BM25 query (rag.search.ranking.keyword_ranking) and the same fusion
(rag.search.ranking.fuse, as rag.search.ranking.search does in hybrid mode), run in batches for speed.

A document split into several passages is scored by its best passage (max-pooling), so PASSAGE_DEPTH
passages are retrieved per query to leave at least the 100 distinct documents Recall@100 needs.
"""
from __future__ import annotations

import json
import shutil
import sys
import time
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from eval.beir import BeirDataset, corpus_fingerprint, load_beir
from eval.metrics import METRICS, RECALL_CUTOFFS, per_query
from rag.errors import RagError
from rag.records import SourceDocument

PASSAGE_DEPTH = 1000
COLLECTION = "beir"
MARKER = "eval.json"  # written once the corpus is fully ingested


@dataclass
class EvalStore:
    """The dataset's own store, and where each of its passages came from."""

    library: object
    directory: Path
    reused: bool
    seconds: float  # spent ingesting (or opening the cached store)
    passage_docs: dict[int, list[str]]  # passage id -> BEIR ids of its document and of exact duplicates
    multi_passage_documents: int
    failures: list[str] = field(default_factory=list)  # documents ingestion refused (never retrievable)
    documents_per_s: float | None = None  # ingestion rate, from this run or the one that built the store


@dataclass
class ResultRow:
    backend: str | None  # None for keyword: it uses no vector index
    mode: str
    hyde: bool
    metrics: dict[str, float]
    qps: float
    recall_curve: dict[int, float] = field(default_factory=dict)
    encoder_backend: str | None = None  # None for keyword: it uses no encoder

    def to_json(self) -> dict:
        return {"backend": self.backend, "encoder_backend": self.encoder_backend, "mode": self.mode, "hyde": self.hyde,
                **{name: round(self.metrics[name], 4) for name in METRICS},
                "qps": round(self.qps, 2 if self.qps >= 1 else 4)}


@dataclass
class RetrievalReport:
    dataset: BeirDataset
    queries: int  # evaluated (after --limit)
    rows: list[ResultRow]
    notes: list[str]
    store: EvalStore
    plots: list[Path] = field(default_factory=list)
    hyde_seconds_per_query: float | None = None
    ingest_rates: dict[str, float | None] = field(default_factory=dict)  # encoder back end -> documents/s


    def to_json(self) -> dict:
        """The shape other tools read: exactly {"dataset": {...}, "results": [...]}."""
        return {"dataset": {"path": str(self.dataset.path), "documents": len(self.dataset.corpus),
                            "queries": self.queries},
                "results": [row.to_json() for row in self.rows],
                "ingest_documents_per_s": {k: (round(v, 2) if v else None) for k, v in self.ingest_rates.items()}}


# --- the cached store -------------------------------------------------------------------------------


def _source_documents(dataset: BeirDataset):
    """BEIR records as ingestion input: the title is prefixed to every passage by ingestion itself,
    so the first passage reads title + text exactly as BEIR and MTEB encode a document."""
    for doc in dataset.corpus.values():
        yield SourceDocument(uri=f"beir:{doc.id}", title=doc.title, text=doc.text or doc.title,
                             metadata={"beir_id": doc.id})


def _passage_documents(library) -> tuple[dict[int, list[str]], int]:
    """passage id -> BEIR ids (its document and any exact duplicates stored as aliases of it),
    and how many documents have more than one passage."""
    passages = library.passages(library.passage_ids())
    counts: dict[int, int] = {}
    for p in passages.values():
        counts[p.document_id] = counts.get(p.document_id, 0) + 1
    owners: dict[int, list[str]] = {}
    for doc in library.documents(COLLECTION):
        owner = doc.id if doc.id in counts else (library.duplicate_of(doc.id) or doc.id)
        owners.setdefault(owner, []).append(str(doc.metadata.get("beir_id", doc.path)))
    mapping = {pid: owners.get(p.document_id, []) for pid, p in passages.items()}
    return mapping, sum(1 for n in counts.values() if n > 1)


def open_eval_store(dataset: BeirDataset, data: str | Path | None, progress: bool = True,
                    model: str | None = None, encoder_backend: str | None = None) -> EvalStore:
    """The dataset's store under <data>/eval/, one per encoder back end, ingested on first use and reused after."""
    from rag.config import data_dir
    from rag.ingest.pipeline import ingest_documents
    from rag.library import open_library
    from rag.models.encoders import DEFAULT_ENCODER_BACKEND, load_encoder, vectors_tag
    from rag.models.generators import model_cache_dir

    started = time.perf_counter()
    encoder = load_encoder(model, encoder_backend or DEFAULT_ENCODER_BACKEND, cache_dir=model_cache_dir(data))
    extra = f"{encoder.name}:{getattr(encoder, 'path', '')}"
    if encoder.backend != "torch":  # torch stores keep the key they had before back ends existed
        extra += f":{vectors_tag(encoder.backend)}"
    key = corpus_fingerprint(dataset.path, extra=extra)
    directory = data_dir(data) / "eval" / f"{dataset.name}-{key}"
    marker = directory / MARKER
    state = _read_json(marker)
    library = open_library(directory, model=model, backend="flat", encoder=encoder)
    reused = bool(state) and state.get("documents") == len(dataset.corpus) \
        and state.get("stored", state.get("documents")) == library.stats()["documents"]
    failures: list[str] = []
    if not reused:
        marker.unlink(missing_ok=True)
        shutil.rmtree(directory / "indexes", ignore_errors=True)
        if progress:
            print(f"Ingesting {len(dataset.corpus):,} documents into {directory} (once; later runs reuse it)",
                  file=sys.stderr)
        report = ingest_documents(library, _source_documents(dataset), collection=COLLECTION, progress=progress)
        failures = [f"{path}: {why}" for path, why in report.failures]
        stored = library.stats()["documents"]
        if stored == 0:
            raise RagError(f"{dataset.path / 'corpus.jsonl'}: no document could be ingested ({'; '.join(failures[:3])})")
        _write_json(marker, {"documents": len(dataset.corpus), "stored": stored, "failures": failures,
                             "passages": library.passage_count(), "ingest_seconds": round(report.seconds, 1),
                             "encoder": encoder.name, "encoder_backend": encoder.backend})
    else:
        failures = list(state.get("failures", []))
    mapping, multi = _passage_documents(library)
    ingest_seconds = report.seconds if not reused else (state or {}).get("ingest_seconds")
    return EvalStore(library, directory, reused, time.perf_counter() - started, mapping, multi, failures,
                     len(dataset.corpus) / ingest_seconds if ingest_seconds else None)


def _read_json(path: Path) -> dict | None:
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def _write_json(path: Path, value) -> None:
    tmp = path.with_suffix(".tmp")
    tmp.write_text(json.dumps(value, indent=2), encoding="utf-8")
    tmp.replace(path)


QUANTIZED = ("pq", "ivfpq", "sq")


def backend_index(store: EvalStore, backend: str):
    """The backend's index over every stored embedding: loaded from its cache or built (and cached)."""
    from indexes import load_index
    library = store.library
    directory = store.directory / "indexes" / backend
    passages = library.passage_count()
    # Quantizing backends keep vectors exact until train_size have arrived (10,000 by default): train
    # them on the whole collection instead, so a small corpus measures real quantization, not exact search.
    params = {"train_size": passages} if backend in QUANTIZED else {}
    state = {"backend": backend, "params": params, "passages": passages,
             "generation": library.generation()}
    if _read_json(directory / "eval-state.json") == state:
        try:
            index = load_index(directory)
            if index.name == backend and len(index) == state["passages"]:
                return index
        except ValueError:
            pass
    index = library.build_index(backend, **params)
    shutil.rmtree(directory, ignore_errors=True)
    index.save(str(directory))
    _write_json(directory / "eval-state.json", state)
    return index


# --- scoring ----------------------------------------------------------------------------------------


def pool_documents(ranked: list[tuple[int, float]], passage_docs: dict[int, list[str]]) -> dict[str, float]:
    """Max-pooling: each document scores as its best passage; ranked is (passage id, score) best first."""
    scores: dict[str, float] = {}
    for pid, score in ranked:
        for doc in passage_docs.get(pid, ()):
            if score > scores.get(doc, -np.inf):
                scores[doc] = score
    return scores


def dense_rankings(index, vectors: np.ndarray, depth: int = PASSAGE_DEPTH) -> list[list[tuple[int, float]]]:
    """(passage id, similarity) best first for each query vector (nq, dim): the index search the product runs."""
    if len(vectors) == 0 or len(index) == 0:
        return [[] for _ in range(len(vectors))]
    ids, scores = index.search(np.ascontiguousarray(vectors, dtype=np.float32), min(depth, len(index)))
    return [[(int(i), float(s)) for i, s in zip(row_ids, row_scores) if i >= 0]
            for row_ids, row_scores in zip(ids, scores)]


def _bar(items, desc: str, progress: bool, unit: str = "query"):
    if not progress:
        return items
    from tqdm import tqdm

    return tqdm(items, desc=desc, unit=unit, file=sys.stderr, dynamic_ncols=True, leave=False)


def _score(dataset: BeirDataset, query_ids: list[str], rankings: list[list[tuple[int, float]]],
           passage_docs: dict[int, list[str]]) -> tuple[dict[str, float], dict[int, float]]:
    run = {q: pool_documents(r, passage_docs) for q, r in zip(query_ids, rankings)}
    qrels = {q: dataset.qrels[q] for q in query_ids}
    rows = per_query(qrels, run, RECALL_CUTOFFS)
    means = {name: sum(r[name] for r in rows.values()) / len(rows) for name in next(iter(rows.values()))}
    return {name: means[name] for name in METRICS}, {k: means[f"recall@{k}"] for k in RECALL_CUTOFFS}


def hyde_vectors(store: EvalStore, dataset: BeirDataset, query_ids: list[str], data, progress: bool,
                 generator_name: str = "local") -> tuple[np.ndarray, float, str]:
    """HyDE query vectors (nq, dim), the generation seconds per query, and the generator's name.

    Cached per query in the eval store (hyde-<generator>.json) with the seconds each one took, so a
    re-run costs nothing and still reports what HyDE costs.
    """
    from rag.models.generators import load_generator
    from rag.search.hyde import hyde_vector

    generator = None
    cache_path = store.directory / f"hyde-{generator_name}.json"
    cache = _read_json(cache_path) or {}
    vectors, seconds = [], []
    for q in _bar(query_ids, "HyDE", progress):
        entry = cache.get(q)
        if entry is None or entry.get("question") != dataset.queries[q]:
            if generator is None:
                generator = load_generator(generator_name, data_dir=data)
            started = time.perf_counter()
            vector, passages = hyde_vector(dataset.queries[q], store.library.encoder, generator)
            entry = {"question": dataset.queries[q], "vector": vector.tolist(), "passages": passages,
                     "seconds": time.perf_counter() - started}
            cache[q] = entry
            _write_json(cache_path, cache)
        vectors.append(entry["vector"])
        seconds.append(entry["seconds"])
    name = getattr(generator, "name", None) or generator_name
    return np.asarray(vectors, dtype=np.float32), float(np.mean(seconds)), name


def evaluate_retrieval(dataset_dir: str | Path, data=None, backends: list[str] | None = None,
                       modes: list[str] | None = None, hyde: bool = False, limit: int | None = None,
                       split: str = "test", progress: bool = True, plots: bool = True,
                       encoder_backends: list[str] | None = None) -> RetrievalReport:
    """Every requested encoder back end x backend x mode (x HyDE off/on): nDCG@10, Recall@10/100,
    MRR@10, MAP@100, queries/s; each encoder back end has its own cached store."""
    from indexes import available_backends
    from rag.models.encoders import DEFAULT_ENCODER_BACKEND, ENCODER_BACKENDS
    from rag.search.ranking import MODES

    modes = list(modes or MODES)
    unknown = [m for m in modes if m not in MODES]
    if unknown:
        raise RagError(f"unknown mode(s) {', '.join(unknown)}; choose from {', '.join(MODES)}")
    backends = list(backends or available_backends())
    unknown = [b for b in backends if b not in available_backends()]
    if unknown:
        raise RagError(f"unknown backend(s) {', '.join(unknown)}; available: {', '.join(available_backends())}")
    encoder_backends = list(encoder_backends or [DEFAULT_ENCODER_BACKEND])
    unknown = [b for b in encoder_backends if b not in ENCODER_BACKENDS]
    if unknown:
        raise RagError(f"unknown encoder back end(s) {', '.join(unknown)}; available: {', '.join(ENCODER_BACKENDS)}")

    dataset = load_beir(dataset_dir, split)
    notes = list(dataset.warnings)
    query_ids = list(dataset.queries)[: limit or None]
    rows: list[ResultRow] = []
    rates: dict[str, float | None] = {}
    hyde_cost = store = None
    for i, encoder_backend in enumerate(encoder_backends):
        store = open_eval_store(dataset, data, progress, encoder_backend=encoder_backend)
        rates[encoder_backend] = store.documents_per_s
        modes_here = modes if i == 0 else [m for m in modes if m != "keyword"]  # keyword uses no encoder
        more_rows, more_notes, hyde_cost = _evaluate_store(store, dataset, query_ids, backends, modes_here, hyde,
                                                           data, progress)
        rows += more_rows
        notes += [f"[{encoder_backend}] {n}" if len(encoder_backends) > 1 else n for n in more_notes]
    if "hybrid" in modes:
        from rag.search.ranking import RRF_K

        notes.append(f"hybrid: reciprocal rank fusion (rag.search.ranking.fuse, k={RRF_K}) of the dense and keyword "
                     f"rankings, {PASSAGE_DEPTH} passages deep each")
    notes.append("ingest documents/s per encoder back end: " + ", ".join(
        f"{k} {v:.1f}" if v else f"{k} unknown" for k, v in rates.items())
        + " (whole ingest of the corpus, from the run that built each store; valid only on an idle machine)")
    report = RetrievalReport(dataset, len(query_ids), rows, notes, store, hyde_seconds_per_query=hyde_cost,
                             ingest_rates=rates)
    if plots and rows:
        from rag.config import data_dir

        report.plots = write_plots(report, data_dir(data))
    return report


def _evaluate_store(store: EvalStore, dataset: BeirDataset, query_ids: list[str], backends: list[str],
                    modes: list[str], hyde: bool, data, progress: bool):
    """The rows of one encoder back end's store: (rows, notes, HyDE seconds per query or None)."""
    from rag.search.ranking import fuse, keyword_ranking

    library = store.library
    encoder_backend = library.encoder_backend
    texts = [dataset.queries[q] for q in query_ids]
    notes = [f"store: {store.directory} ({'reused' if store.reused else 'ingested'} in {store.seconds:.1f} s; "
             f"{len(store.passage_docs):,} passages for {len(dataset.corpus):,} documents; "
             f"encoder back end {encoder_backend})"]
    if store.failures:
        notes.append(f"{len(store.failures)} document(s) could not be ingested and count as never retrieved: "
                     + "; ".join(store.failures[:3]) + (" ..." if len(store.failures) > 3 else ""))
    notes.append(f"documents split into several passages ({store.multi_passage_documents:,} here) are scored by "
                 f"their best passage (max-pooling); {PASSAGE_DEPTH} passages are retrieved per query")

    rows: list[ResultRow] = []
    keyword: list[list[tuple[int, float]]] = []
    keyword_seconds = 0.0
    if "keyword" in modes or "hybrid" in modes:
        started = time.perf_counter()
        keyword = [keyword_ranking(library, text, PASSAGE_DEPTH) for text in _bar(texts, "keyword", progress)]
        keyword_seconds = time.perf_counter() - started
    if "keyword" in modes:
        metrics, curve = _score(dataset, query_ids, keyword, store.passage_docs)
        rows.append(ResultRow(None, "keyword", False, metrics, len(texts) / max(keyword_seconds, 1e-9), curve))

    vector_modes = [m for m in modes if m != "keyword"]
    variants: list[tuple[bool, np.ndarray, float]] = []
    hyde_cost = None
    if vector_modes:
        library.encoder.encode(["warm-up"])  # the first call pays one-off setup; keep it out of queries/s
        started = time.perf_counter()
        variants.append((False, library.encoder.encode(texts), time.perf_counter() - started))
        if hyde:
            vectors, hyde_cost, generator = hyde_vectors(store, dataset, query_ids, data, progress)
            variants.append((True, vectors, hyde_cost * len(texts)))
            notes.append(f"HyDE: generator {generator}, {hyde_cost:.2f} s per query to write the hypothetical "
                         f"passages and encode them (included in the HyDE rows' queries/s)")

    for backend in _bar(backends if vector_modes else [], "backends", progress, unit="backend"):
        index = backend_index(store, backend)
        for with_hyde, vectors, encode_seconds in variants:
            started = time.perf_counter()
            dense = [library.with_repeats(ranked, PASSAGE_DEPTH) for ranked in dense_rankings(index, vectors)]
            dense_seconds = time.perf_counter() - started + encode_seconds
            if "dense" in vector_modes:
                metrics, curve = _score(dataset, query_ids, dense, store.passage_docs)
                rows.append(ResultRow(backend, "dense", with_hyde, metrics, len(texts) / max(dense_seconds, 1e-9),
                                      curve, encoder_backend))
            if "hybrid" in vector_modes:
                started = time.perf_counter()
                fused = [fuse([[i for i, _ in k], [i for i, _ in d]]) for d, k in zip(dense, keyword)]
                seconds = dense_seconds + keyword_seconds + time.perf_counter() - started
                metrics, curve = _score(dataset, query_ids, fused, store.passage_docs)
                rows.append(ResultRow(backend, "hybrid", with_hyde, metrics, len(texts) / max(seconds, 1e-9), curve,
                                      encoder_backend))
    return rows, notes, hyde_cost


def write_plots(report: RetrievalReport, data_dir: Path) -> list[Path]:
    """nDCG@10 bars and Recall@k curves as PNG files under <data>/eval/plots/."""
    from eval.plots import plot_ndcg, plot_recall_curves, row_label

    rows = [r.to_json() for r in report.rows]
    if len(report.ingest_rates) > 1:  # several encoder back ends: one bar group per (backend, encoder back end)
        rows = [{**r, "backend": f"{r['backend']} {r['encoder_backend']}"} if r["backend"] else r for r in rows]
    stem = f"{report.dataset.name}-{report.dataset.split}"
    out = data_dir / "eval" / "plots"
    curves = {row_label(row): r.recall_curve for row, r in zip(rows, report.rows)}
    return [
        plot_ndcg(rows, out / f"{stem}-ndcg.png", f"nDCG@10 on {report.dataset.name} ({report.queries} queries)"),
        plot_recall_curves(rows, curves, out / f"{stem}-recall.png", f"Recall@k on {report.dataset.name}"),
    ]


def format_table(report: RetrievalReport) -> str:
    """The table for people, with each backend's nDCG@10 change against flat in the same mode."""
    flat = {(r.encoder_backend, r.mode, r.hyde): r.metrics["ndcg@10"] for r in report.rows if r.backend == "flat"}
    header = ["backend", "encoder", "mode", "hyde", "nDCG@10", "R@10", "R@100", "MRR@10", "MAP@100", "q/s", "vs flat"]
    lines = []
    for r in report.rows:
        base = flat.get((r.encoder_backend, r.mode, r.hyde))
        delta = "" if r.backend in (None, "flat") or base is None else f"{r.metrics['ndcg@10'] - base:+.4f}"
        lines.append([r.backend or "-", r.encoder_backend or "-", r.mode, "yes" if r.hyde else "no",
                      *(f"{r.metrics[m]:.4f}" for m in METRICS), f"{r.qps:,.1f}" if r.qps >= 1 else f"{r.qps:.4f}", delta])
    widths = [max(len(header[i]), *(len(line[i]) for line in lines)) for i in range(len(header))]
    fmt = lambda cells: "  ".join(c.ljust(w) if i < 4 else c.rjust(w) for i, (c, w) in enumerate(zip(cells, widths)))  # noqa: E731
    title = (f"{report.dataset.name} ({report.dataset.split}): {len(report.dataset.corpus):,} documents, "
             f"{report.queries} queries")
    return "\n".join([title, "", fmt(header), fmt(["-" * w for w in widths]), *map(fmt, lines), "",
                      *(f"* {n}" for n in report.notes),
                      *(f"* plot: {p}" for p in report.plots)])
