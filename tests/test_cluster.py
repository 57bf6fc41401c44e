"""A library sharded over a real local Ray cluster (three simulated nodes of one CPU each), against one
unsharded library over the same files: real SQLite stores, the real encoder, real shard and encoder actors."""
from __future__ import annotations

import json
import os
import subprocess
import sys
import threading
from pathlib import Path

import pytest

ray = pytest.importorskip("ray")

from rag.errors import RagError  # noqa: E402
from rag.ingest.pipeline import ingest_paths  # noqa: E402
from rag.library import open_library  # noqa: E402
from rag.search.ranking import search  # noqa: E402

NOTES = {
    "lighthouse.txt": "The Skerryvore lighthouse stands on a reef off the west coast of Scotland. It was designed "
                      "by Alan Stevenson and completed in 1844; its keepers trimmed the lamp every night.",
    "sourdough.md": "# Sourdough starter\n\nA sourdough starter is fed with equal weights of flour and water every "
                    "day. It is ready to bake with when it doubles within six hours.",
    "glacier.txt": "The Aletsch glacier is the largest glacier in the Alps, twenty kilometres of ice flowing "
                   "south from the Jungfrau; it has retreated three kilometres since 1870.",
    "apiary.txt": "The Marrowfield apiary keeps forty-two hives of black bees on the moor; the heather honey is "
                  "taken in late August and keeps for years.",
    "comet.md": "# Halley's comet\n\nHalley's comet returns every 75 to 76 years; Edmond Halley predicted its "
                "return of 1758, which he did not live to see.",
    "tides.txt": "Spring tides come twice a month, at new and full moon, when the sun and moon pull together; "
                 "neap tides fall between them.",
    "violin.txt": "A violin has four strings tuned in fifths, G D A E; its body is carved from spruce and maple "
                  "and its bow is strung with horsehair.",
    "volcano.txt": "Mount Etna on Sicily is one of the most active volcanoes on Earth, erupting lava from its "
                   "summit craters many times a decade.",
}
QUERIES = ["Who designed the lighthouse on the reef?", "how long does a starter take to double",
           "largest glacier in the Alps", "heather honey from the moor", "when does the comet return",
           "why are there spring tides", "what wood is a violin made of", "active volcano in Sicily"]


@pytest.fixture(scope="module")
def ray_address():
    """A local Ray cluster of three one-CPU nodes, started once for the module and shut down after."""
    from ray.cluster_utils import Cluster

    memory = 80 * 1024 * 1024
    cluster = Cluster(initialize_head=True, head_node_args={"num_cpus": 1, "object_store_memory": memory,
                                                            "include_dashboard": False})
    for _ in range(2):
        cluster.add_node(num_cpus=1, object_store_memory=memory)
    ray.init(address=cluster.address, log_to_driver=False)
    try:
        yield cluster.address
    finally:
        ray.shutdown()
        cluster.shutdown()


@pytest.fixture(scope="module")
def corpus(tmp_path_factory) -> Path:
    docs = tmp_path_factory.mktemp("cluster-notes")
    for name, text in NOTES.items():
        (docs / name).write_text(text, encoding="utf-8")
    return docs


@pytest.fixture(scope="module")
def single(tmp_path_factory, corpus, encoder):
    """One unsharded library over the same files (flat index: exact)."""
    library = open_library(tmp_path_factory.mktemp("single") / "data", backend="flat", encoder=encoder)
    assert ingest_paths(library, [str(corpus)]).added == len(NOTES)
    yield library
    library.close()


@pytest.fixture(scope="module")
def cluster_data(tmp_path_factory, corpus, encoder, ray_address, model_cache) -> Path:
    """A three-shard cluster library over the files, ingested once (plus a damaged file that must fail alone)."""
    from rag.cluster.library import open_cluster_library

    data = tmp_path_factory.mktemp("cluster") / "data"
    broken = corpus.parent / "broken"
    broken.mkdir(exist_ok=True)
    (broken / "damaged.pdf").write_bytes(b"%PDF-1.4 this is not really a PDF")
    with open_cluster_library(data, ray_address, shards=3, backend="flat", encoder=encoder) as library:
        report = ingest_paths(library, [str(corpus), str(broken)], encoders=2)
    assert report.added == len(NOTES), report.failures
    assert [Path(p).name for p, _ in report.failures] == ["damaged.pdf"]
    return data


