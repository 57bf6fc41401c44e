"""``rag eval ...``: benchmarks and evaluations; each prints a table, --json for programs."""
from __future__ import annotations

import click


@click.group("eval")
def eval_group() -> None:
    """Benchmarks and quality evaluations."""


@eval_group.command("load")
@click.option("--url", default=None, help="A running server; default: start `rag serve` over --data.")
@click.option("--clients", default=20, show_default=True, type=click.IntRange(1, 1000), help="Concurrent clients.")
@click.option("--seconds", default=30.0, show_default=True, type=click.FloatRange(1, 3600), help="Test duration.")
@click.option("--mode", default="hybrid", show_default=True, type=click.Choice(["dense", "keyword", "hybrid"]))
@click.option("-k", "k", default=10, show_default=True, type=click.IntRange(1, 100), help="Passages per search.")
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory for the server started when --url is not given (default ./rag-data).")
@click.option("--plot", "plot", default=None, type=click.Path(dir_okay=False),
              help="Also write a PNG of each request's latency over time.")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def load(url, clients, seconds, mode, k, data, plot, as_json) -> None:
    """Concurrent clients searching through the web API: requests/s, p50/p95/p99 latency, errors."""
    import json

    from eval.load import format_report, local_server, run_load
    from rag.errors import RagError

    try:
        if url:
            report = run_load(url, clients=clients, seconds=seconds, k=k, mode=mode)
        else:
            from eval.load import check_has_documents

            check_has_documents(data)
            if not as_json:
                click.echo("Starting `rag serve` on a free loopback port…", err=True)
            with local_server(data) as started:
                report = run_load(started, clients=clients, seconds=seconds, k=k, mode=mode)
            from eval.load import save_report

            saved = save_report(report, data)
            if not as_json:
                click.echo(f"saved: {saved}", err=True)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    if plot:
        from eval.load import plot_latency

        plot_latency(report, plot)
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))
    if plot and not as_json:
        click.echo(f"plot: {plot}")


def _names(value: str | None) -> list[str] | None:
    """A comma-separated option as a list (None when not given)."""
    return [v.strip() for v in value.split(",") if v.strip()] if value else None


@eval_group.command("retrieval")
@click.argument("dataset_dir", type=click.Path(file_okay=False))
@click.option("--backends", default=None, help="Comma-separated vector backends (default: every one).")
@click.option("--modes", default=None, help="Comma-separated modes: dense,keyword,hybrid (default: all).")
@click.option("--hyde", is_flag=True, help="Also run dense and hybrid with HyDE query vectors (default generator).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Evaluate only the first N judged queries.")
@click.option("--split", default="test", show_default=True, help="The qrels file: qrels/SPLIT.tsv.")
@click.option("--encoder-backends", default=None,
              help="Comma-separated encoder back ends (torch, onnx, onnx-int8), each its own cached store "
                   "(default: the default back end).")
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory; the dataset's store is cached under <data>/eval/ (default ./rag-data).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--cluster", default=None, envvar="RAG_RAY_ADDRESS", metavar="ADDRESS",
              help="Measure a cluster library (sharded on Ray: an address, auto or local) against one store holding "
                   "the same documents: nDCG@10 per mode and search latency (as `rag eval cluster` without ingest).")
@click.option("--shards", default=4, show_default=True, type=click.IntRange(1, 4096), help="With --cluster: shards.")
def retrieval(dataset_dir, backends, modes, hyde, limit, split, encoder_backends, data, as_json, cluster,
              shards) -> None:
    """Retrieval quality on a BEIR-format dataset (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).

    nDCG@10, Recall@10, Recall@100, MRR@10, MAP@100 (trec_eval rules) and queries/s for each
    backend x mode; the corpus is ingested once and its store reused by later runs.
    """
    import json

    from eval.retrieval import evaluate_retrieval, format_table
    from rag.errors import RagError

    if cluster:
        for name, value in (("--backends", backends), ("--hyde", hyde), ("--encoder-backends", encoder_backends)):
            if value:
                raise click.BadParameter("not with --cluster (it compares the cluster with one store, flat index, "
                                         "default encoder)", param_hint=name)
        from eval.cluster_bench import format_table as cluster_table
        from eval.cluster_bench import run_cluster_bench
        from rag.config import data_dir

        try:
            report = run_cluster_bench(dataset_dir, data_dir(data), cluster, shards=shards, limit=limit,
                                       modes=_names(modes), split=split, skip_ingest=True)
        except RagError as exc:
            raise click.ClickException(str(exc)) from exc
        click.echo(json.dumps(report.to_json(), indent=2) if as_json else cluster_table(report))
        return
    try:
        report = evaluate_retrieval(dataset_dir, data=data, backends=_names(backends), modes=_names(modes),
                                    hyde=hyde, limit=limit, split=split, encoder_backends=_names(encoder_backends))
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_table(report))


