"""The library owns its data directory: concurrent writers, churn, and read-only commands."""
from __future__ import annotations

import os
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest
from click.testing import CliRunner

from indexes import available_backends
from rag.cli import main
from rag.errors import RagError
from rag.ingest.pipeline import ingest_documents, ingest_paths
from rag.library import open_library
from rag.records import SourceDocument
from rag.search.ranking import search

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


WORDS = ("river lake glacier volcano desert forest reef canyon island meadow harbour bridge tower castle "
         "library market garden orchard vineyard mill quarry mine railway canal").split()


def note(rng, n: int, round_: int) -> SourceDocument:
    words = " ".join(rng.choice(WORDS, 12))
    return SourceDocument(uri=f"note-{n}", title=f"Note {n}",
                          text=f"Note {n}, version {round_}: {words}. Written on day {round_ * 7 + n}.")


def dense_vs_exact(library) -> tuple[list[float], float]:
    """recall@10 of dense search against exact search over the stored embeddings, one per stored
    passage asked with its own embedding; and a fresh build's mean on the same probes."""
    ids, vectors = library.embeddings()
    k = min(10, len(ids))
    truth = ids[np.argsort(-(vectors @ vectors.T), axis=1)[:, :k]]
    found = [[h.passage.id for h in search(library, "probe", k=k, mode="dense", query_vector=v)] for v in vectors]
    fresh = library.build_index(library.backend).search(vectors, k)[0]
    per_probe = [len(set(f) & set(t)) / k for f, t in zip(found, truth)]
    return per_probe, float(np.mean([len(set(f) & set(t)) / k for f, t in zip(fresh, truth)]))


@pytest.mark.parametrize("backend", available_backends())
def test_churn_keeps_dense_search_as_good_as_a_rebuild(backend, tmp_path, encoder):
    """Rounds of replacing, deleting and adding documents, through this library and through a second
    one (another process) while searches run: dense search stays as good as a fresh index."""
    rng = np.random.default_rng(5)
    data = tmp_path / "data"
    library = open_library(data, backend=backend, encoder=encoder)
    other = open_library(data, encoder=encoder)
    stop = threading.Event()
    errors: list[BaseException] = []

    def searching() -> None:
        while not stop.is_set():
            try:
                search(library, "river bridge", k=5, mode="dense")
            except BaseException as exc:  # noqa: BLE001 - reported by the test
                errors.append(exc)
                return

    try:
        ingest_documents(library, [note(rng, n, 0) for n in range(60)])
        reader = threading.Thread(target=searching, daemon=True)
        reader.start()
        alive = set(range(60))
        for round_ in range(1, 16):
            writer = library if round_ % 3 else other
            changed = rng.choice(sorted(alive), 8, replace=False).tolist()
            ingest_documents(writer, [note(rng, n, round_) for n in changed])
            for n in rng.choice(sorted(alive), 3, replace=False).tolist():
                writer.remove_document(f"note-{n}")
                alive.discard(n)
            added = range(100 + 4 * round_, 104 + 4 * round_)
            ingest_documents(writer, [note(rng, n, round_) for n in added])
            alive.update(added)
        stop.set()
        reader.join(timeout=60)
        assert errors == []
        assert np.array_equal(library.index.ids(), library.passage_ids())
        per_probe, fresh = dense_vs_exact(library)
        print(f"{backend}: recall@10 after churn {np.mean(per_probe):.4f} (min {min(per_probe):.1f}), "
              f"fresh build {fresh:.4f}")
        assert np.mean(per_probe) >= fresh - 0.01 and min(per_probe) > 0
    finally:
        stop.set()
        library.close()
        other.close()
    with open_library(data, encoder=encoder) as reopened:  # what was saved holds exactly the store
        assert np.array_equal(reopened.index.ids(), reopened.passage_ids())
