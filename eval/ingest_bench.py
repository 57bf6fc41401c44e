"""``rag eval ingest``: how close ingestion runs to the raw encoder, and how fast search answers.

1. Throughput: ingest a few thousand real passages (Python documentation pages) into a fresh store
   with the chosen encoder back end (default: the default one), timing the whole run (parse, chunk,
   encode, SQLite, FTS, index), and encode exactly the same encoder inputs with a bare PyTorch
   ``SentenceTransformer.encode`` call, alternating the two over four rounds so drifting machine load
   hits both. With the torch back end the ratio is the ingest's overhead (target >= 90%); with the
   default one it is the speed-up over what peers run (target >= 2x).
2. Query encoding: every encoder back end encodes each query alone; p50/p95 per back end.
3. Latency: on a store of 10k+ passages (the whole Python documentation, ingested once and cached
   under <data>/bench/), run each query once per mode and report p50/p95 per mode.
"""
from __future__ import annotations

import json
import tempfile
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path

import numpy as np

from rag.errors import RagError

PYTHON_DOCS = Path("/usr/share/doc/python3/html")

# Questions a Python user might type; answered somewhere in the documentation.
QUERIES = [
    "how to read a csv file", "sort a list of dictionaries by key", "parse command line arguments",
    "serialize an object to json", "run a subprocess and capture its output", "read environment variables",
    "create a temporary directory", "format a date as a string", "regular expression named groups",
    "thread pool executor map", "asyncio gather tasks concurrently", "open a file with a specific encoding",
    "walk a directory tree recursively", "compute a sha256 hash of a file", "dataclass default factory",
    "lru cache decorator", "context manager with statement", "difference between list and tuple",
    "http request with urllib", "send an email with smtplib", "copy a file and its metadata",
    "random sample without replacement", "decimal fixed point arithmetic", "logging to a file with rotation",
    "unit test assert raises", "mock a function in tests", "type hints for a callable",
    "enumerate with a start index", "zip two lists together", "f-string formatting of floats",
    "pickle security warning", "sqlite3 parameterized queries", "socket server listening on a port",
    "generator expression vs list comprehension", "itertools groupby consecutive keys",
    "heap queue priority", "binary search in a sorted list", "named tuple fields", "abstract base class",
    "property setter", "metaclass definition", "global interpreter lock", "virtual environment creation",
    "install packages with pip", "exception chaining raise from", "string methods split and join",
    "bytes to string decode", "path joining with pathlib", "time a small snippet of code", "zip file extraction",
]


@dataclass
class IngestBench:
    pages: int
    passages: int
    ingest_seconds: float
    ingest_passages_per_s: float
    encode_seconds_in_ingest: float
    raw_seconds: float
    raw_passages_per_s: float
    ratio: float  # ingest passages/s / raw passages/s
    latency_store_passages: int
    latency_backend: str
    latency: dict[str, dict[str, float]] = field(default_factory=dict)  # mode -> p50_ms, p95_ms, mean_ms
    queries: int = 0
    encoder_backend: str = "torch"  # the ingest's; the raw side is always PyTorch sentence-transformers
    query_encode: dict[str, dict[str, float]] = field(default_factory=dict)  # encoder back end -> p50_ms, p95_ms
    notes: list[str] = field(default_factory=list)

    def to_json(self) -> dict:
        return asdict(self)


