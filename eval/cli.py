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
@click.option("--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
              help="Data directory; the dataset's store is cached under <data>/eval/ (default ./rag-data).")
@click.option("--json", "as_json", is_flag=True, help="Print the results as JSON.")
def retrieval(dataset_dir, backends, modes, hyde, limit, split, data, as_json) -> None:
    """Retrieval quality on a BEIR-format dataset (corpus.jsonl, queries.jsonl, qrels/SPLIT.tsv).

    nDCG@10, Recall@10, Recall@100, MRR@10, MAP@100 (trec_eval rules) and queries/s for each
    backend x mode; the corpus is ingested once and its store reused by later runs.
    """
    import json

    from eval.retrieval import evaluate_retrieval, format_table
    from rag.errors import RagError

    try:
        report = evaluate_retrieval(dataset_dir, data=data, backends=_names(backends), modes=_names(modes),
                                    hyde=hyde, limit=limit, split=split)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc
    if as_json:
        for note in report.notes:
            click.echo(f"note: {note}", err=True)
        click.echo(json.dumps(report.to_json(), indent=2))
    else:
        click.echo(format_table(report))
