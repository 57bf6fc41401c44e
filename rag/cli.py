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


def _register_eval() -> None:
    from eval.cli import eval_group

    main.add_command(eval_group)


_register_eval()