@eval_group.command("ingest")
@click.option("--pages", default=150, show_default=True, type=click.IntRange(1, 600),
              help="Python documentation pages for the throughput run (about 15 passages each).")
@click.option("--index", "backend", default="hnsw", show_default=True, help="Vector index backend.")
@click.option("--queries", default=50, show_default=True, type=click.IntRange(1, 50), help="Queries per mode.")
@click.option("--no-latency", is_flag=True, help="Only the throughput run (skips the 10k-passage store).")
@click.option("--no-throughput", is_flag=True, help="Only the latency run.")
@click.option("--search-data", default=None, type=click.Path(file_okay=False, exists=True),
              help="Measure latency on this existing data directory instead of the cached 12k-passage store.")
@click.option("--plot", "plot_path", default=None, type=click.Path(dir_okay=False), help="Write a PNG plot here.")
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory; the latency store is cached under <data>/bench/ (default ./rag-data).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
@click.option("--encoder-backend", default=None, type=click.Choice(["torch", "onnx", "onnx-int8"]),
              help="Encoder back end of the ingest side (default: the default one); the raw side is PyTorch.")
def ingest_benchmark(pages, backend, queries, no_latency, no_throughput, search_data, plot_path, data,
                     as_json, encoder_backend) -> None:
    """Ingest throughput against the raw encoder, and search latency p50/p95 per mode at 10k+ passages."""
    import json
    from pathlib import Path

    from eval.ingest_bench import format_table, plot, run
    from rag.config import data_dir
    from rag.errors import RagError

    try:
        bench = run(data_dir(data), pages=pages, backend=backend, queries=queries, skip_latency=no_latency,
                    skip_throughput=no_throughput, search_data=Path(search_data) if search_data else None,
                    encoder_backend=encoder_backend)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    if plot_path:
        plot(bench, Path(plot_path))
    click.echo(json.dumps(bench.to_json(), indent=2) if as_json else format_table(bench))


@eval_group.command("headings")
@click.argument("folder", type=click.Path(exists=True))
@click.option("--chunk-tokens", default=None, type=click.IntRange(16), help="Passage size in tokens (default: as ingest).")
@click.option("--overlap", default=None, type=click.IntRange(0), help="Tokens shared by neighbours (default: as ingest).")
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def headings(folder, chunk_tokens, overlap, as_json) -> None:
    """Share of passages that cross a heading (a heading on a line after a passage's first), cut as
    `rag ingest` cuts them; parsing and chunking only, nothing is encoded."""
    import json

    from eval.headings import format_table, measure
    from rag.errors import RagError

    try:
        report = measure(folder, chunk_tokens=chunk_tokens, overlap=overlap)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_table(report))


@eval_group.command("ann")
@click.option("--vectors", "vectors_file", default=None, type=click.Path(dir_okay=False),
              help="Your own vectors (.npy or .fvecs); default: real MiniLM vectors of the Python docs.")
@click.option("--n", "n", default=None, type=click.IntRange(1000),
              help="Vectors to index (default: 100,000 of the real corpus, or all of --vectors).")
@click.option("--backends", default=None, help="Comma-separated backends (default: every one).")
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory; vectors, results and the plot go under <data>/ann/ (default ./rag-data).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def ann(vectors_file, n, backends, data, as_json) -> None:
    """ANN backends against exact search: build time, recall@1/@10, single-thread QPS, bytes/vector,
    and the raw library call's QPS at the same parameters; writes a recall-vs-QPS PNG."""
    import json

    from eval.ann import benchmark, format_table
    from indexes import available_backends
    from rag.config import data_dir

    chosen = _names(backends)
    unknown = sorted(set(chosen or []) - set(available_backends()))
    if unknown:
        raise click.ClickException(f"unknown backend(s) {', '.join(unknown)}; available: {', '.join(available_backends())}")
    try:
        report, png = benchmark(data_dir(data), vectors_file, n, chosen, progress=lambda line: click.echo(line, err=True))
    except ValueError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_table(report))
    click.echo(f"plot: {png}", err=True)


