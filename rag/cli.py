"""The ``rag`` command line: one click group; each command's docstring is its --help."""
from __future__ import annotations

import click

from rag.config import data_dir

data_option = click.option(
    "--data", "data", envvar="RAG_DATA", default=None, type=click.Path(file_okay=False),
    help="Data directory (default ./rag-data).",
)


@click.group()
@click.version_option(package_name="rag")
def main() -> None:
    """Search and question answering over your own documents."""


@main.command()
@click.option("--host", default="127.0.0.1", show_default=True,
              help="Address to listen on; beyond loopback only when RAG_API_TOKEN is set.")
@click.option("--port", default=8000, show_default=True, type=click.IntRange(0, 65535), help="0 picks a free port.")
@click.option("--threads", default=8, show_default=True, type=click.IntRange(1, 64), help="Worker threads.")
@click.option("--generator", default="local", show_default=True, help="Generator engine for Ask.")
@data_option
def serve(host: str, port: int, threads: int, generator: str, data: str | None) -> None:
    """Serve the search-and-answer page and the JSON API (waitress)."""
    from rag.errors import RagError
    from web.server import serve as run_server

    try:
        run_server(data, host=host, port=port, threads=threads, generator=generator, echo=click.echo)
    except RagError as exc:
        raise click.ClickException(str(exc)) from exc


def _register_eval() -> None:
    from eval.cli import eval_group

    main.add_command(eval_group)


_register_eval()