def _open(data, address, encoder, **options):
    from rag.cluster.library import open_cluster_library

    return open_cluster_library(data, address, encoder=encoder, create=False, **options)


def _view(hits):
    """What must agree between a cluster and one store: which passage, and its score."""
    return [(h.document.path, h.passage.order, h.passage.text) for h in hits], [h.score for h in hits]


def _assert_same_results(library, single, query: str) -> None:
    """Every mode's top 10: the same passages, and dense cosine scores the very same numbers (keyword and
    hybrid ones summed over shards in another order)."""
    for mode in ("dense", "keyword", "hybrid"):
        ours, theirs = (search(lib, query, k=10, mode=mode) for lib in (library, single))
        (ids, scores), (want_ids, want_scores) = _view(ours), _view(theirs)
        assert ids == want_ids, (mode, query)
        if mode == "dense":
            assert scores == want_scores, query
        else:
            assert scores == pytest.approx(want_scores, rel=1e-9)


def test_every_document_lands_on_its_shard_and_is_found(cluster_data, ray_address, encoder, corpus):
    from rag.cluster.shards import MANIFEST_FILE, shard_of

    manifest = json.loads((cluster_data / MANIFEST_FILE).read_text())
    assert manifest["shards"] == 3 and manifest["backend"] == "flat"
    with _open(cluster_data, ray_address, encoder) as library:
        info = library.stats()
        assert info["documents"] == len(NOTES)
        per_shard = {s["shard"]: s["documents"] for s in info["cluster"]["per_shard"]}
        expected = {s: sum(shard_of(str(corpus / n), 3) == s for n in NOTES) for s in range(3)}
        assert per_shard == expected
        assert sum(1 for n in expected.values() if n) >= 2  # the files really spread
        for name, query in zip(NOTES, QUERIES):
            for mode in ("dense", "keyword", "hybrid"):
                hits = search(library, query, k=3, mode=mode)
                assert hits and hits[0].document.path == str(corpus / name), (mode, query)
            doc = library.find_document(str(corpus / name))
            assert library.document(doc.id).path == doc.path
            assert NOTES[name].split()[-1].rstrip(".") in library.document_text(doc.id)
        from rag.answer.pipeline import ask  # the answer pipeline runs unchanged on top of the cluster's search

        answer = ask(library, "How many hives does the Marrowfield apiary keep?", k=3, reader="extract")
        assert answer.citations and answer.citations[0].hit.document.path == str(corpus / "apiary.txt")
        docs = library.documents()
        assert sorted(d.path for d in docs) == sorted(str(corpus / n) for n in NOTES)
        counts = library.passage_counts()
        assert all(counts[d.id] == len(library.passages_of(d.id)) for d in docs)


def test_an_ingest_over_the_cluster_gives_one_librarys_results(tmp_path, ray_address, encoder, single, corpus):
    """The same files encoded again by the cluster's encoder actors, in other company than the one
    library's ingest gave them (two groups instead of one batch of eight), get the very same vectors:
    every mode gives the one library's results exactly."""
    from rag.cluster.library import open_cluster_library

    files = sorted(str(p) for p in corpus.iterdir())
    with open_cluster_library(tmp_path / "data", ray_address, shards=3, backend="flat", encoder=encoder) as library:
        for group in (files[::2], files[1::2]):
            assert ingest_paths(library, group, encoders=1).added == len(group)
        for query in QUERIES:
            _assert_same_results(library, single, query)


def test_results_match_one_unsharded_library(tmp_path, ray_address, encoder, single, corpus):
    """The one library's passages and vectors copied onto three shards (import_library: no re-encoding),
    then every mode and filter gives its results exactly."""
    from rag.cluster.library import open_cluster_library

    with open_cluster_library(tmp_path / "data", ray_address, shards=3, backend="flat", encoder=encoder) as library:
        report = library.import_library(single)
        assert (report.added, report.failed) == (len(NOTES), 0)
        assert library.import_library(single).skipped == len(NOTES)  # unchanged: nothing copied twice
        for query in QUERIES:
            _assert_same_results(library, single, query)
            where = {"path": f"{corpus}/[a-l]*"}  # filters apply on every shard before its top k
            ours, theirs = (search(lib, query, k=5, mode="dense", where=where) for lib in (library, single))
            (ids, scores), (want_ids, want_scores) = _view(ours), _view(theirs)
            assert ids == want_ids
            # a few filtered candidates are scored by one numpy product over their vectors: the shapes differ
            # from one store's, so the last float bit may too
            assert scores == pytest.approx(want_scores, abs=1e-6)
            assert all(Path(h.document.path).name[0] <= "l" for h in ours)