@eval_group.command("answer")
@click.argument("dataset", required=False, type=click.Path(exists=True))
@click.option("--questions", "questions_path", default=None, type=click.Path(dir_okay=False),
              help="JSONL questions {id, question, answers, pages} over the Python docs (the default dataset).")
@click.option("--readers", default="span,extract,prompt,fid", show_default=True, help="Comma-separated readers.")
@click.option("--hyde", is_flag=True, help="Also run every reader with HyDE query expansion.")
@click.option("-k", "k", default=5, show_default=True, type=click.IntRange(1, 50), help="Passages per answer.")
@click.option("--mode", default="hybrid", show_default=True, type=click.Choice(["dense", "keyword", "hybrid"]))
@click.option("--hyde-n", default=2, show_default=True, type=click.IntRange(1, 16), help="Hypothetical passages.")
@click.option("--generator", default="local", show_default=True, help="Generator engine or model directory.")
@click.option("--limit", default=None, type=click.IntRange(1),
              help="Only N questions, evenly spaced over the dataset (every article represented).")
@click.option("--given-paragraph", "given", is_flag=True,
              help="SQuAD: read each question from its own paragraph only (reading comprehension, no retrieval).")
@click.option("--docs", "docs_root", default="/usr/share/doc/python3/html", show_default=True,
              type=click.Path(file_okay=False), help="The Python documentation HTML (python3-doc).")
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory; dataset stores are cached under <data>/eval/, results under <data>/bench/.")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def answer(dataset, questions_path, readers, hyde, k, mode, hyde_n, generator, limit, given, docs_root, data,
           as_json) -> None:
    """Answer quality and latency per reader (x HyDE) on DATASET: a SQuAD v1.1/v2.0 JSON file (or a
    directory holding one), or JSONL questions; default: questions over the Python docs.

    Exact match and F1 (official SQuAD normalization), containment, citation correctness, groundedness,
    refusal accuracy (unanswerable questions), p50/p95 seconds per answer; a PNG plot under <data>/bench/."""
    import json
    from pathlib import Path

    from eval.answer_bench import format_table, plot, run, save
    from rag.config import data_dir
    from rag.errors import RagError

    if dataset and questions_path:
        raise click.ClickException("give DATASET or --questions, not both")
    root = data_dir(data)
    try:
        report = run(root, dataset or questions_path, readers=tuple(_names(readers) or ["extract"]),
                     hyde_options=(False, True) if hyde else (False,), k=k, mode=mode, hyde_n=hyde_n,
                     generator=generator, docs_root=Path(docs_root), limit=limit, given=given,
                     progress=lambda line: click.echo(line, err=True))
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    saved = save(report, root / "bench")
    png = plot(report, root / "bench" / f"answer-{Path(report.dataset['path']).stem}.png")
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_table(report))
    click.echo(f"results: {saved}\nplot: {png}", err=True)


@eval_group.command("generation")
@click.option("--rounds", default=10, show_default=True, type=click.IntRange(1, 1000), help="Alternating rounds.")
@click.option("--generator", default="local", show_default=True, help="Generator engine or model directory.")
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory (its model cache holds the converted generator).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def generation(rounds, generator, data, as_json) -> None:
    """What makes reading fast on a CPU: passages vs evidence sentences, a cached few-shot prefix,
    restricted logits, int8 dynamic quantization; p50 seconds per reading task."""
    import json

    from eval.generation_bench import format_table, run
    from rag.config import data_dir
    from rag.errors import RagError
    from rag.models.generators import load_generator

    try:
        loaded = load_generator(generator, data_dir=data_dir(data))
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    if getattr(loaded, "model", None) is None or loaded.is_encoder_decoder:
        raise click.ClickException("rag eval generation needs a local decoder-only model")
    bench = run(loaded, rounds=rounds, progress=lambda line: click.echo(line, err=True))
    click.echo(json.dumps(bench.to_json(), indent=2) if as_json else format_table(bench))


