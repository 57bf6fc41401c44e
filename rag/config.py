"""Where state lives: one data directory (``--data``, ``RAG_DATA``, default ``./rag-data``)."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = "rag-data"


def data_dir(option: str | os.PathLike | None = None) -> Path:
    """The data directory from the command-line option, else RAG_DATA, else ./rag-data."""
    chosen = option or os.environ.get("RAG_DATA") or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()