def test_reindex_rebuilds_every_shard_from_its_vectors(tmp_path, ray_address, encoder, single):
    """`rag reindex --cluster`: each shard actor rebuilds its own index from its stored vectors (nothing is
    encoded again); --index switches every shard and the manifest, and a shard Ray restarts keeps it."""
    from click.testing import CliRunner

    from rag.cli import main
    from rag.cluster.library import open_cluster_library
    from rag.cluster.shards import MANIFEST_FILE

    data = tmp_path / "data"
    with open_cluster_library(data, ray_address, shards=3, backend="flat", encoder=encoder) as library:
        assert library.import_library(single).added == len(NOTES)
        passages = library.passage_count()
        want = {query: _view(search(library, query, k=5, mode="dense"))[0] for query in QUERIES}

    def backends() -> set[str]:
        """Each shard's saved index, as its state file records it."""
        manifest = json.loads((data / MANIFEST_FILE).read_text())
        return {manifest["backend"]} | {json.loads((data / d / "index" / "rag.json").read_text())["backend"]
                                        for d in manifest["shard_dirs"]}

    done = CliRunner().invoke(main, ["reindex", "--index", "hnsw", "--cluster", ray_address, "--data", str(data)])
    assert done.exit_code == 0, done.output
    assert f"hnsw index rebuilt on 3 shards: {passages} vectors" in done.output
    assert backends() == {"hnsw"}
    with _open(data, ray_address, encoder) as library:
        assert library.backend == library.stats()["backend"] == "hnsw"
        for query in QUERIES:
            assert _view(search(library, query, k=5, mode="dense"))[0] == want[query]
        counts = library.rebuild_index("flat")
        assert sorted(counts) == [0, 1, 2] and sum(counts.values()) == passages
        assert backends() == {"flat"}
        ray.kill(library.shards[0], no_restart=False)  # restarted from its directory, with the new backend
        assert _view(search(library, QUERIES[0], k=5, mode="dense"))[0] == want[QUERIES[0]]
        assert backends() == {"flat"}
        with pytest.raises(RagError, match="unknown index backend"):
            library.rebuild_index("no-such-index")
    assert backends() == {"flat"}


def test_changed_file_and_rm_reach_the_right_shard(tmp_path, ray_address, encoder, corpus):
    from rag.cluster.library import open_cluster_library
    from rag.cluster.shards import shard_of

    docs = tmp_path / "docs"
    docs.mkdir()
    for name, text in NOTES.items():
        (docs / name).write_text(text, encoding="utf-8")
    data = tmp_path / "data"
    with open_cluster_library(data, ray_address, shards=3, backend="flat", encoder=encoder) as library:
        assert ingest_paths(library, [str(docs)], encoders=1).added == len(NOTES)
        target = docs / "violin.txt"
        home = shard_of(str(target), 3)
        before = library.generations()
        target.write_text("A cello is tuned C G D A, an octave below the viola; its endpin rests on the floor.",
                          encoding="utf-8")
        report = ingest_paths(library, [str(docs)], encoders=1)
        assert (report.updated, report.added, report.skipped) == (1, 0, len(NOTES) - 1)
        after = library.generations()
        assert [s for s in range(3) if after[s] != before[s]] == [home]
        hits = search(library, "cello endpin", k=1, mode="keyword")
        assert hits[0].document.path == str(target)
        assert all("horsehair" not in h.passage.text for h in search(library, "horsehair spruce", k=5, mode="keyword"))

        # `rag rm` through the CLI in another process, on the same cluster and data directory
        before = library.generations()
        done = subprocess.run([sys.executable, "-m", "rag.cli", "rm", str(target), "--data", str(data),
                               "--cluster", ray_address], capture_output=True, text=True, timeout=300,
                              env={**os.environ, "PYTHONPATH": os.pathsep.join(sys.path)})
        assert done.returncode == 0, done.stderr
        assert "removed" in done.stdout
        after = library.generations()
        assert [s for s in range(3) if after[s] != before[s]] == [home]
        with pytest.raises(RagError):
            library.find_document(str(target))
        assert all(h.document.path != str(target) for h in search(library, "cello endpin", k=5, mode="hybrid"))
        assert library.stats()["documents"] == len(NOTES) - 1