def sample_pages(count: int, docs: Path = PYTHON_DOCS) -> list[Path]:
    """``count`` library reference pages spread evenly over the alphabet (deterministic)."""
    pages = sorted(p for p in (docs / "library").glob("*.html") if p.stat().st_size > 4000)
    if not pages:
        raise RagError(f"no Python documentation pages under {docs / 'library'}: install Debian's python3-doc")
    step = max(1, len(pages) // count)
    return pages[::step][:count]


def encoder_inputs(library, paths: set[str] | None = None) -> list[str]:
    """Exactly what ingestion gave the encoder, rebuilt from the store (title prefix + passage)."""
    from rag.ingest.pipeline import encoder_input, text_window, title_prefix

    encoder = library.encoder
    window = text_window(encoder)
    inputs = []
    for doc in library.documents():
        if paths is not None and doc.path not in paths:
            continue
        prefix, _ = title_prefix(encoder.tokenizer, doc.title, window, window)
        inputs += [encoder_input(prefix, p.text) for p in library.passages_of(doc.id)]
    return inputs


def measure_throughput(encoder, pages: list[Path], backend: str, rounds: int = 4, raw=None) -> dict:
    """Whole ingest (with ``encoder``) vs raw PyTorch SentenceTransformer.encode (``raw``, a torch
    encoder; default ``encoder`` itself) on the same inputs, alternating round by round.

    The pages go in ``rounds`` groups; each group is ingested, then its encoder inputs are encoded
    raw, so a change in machine load during the run hits both sides alike.
    """
    raw = raw or encoder
    from rag.ingest.pipeline import ingest_paths
    from rag.library import open_library

    totals = {"passages": 0, "ingest_seconds": 0.0, "encode_seconds_in_ingest": 0.0, "raw_seconds": 0.0}
    groups = [pages[i::rounds] for i in range(rounds) if pages[i::rounds]]
    with tempfile.TemporaryDirectory(prefix="rag-ingest-bench-") as tmp:
        library = open_library(tmp, backend=backend, encoder=encoder)
        for group in groups:
            report = ingest_paths(library, [str(p) for p in group], progress=True)
            if report.failed:
                raise RagError(f"benchmark pages failed to ingest: {report.failures[:3]}")
            inputs = encoder_inputs(library, {str(p) for p in group})
            started = time.perf_counter()
            raw.model.encode(inputs, batch_size=raw.batch_size, convert_to_numpy=True,
                             normalize_embeddings=True, show_progress_bar=True)
            totals["raw_seconds"] += time.perf_counter() - started
            totals["passages"] += report.passages
            totals["ingest_seconds"] += report.seconds
            totals["encode_seconds_in_ingest"] += report.encode_seconds
        library.close()
    return totals


def latency_store(data_dir: Path, encoder, backend: str, passages: int = 12_000):
    """A store of ``passages`` real passages for the latency run, built once and cached under <data>/bench/.

    The texts and vectors are the ANN benchmark's Python-documentation passages (eval.corpora, cached
    under <data>/ann/), so no second encoding pass is needed; they are grouped ten to a document and
    written through the store like any ingest (documents, passages, embeddings, FTS5), then indexed.
    """
    import hashlib

    from eval.corpora import encoded_passages, real_passages
    from rag.library import open_library
    from rag.store.database import NewDocument

    from rag.models.encoders import store_suffix

    # float32 back ends share the torch vectors (and the store) of earlier runs; int8 has its own per export
    suffix = store_suffix(encoder.backend)
    directory = data_dir / "bench" / f"latency-{passages}{suffix}"
    marker = directory / "complete.json"
    library = open_library(directory, backend=backend, encoder=encoder)
    if not marker.exists():
        texts = real_passages(passages)
        vectors_dir = data_dir / f"ann{suffix}"
        vectors = np.asarray(encoded_passages(len(texts), vectors_dir, encoder=encoder), dtype=np.float32)
        for start in range(0, len(texts), 10):
            group = texts[start:start + 10]
            spans, pos = [], 0
            for text in group:
                spans.append((pos, pos + len(text)))
                pos += len(text) + 2
            body = "\n\n".join(group)
            key = f"python-docs-passages:{start}"
            doc = NewDocument(path=key, title=" ".join(group[0].split()[:8]), text=body,
                              content_hash=hashlib.sha256(body.encode()).hexdigest(), spans=spans,
                              vectors=vectors[start:start + len(group)], collection="bench")
            library.write_source(key, doc.content_hash, [doc])
        library.rebuild_index(backend)
        marker.write_text(json.dumps({"passages": len(texts)}))
    elif library.backend != backend:
        library.rebuild_index(backend)
    return library


def open_search_data(path: Path, encoder, backend: str | None):
    """An existing data directory (e.g. the Python docs ingested with `rag ingest`) for the latency run;
    searched with the encoder back end its store records, as `rag serve` would."""
    from rag.library import open_library

    library = open_library(path, encoder=encoder if encoder.backend == _recorded_backend(path) else None)
    if backend and library.backend != backend:
        library.rebuild_index(backend)
    return library


def _recorded_backend(path: Path) -> str | None:
    from rag.library import open_library

    library = open_library(path)
    try:
        return library.encoder_backend
    finally:
        library.close()


def measure_query_encoding(encoders: dict, queries: list[str], rounds: int = 3) -> dict[str, dict[str, float]]:
    """Per encoder back end: each query encoded alone (one thread, as a search does), ``rounds`` times
    in alternation across the back ends; p50/p95 ms over every call."""
    times: dict[str, list[float]] = {name: [] for name in encoders}
    for encoder in encoders.values():
        encoder.encode([queries[0]])  # warm-up: first-call allocations
    for _ in range(rounds):
        for name, encoder in encoders.items():
            for query in queries:
                started = time.perf_counter()
                encoder.encode([query])
                times[name].append((time.perf_counter() - started) * 1000)
    return {name: {"p50_ms": float(np.percentile(t, 50)), "p95_ms": float(np.percentile(t, 95))}
            for name, t in times.items()}


def measure_latency(library, queries: list[str], k: int = 10) -> dict[str, dict[str, float]]:
    """Per mode: each query once after a warm-up, wall time of rag.search.ranking.search (query encoding included)."""
    from rag.search.ranking import MODES, search

    for mode in MODES:  # warm caches, load the index
        search(library, queries[0], k=k, mode=mode)
    out = {}
    for mode in MODES:
        times = []
        for query in queries:
            started = time.perf_counter()
            search(library, query, k=k, mode=mode)
            times.append((time.perf_counter() - started) * 1000)
        out[mode] = {"p50_ms": float(np.percentile(times, 50)), "p95_ms": float(np.percentile(times, 95)),
                     "mean_ms": float(np.mean(times))}
    return out


def run(data_dir: Path, pages: int = 150, backend: str = "hnsw", queries: int = len(QUERIES),
        skip_latency: bool = False, skip_throughput: bool = False, search_data: Path | None = None,
        latency_passages: int = 12_000, encoder_backend: str | None = None) -> IngestBench:
    from rag.models.encoders import DEFAULT_ENCODER_BACKEND, ENCODER_BACKENDS, load_encoder
    from rag.models.generators import model_cache_dir

    cache = model_cache_dir(data_dir)
    encoders = {name: load_encoder(backend=name, cache_dir=cache) for name in ENCODER_BACKENDS}
    encoder = encoders[encoder_backend or DEFAULT_ENCODER_BACKEND]
    bench = IngestBench(pages=0, passages=0, ingest_seconds=0.0, ingest_passages_per_s=0.0,
                        encode_seconds_in_ingest=0.0, raw_seconds=0.0, raw_passages_per_s=0.0, ratio=0.0,
                        latency_store_passages=0, latency_backend=backend, encoder_backend=encoder.backend)
    if not skip_throughput:
        chosen = sample_pages(pages)
        through = measure_throughput(encoder, chosen, backend, raw=encoders["torch"])
        bench.pages, bench.passages = len(chosen), through["passages"]
        bench.ingest_seconds, bench.raw_seconds = through["ingest_seconds"], through["raw_seconds"]
        bench.encode_seconds_in_ingest = through["encode_seconds_in_ingest"]
        bench.ingest_passages_per_s = through["passages"] / through["ingest_seconds"]
        bench.raw_passages_per_s = through["passages"] / through["raw_seconds"]
        bench.ratio = bench.ingest_passages_per_s / bench.raw_passages_per_s
        batching = (f"batch {encoder.batch_size}" if encoder.backend == "torch"
                    else f"each text alone, {encoder.threads} worker threads")
        bench.notes += [f"{len(chosen)} pages of {PYTHON_DOCS / 'library'}; encoder {encoder.name} "
                        f"({encoder.backend} back end), {batching}",
                        "ingest: parse + chunk + encode + SQLite/FTS5 + index, model already loaded; "
                        "raw: PyTorch SentenceTransformer.encode (float32) on the same encoder inputs; "
                        "4 alternating rounds (ingest a quarter of the pages, then encode its inputs raw)"]
    if queries:
        bench.query_encode = measure_query_encoding(encoders, QUERIES[:queries])
        bench.notes.append("query encoding: each query alone, 3 rounds alternating the back ends")
    if not skip_latency:
        library = (open_search_data(search_data, encoder, backend) if search_data
                   else latency_store(data_dir, encoder, backend, latency_passages))
        bench.latency_backend = library.backend
        bench.latency_store_passages = library.passage_count()
        bench.latency = measure_latency(library, QUERIES[:queries])
        bench.queries = min(queries, len(QUERIES))
        bench.notes.append(f"latency store: {library.data_dir} ({bench.latency_store_passages} passages, "
                           f"{library.backend}); k=10, one run per query after warm-up, query encoding included")
        library.close()
    return bench


def format_table(bench: IngestBench) -> str:
    target = ">= 90%: the ingest's overhead" if bench.encoder_backend == "torch" else ">= 200%: 2x what peers run"
    lines = [] if not bench.passages else [
        "throughput                      passages   seconds   passages/s",
        f"  rag ingest ({bench.encoder_backend + ', whole)':<19} {bench.passages:>8}  {bench.ingest_seconds:>8.1f}"
        f"   {bench.ingest_passages_per_s:>10.1f}",
        f"  raw torch encode              {bench.passages:>8}  {bench.raw_seconds:>8.1f}   {bench.raw_passages_per_s:>10.1f}",
        f"  ingest / raw: {bench.ratio * 100:.1f}%  (target {target}; encoding took "
        f"{bench.encode_seconds_in_ingest:.1f} s of the ingest)",
    ]
    if bench.query_encode:
        lines += ["", "encoding one query   p50 ms    p95 ms"]
        for name, row in bench.query_encode.items():
            lines.append(f"  {name:<16} {row['p50_ms']:>8.2f}  {row['p95_ms']:>8.2f}")
    if bench.latency:
        lines += ["", f"search latency at {bench.latency_store_passages} passages ({bench.latency_backend}, "
                      f"{bench.queries} queries, k=10)",
                  "  mode        p50 ms    p95 ms   mean ms"]
        for mode, row in bench.latency.items():
            lines.append(f"  {mode:<9} {row['p50_ms']:>8.1f}  {row['p95_ms']:>8.1f}  {row['mean_ms']:>8.1f}")
    lines += [""] + [f"note: {n}" for n in bench.notes]
    return "\n".join(lines)


def plot(bench: IngestBench, path: Path) -> Path:
    """Two panels: passages/s (ingest vs raw) and latency p50/p95 per mode."""
    from eval.plots import plt, save_figure  # Agg: files only

    panels = (["throughput"] if bench.passages else []) + (["latency"] if bench.latency else [])
    if not panels:
        raise RagError("nothing to plot: both runs were skipped")
    fig, axes = plt.subplots(1, len(panels), figsize=(4.5 * len(panels), 3.6), squeeze=False)
    for ax, panel in zip(axes[0], panels):
        if panel == "throughput":
            bars = ax.bar(["rag ingest", "raw encode"], [bench.ingest_passages_per_s, bench.raw_passages_per_s],
                          color=["tab:blue", "tab:gray"])
            ax.bar_label(bars, fmt="%.1f")
            ax.set_ylabel("passages / s")
            ax.set_title(f"{bench.passages} passages: {bench.ratio * 100:.0f}% of raw")
        else:
            modes = list(bench.latency)
            xs = np.arange(len(modes))
            for offset, key in ((-0.2, "p50_ms"), (0.2, "p95_ms")):
                b = ax.bar(xs + offset, [bench.latency[m][key] for m in modes], 0.4, label=key[:3])
                ax.bar_label(b, fmt="%.0f", fontsize=8)
            ax.set_xticks(xs, modes)
            ax.set_ylabel("ms")
            ax.set_title(f"search latency, {bench.latency_store_passages} passages")
            ax.legend()
    return save_figure(fig, path)
