"""``rag eval ...``: benchmarks and evaluations; each prints a table, --json for programs."""
from __future__ import annotations

import click


@click.group("eval")
def eval_group() -> None:
    """Benchmarks and quality evaluations."""