def test_a_killed_shard_recovers_and_a_dead_one_is_named(cluster_data, ray_address, encoder):
    from rag.contract import search_json

    query = QUERIES[2]
    with _open(cluster_data, ray_address, encoder) as library:
        want = _view(search(library, query, k=8, mode="hybrid"))
        results, errors = [], []

        def searching():
            try:
                for _ in range(12):
                    results.append(_view(search(library, query, k=8, mode="hybrid")))
            except Exception as exc:  # noqa: BLE001 - reported by the assertion below
                errors.append(exc)

        thread = threading.Thread(target=searching)
        thread.start()
        ray.kill(library.shards[1], no_restart=False)  # Ray restarts it from its data directory
        thread.join(timeout=300)
        assert not errors and len(results) == 12
        assert all(r == want for r in results)

        ray.kill(library.shards[2], no_restart=True)  # gone for good
        with pytest.raises(RagError, match="shard 2 of 3"):
            search(library, query, k=8, mode="dense")

    with _open(cluster_data, ray_address, encoder, allow_partial=True) as library:
        full = search(library, query, k=8, mode="dense")
        ray.kill(library.shards[2], no_restart=True)
        with library.tracking_missing() as missing:
            hits = search(library, query, k=8, mode="dense")
        assert missing == [2]
        assert search_json(query, "dense", hits, missing)["partial"] is True
        from rag.cluster.shards import split_id

        expected = [h.passage.id for h in full if split_id(h.passage.id, 3)[0] != 2]
        assert [h.passage.id for h in hits][:len(expected)] == expected
        assert all(split_id(h.passage.id, 3)[0] != 2 for h in hits)
        with pytest.raises(RagError, match="shard 2"):  # outside a tracked search: never a silently short list
            search(library, query, k=8, mode="dense")


def test_web_api_over_a_cluster_library(cluster_data, ray_address, encoder, tmp_path):
    import requests

    from web import create_app
    from web.server import BackgroundServer

    with _open(cluster_data, ray_address, encoder) as library:
        app = create_app({"DATA_DIR": str(cluster_data), "LIBRARY": library, "ENCODER_OBJECT": encoder,
                          "API_TOKEN": None})
        with BackgroundServer(app, "127.0.0.1", 0) as server:
            found = requests.get(f"{server.url}/api/search", params={"q": QUERIES[3], "mode": "hybrid", "k": 3},
                                 timeout=60).json()
            assert found["partial"] is False and found["missing_shards"] == []
            assert found["results"][0]["document"]["path"].endswith("apiary.txt")
            listed = requests.get(f"{server.url}/api/documents", timeout=60).json()
            assert listed["total"] == len(NOTES)
            apiary = next(d for d in listed["documents"] if d["path"].endswith("apiary.txt"))
            shown = requests.get(f"{server.url}/api/documents/{apiary['id']}", timeout=60).json()
            assert "forty-two hives" in shown["text"] and shown["passages"]
            stats = requests.get(f"{server.url}/api/stats", timeout=60).json()
            assert stats["documents"] == len(NOTES) and stats["cluster"]["shards"] == 3

            upload = tmp_path / "kestrel.txt"
            upload.write_text("The kestrel hovers over motorway verges, hunting voles by sight.", encoding="utf-8")
            with upload.open("rb") as handle:
                sent = requests.post(f"{server.url}/api/documents", files={"file": ("kestrel.txt", handle)},
                                     timeout=300)
            assert sent.status_code == 200, sent.text
            assert sent.json()["added"] == 1
            hits = requests.get(f"{server.url}/api/search", params={"q": "kestrel voles", "mode": "keyword"},
                                timeout=60).json()["results"]
            assert hits[0]["document"]["path"].endswith("kestrel.txt")
            gone = requests.delete(f"{server.url}/api/documents/{hits[0]['document']['id']}", timeout=60)
            assert gone.status_code == 200, gone.text
            hits = requests.get(f"{server.url}/api/search", params={"q": "kestrel voles", "mode": "keyword"},
                                timeout=60).json()["results"]
            assert all(not h["document"]["path"].endswith("kestrel.txt") for h in hits)


