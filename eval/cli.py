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
@click.option("--json", "as_json", is_flag=True, help="Print the result as JSON.")
def load(url, clients, seconds, mode, k, data, as_json) -> None:
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
    click.echo(json.dumps(report.to_json(), indent=2) if as_json else format_report(report))
