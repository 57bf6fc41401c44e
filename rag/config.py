"""Where state lives (one data directory: ``--data``, ``RAG_DATA``, default ``./rag-data``), and models offline."""
from __future__ import annotations

import os
from pathlib import Path

DEFAULT_DATA_DIR = "rag-data"


def data_dir(option: str | os.PathLike | None = None) -> Path:
    """The data directory from the command-line option, else RAG_DATA, else ./rag-data."""
    chosen = option or os.environ.get("RAG_DATA") or DEFAULT_DATA_DIR
    return Path(chosen).expanduser().resolve()


def offline_models() -> None:
    """No model hub at run time, and no weight-loading bars from transformers on the user's terminal."""
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    os.environ.setdefault("TRANSFORMERS_OFFLINE", "1")
    from transformers.utils import logging

    logging.disable_progress_bar()