def test_without_cluster_ray_is_not_imported(single):
    code = ("import sys\nfrom rag.cli import main\n"
            "for args in (['search', 'lighthouse reef', '--json'], ['stats'], ['docs']):\n"
            "    try:\n        main(args + ['--data', sys.argv[1]])\n    except SystemExit as exc:\n"
            "        assert not exc.code, exc.code\n"
            "print('RAY', 'ray' in sys.modules, 'rag.cluster' in sys.modules)\n")
    env = {k: v for k, v in os.environ.items() if k != "RAG_RAY_ADDRESS"}
    env["PYTHONPATH"] = os.pathsep.join(sys.path)
    done = subprocess.run([sys.executable, "-c", code, str(single.data_dir)], capture_output=True, text=True,
                          timeout=300, env=env)
    assert done.returncode == 0, done.stderr
    assert "RAY False False" in done.stdout


def test_bad_manifest_and_shard_count_are_clear(tmp_path, cluster_data, ray_address, encoder):
    from rag.cluster.library import open_cluster_library
    from rag.cluster.shards import MANIFEST_FILE

    for create in (False, True):  # neither read nor written as a one-machine library by mistake
        with pytest.raises(RagError, match="sharded over a Ray cluster"):
            open_library(cluster_data, encoder=encoder, create=create)
    with pytest.raises(RagError, match="has 3 shards"):
        open_cluster_library(cluster_data, ray_address, shards=5, encoder=encoder)
    bad = tmp_path / "bad"
    bad.mkdir()
    (bad / MANIFEST_FILE).write_text(json.dumps({"shards": 2, "encoder": "x", "encoder_backend": "onnx-int8",
                                                 "dim": 384, "backend": "flat", "shard_dirs": ["a"]}))
    with pytest.raises(RagError, match="shard_dirs"):
        open_cluster_library(bad, ray_address, encoder=encoder)
    with pytest.raises(RagError, match="no cluster library"):
        open_cluster_library(tmp_path / "empty", ray_address, encoder=encoder, create=False)


def test_cluster_benchmark_on_a_tiny_dataset(tmp_path, ray_address):
    """`rag eval cluster` on eight notes and their questions: a cluster holding one store's vectors gives
    its quality exactly; the ingest runs count every passage."""
    from eval.cluster_bench import format_table, run_cluster_bench

    dataset = tmp_path / "notes"
    (dataset / "qrels").mkdir(parents=True)
    with (dataset / "corpus.jsonl").open("w", encoding="utf-8") as out:
        for i, (name, text) in enumerate(NOTES.items()):
            out.write(json.dumps({"_id": f"d{i}", "title": name.split(".")[0], "text": text}) + "\n")
    with (dataset / "queries.jsonl").open("w", encoding="utf-8") as out:
        for i, query in enumerate(QUERIES):
            out.write(json.dumps({"_id": f"q{i}", "text": query}) + "\n")
    (dataset / "qrels" / "test.tsv").write_text(
        "query-id\tcorpus-id\tscore\n" + "".join(f"q{i}\td{i}\t1\n" for i in range(len(QUERIES))), encoding="utf-8")

    report = run_cluster_bench(dataset, tmp_path / "data", ray_address, shards=3, encoder_counts=[1, 2],
                               ingest_documents=len(NOTES))
    assert [r.encoders for r in report.ingest] == [None, 1, 2]
    assert len({r.passages for r in report.ingest}) == 1 and report.ingest[0].passages >= len(NOTES)
    assert [r.mode for r in report.quality] == ["dense", "keyword", "hybrid"]
    for row in report.quality:
        assert row.cluster_ndcg == pytest.approx(row.one_ndcg, abs=1e-12), row.mode
        assert row.same_top10 == 1.0, row.mode
    assert "hybrid" in format_table(report) and json.dumps(report.to_json())
