"""The library owns its data directory: concurrent writers, churn, and read-only commands."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from rag.cli import main
from rag.errors import RagError
from rag.ingest import ingest_paths
from rag.library import open_library
from rag.search import search

REPO = Path(__file__).resolve().parent.parent
TOPICS = ["glaciers", "volcanoes", "coral reefs", "deserts", "rainforests", "tundra", "estuaries", "caves",
          "geysers", "dunes", "fjords", "mangroves", "prairies", "atolls", "canyons", "deltas", "marshes",
          "moraines", "plateaus", "lagoons"]


def write_notes(folder: Path, tag: str) -> list[Path]:
    """20 small files with distinct text (each one passage)."""
    folder.mkdir(parents=True)
    paths = []
    for i, topic in enumerate(TOPICS):
        path = folder / f"{tag}-{i}.txt"
        path.write_text(f"Field notes {tag} {i} on {topic}: the {topic} seen on trip {tag} number {i} "
                        f"were measured and drawn by team {tag}.", encoding="utf-8")
        paths.append(path)
    return paths


def every_passage_found(library) -> list[int]:
    """Passage ids that dense search does not return first when asked with their own embedding."""
    ids, vectors = library.embeddings()
    lost = []
    for pid, vector in zip(ids.tolist(), vectors):
        hits = search(library, "own embedding", k=1, mode="dense", query_vector=vector)
        if not hits or hits[0].passage.id != pid:
            lost.append(pid)
    return lost


def rag_command(*args: str, env: dict | None = None) -> subprocess.Popen:
    environment = dict(os.environ, PYTHONPATH=str(REPO) + os.pathsep + os.environ.get("PYTHONPATH", ""))
    return subprocess.Popen([sys.executable, "-m", "rag.cli", *args], cwd=REPO, env=environment,
                            stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True)


def test_two_concurrent_ingests_are_both_searchable(tmp_path, encoder):
    """Two `rag ingest` processes at once on one data directory: afterwards, in a fresh process, every
    passage of both is found by dense search, without a `rag reindex`."""
    data = tmp_path / "data"
    write_notes(tmp_path / "a", "alpha")
    write_notes(tmp_path / "b", "beta")
    runs = [rag_command("ingest", str(tmp_path / name), "--data", str(data), "--batch-passages", "1",
                        "--no-progress") for name in ("a", "b")]
    for run in runs:
        out, err = run.communicate(timeout=600)
        assert run.returncode == 0, err
    with open_library(data, encoder=encoder) as library:
        assert len(library.documents()) == 40 and library.passage_count() == 40
        assert every_passage_found(library) == []
        assert np.array_equal(library.index.ids(), library.passage_ids())


def test_index_follows_another_writer_with_interleaved_ids(tmp_path, encoder):
    """One library writes while another (as another process would) writes the same store: the first
    one's saved index must not claim the other's passages, and both libraries find everything."""
    data = tmp_path / "data"
    write_notes(tmp_path / "a", "alpha")
    write_notes(tmp_path / "b", "beta")
    first, second = open_library(data, encoder=encoder), open_library(data, encoder=encoder)
    try:
        first.index, second.index  # noqa: B018 - both loaded before either writes
        for i in range(20):  # interleaved commits: ids of the two writers alternate
            ingest_paths(first, [str(tmp_path / "a" / f"alpha-{i}.txt")])
            ingest_paths(second, [str(tmp_path / "b" / f"beta-{i}.txt")])
        assert every_passage_found(first) == [] and every_passage_found(second) == []
    finally:
        first.close()
        second.close()
    with open_library(data, encoder=encoder) as reopened:
        assert every_passage_found(reopened) == []


@pytest.mark.parametrize("command", [["search", "rivers"], ["ask", "why?"], ["stats"], ["docs"], ["rm", "1"],
                                     ["reindex"]])
def test_read_only_commands_refuse_a_missing_store(tmp_path, command):
    typo = tmp_path / "typo"
    result = CliRunner().invoke(main, [*command, "--data", str(typo)])
    assert result.exit_code != 0
    assert "no store in" in result.output and str(typo) in result.output
    assert not typo.exists()


def test_library_refuses_a_missing_store_unless_creating(tmp_path):
    with pytest.raises(RagError, match="no store in"):
        open_library(tmp_path / "none", create=False)
    with open_library(tmp_path / "new") as library:
        assert library.documents() == []
    with open_library(tmp_path / "new", create=False) as library:
        assert library.stats()["documents"] == 0