@eval_group.command("report")
@click.argument("dataset_dir", type=click.Path(file_okay=False))
@click.option("--backends", default=None, help="Comma-separated vector backends (default: every one).")
@click.option("--modes", default=None, help="Comma-separated modes: dense,keyword,hybrid (default: all).")
@click.option("--hyde", is_flag=True, help="Also evaluate retrieval with HyDE query vectors.")
@click.option("--limit", default=None, type=click.IntRange(1), help="Evaluate only the first N judged queries.")
@click.option("--split", default="test", show_default=True, help="The qrels file: qrels/SPLIT.tsv.")
@click.option("--ann/--no-ann", default=True, show_default=True,
              help="Benchmark the vector backends on the dataset's passage embeddings.")
@click.option("--answers", default=5, show_default=True, type=click.IntRange(0),
              help="Questions for the answer evaluation when a generator is available (0 skips it).")
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory; the report is written to <data>/eval/ (default ./rag-data).")
@click.option("--json", "as_json", is_flag=True, help="Print the report's path and every part's results as JSON.")
def report(dataset_dir, backends, modes, hyde, limit, split, ann, answers, data, as_json) -> None:
    """One HTML report (tables and plots inline) for a BEIR-format dataset: retrieval quality per
    backend x mode, the ANN benchmark on its passage embeddings, and answer quality when a
    generator is available."""
    import json

    from eval.report import build_report
    from rag.errors import RagError

    try:
        path, summary = build_report(dataset_dir, data=data, backends=_names(backends), modes=_names(modes),
                                     hyde=hyde, limit=limit, split=split, ann=ann, answers=answers,
                                     progress=lambda line: click.echo(line, err=True))
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps({"report": str(path), **summary}, indent=2) if as_json else f"report: {path}")


@eval_group.command("cluster")
@click.argument("dataset_dir", type=click.Path(file_okay=False))
@click.option("--cluster", default="local", show_default=True, envvar="RAG_RAY_ADDRESS", metavar="ADDRESS",
              help="The Ray cluster: an address, auto (running here) or local (started in this process).")
@click.option("--shards", default=4, show_default=True, type=click.IntRange(1, 4096), help="Shards of the cluster library.")
@click.option("--encoders", default="1,2", show_default=True, help="Comma-separated encoder actor counts to time.")
@click.option("--ingest-docs", default=1000, show_default=True, type=click.IntRange(1),
              help="Documents ingested for the throughput runs.")
@click.option("--docs", "documents", default=None, type=click.IntRange(1),
              help="Quality on a subset: every judged document of the queries plus random others up to N (default: all).")
@click.option("--limit", default=None, type=click.IntRange(1), help="Only the first N judged queries.")
@click.option("--modes", default=None, help="Comma-separated modes (default dense,keyword,hybrid).")
@click.option("--split", default="test", show_default=True, help="The qrels file: qrels/SPLIT.tsv.")
@click.option("--no-ingest", is_flag=True, help="Skip the ingest throughput runs.")
@click.option("--no-quality", is_flag=True, help="Skip the quality and latency runs.")
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory; stores go under <data>/eval/cluster/ (default ./rag-data).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def cluster_benchmark(dataset_dir, cluster, shards, encoders, ingest_docs, documents, limit, modes, split, no_ingest,
                      no_quality, data, as_json) -> None:
    """A library sharded on Ray against one store: ingest passages/s with 1, 2, ... encoder actors vs the
    local ingest, and per mode nDCG@10 and search p50/p95 over SHARDS shards vs one store."""
    import json

    from eval.cluster_bench import format_table, run_cluster_bench
    from rag.config import data_dir
    from rag.errors import RagError

    try:
        counts = [int(n) for n in _names(encoders) or []]
    except ValueError:
        raise click.BadParameter(f"not a list of numbers: {encoders!r}", param_hint="--encoders") from None
    if any(n < 1 for n in counts):
        raise click.BadParameter("encoder counts must be at least 1", param_hint="--encoders")
    try:
        report = run_cluster_bench(dataset_dir, data_dir(data), cluster, shards=shards, encoder_counts=counts,
                                   limit=limit, documents=documents, ingest_documents=ingest_docs,
                                   modes=_names(modes), split=split, skip_ingest=no_ingest, skip_quality=no_quality)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_table(report))
