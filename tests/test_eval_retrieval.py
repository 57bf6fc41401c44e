"""`rag eval retrieval` end to end on a small BEIR-format dataset the test writes, and bad datasets."""
from __future__ import annotations

import json
from math import log2
from pathlib import Path

import pytest
from click.testing import CliRunner

from eval.beir import DatasetError, load_beir
from indexes import available_backends
from rag.cli import main
from rag.models.encoders import DEFAULT_ENCODER_BACKEND

# Short abstracts on unrelated subjects: each query below names its subject in words only its
# document uses, so every retriever must put that document first.
DOCS = {
    "d01": ("Honey bee waggle dance", "Forager honey bees communicate the direction and distance of flowers "
            "to nestmates through the waggle dance performed on the comb."),
    "d02": ("Volcanic ash and aviation", "Fine volcanic ash ingested by jet engines melts in the combustion "
            "chamber and can cause engine flameout during flight."),
    "d03": ("Sourdough fermentation", "Lactic acid bacteria and wild yeasts in a sourdough starter ferment "
            "flour, producing carbon dioxide that leavens bread and acids that sour it."),
    "d04": ("Coral bleaching", "Marine heatwaves cause corals to expel their symbiotic algae, leaving white "
            "skeletons; prolonged bleaching leads to reef mortality."),
    "d05": ("Tidal locking of the Moon", "Gravitational torque slowed the Moon's rotation until its spin matched "
            "its orbit, so the same hemisphere always faces Earth."),
    "d06": ("Penicillin discovery", "Alexander Fleming noticed in 1928 that a Penicillium mould killed "
            "staphylococcus colonies on a culture plate, leading to the first antibiotic."),
    "d07": ("Glacier retreat", "Alpine glaciers have lost mass since the nineteenth century as summer melt "
            "outpaces winter snow accumulation."),
    "d08": ("Octopus camouflage", "Octopuses change skin colour and texture within milliseconds using "
            "chromatophores controlled directly by the nervous system."),
    "d09": ("Roman concrete durability", "Roman marine concrete made with volcanic pozzolana and lime grows "
            "aluminous tobermorite crystals in seawater, strengthening harbour structures over centuries."),
    "d10": ("Sleep and memory consolidation", "During slow-wave sleep the hippocampus replays recent "
            "experiences, transferring memories to the neocortex for long-term storage."),
    "d11": ("Tardigrade desiccation tolerance", "Tardigrades survive complete drying by producing intrinsically "
            "disordered proteins that vitrify and protect their cells."),
    "d12": ("Monarch butterfly migration", "Monarch butterflies migrate thousands of kilometres to overwintering "
            "sites in Mexican fir forests, navigating with a time-compensated sun compass."),
    "d13": ("Lithium-ion battery degradation", "Repeated charging grows a solid electrolyte interphase on the "
            "graphite anode, consuming lithium and reducing battery capacity."),
    "d14": ("Gut microbiome and diet", "Dietary fibre feeds colonic bacteria that produce short-chain fatty "
            "acids such as butyrate, which nourish the intestinal lining."),
    "d15": ("Bird song learning", "Juvenile zebra finches memorise a tutor's song during a sensitive period "
            "and refine their own vocalisations by auditory feedback."),
    "d16": ("Permafrost methane", "Thawing Arctic permafrost releases methane and carbon dioxide as microbes "
            "decompose organic matter frozen for millennia."),
    "d17": ("Spider silk strength", "Dragline spider silk combines crystalline beta-sheet regions with "
            "amorphous chains, giving it toughness greater than steel by weight."),
    "d18": ("Caffeine and adenosine", "Caffeine blocks adenosine receptors in the brain, which delays the "
            "feeling of drowsiness that builds up during waking hours."),
    "d19": ("Plate tectonics and earthquakes", "Earthquakes cluster along plate boundaries where stress from "
            "subducting oceanic lithosphere is released suddenly along faults."),
    "d20": ("Photosynthesis in C4 plants", "Maize and sugarcane concentrate carbon dioxide in bundle sheath "
            "cells, which suppresses photorespiration in hot climates."),
    "d21": ("Vaccine herd immunity", "When enough of a population is immune to measles, transmission chains "
            "break and unvaccinated infants are indirectly protected."),
    "d22": ("Exoplanet transit detection", "Space telescopes detect exoplanets by the slight periodic dimming "
            "of a star's light as a planet crosses its disc."),
}
# A long document: the ingestion chunker splits it into several passages; its subject (the axolotl)
# appears only near the end, so only max-pooling over its passages can find it.
FILLER = ("Amphibians were studied across many laboratories over several decades, with field surveys, "
          "breeding programmes, husbandry manuals and careful records of water quality and temperature. ")
DOCS["d23"] = ("Amphibian research notes", FILLER * 12 + "The axolotl regrows amputated limbs completely, "
               "forming a blastema of dedifferentiated cells at the wound that rebuilds bone and muscle.")

DOCS["d24"] = ("", "   ")  # nothing to index: reported, and the rest is evaluated

QUERIES = {
    "q1": "How do honey bees tell nestmates where flowers are with the waggle dance?",
    "q2": "Can volcanic ash cause jet engine flameout?",
    "q3": "Which microbes ferment a sourdough starter?",
    "q4": "Why do corals bleach during marine heatwaves?",
    "q5": "Why does the same hemisphere of the Moon always face Earth?",
    "q6": "How does the axolotl regrow amputated limbs?",
    "q7": "Do tardigrades survive drying?",
    "q8": "How do octopuses change skin colour so fast?",
    "q9": "What blocks adenosine receptors and delays drowsiness?",  # graded: two relevant documents
    "q10": "Which query has no relevant document?",  # judged 0 only: skipped
    "q11": "A query whose qrels name a document the corpus lacks",
}
QRELS = [("q1", "d01", 1), ("q2", "d02", 1), ("q3", "d03", 1), ("q4", "d04", 1), ("q5", "d05", 1),
         ("q6", "d23", 1), ("q7", "d11", 1), ("q8", "d08", 1), ("q9", "d18", 2), ("q9", "d10", 1),
         ("q10", "d07", 0), ("q11", "missing-doc", 1), ("no-such-query", "d01", 1)]


def write_dataset(root: Path, docs=DOCS, queries=QUERIES, qrels=QRELS) -> Path:
    (root / "qrels").mkdir(parents=True, exist_ok=True)
    with (root / "corpus.jsonl").open("w") as f:
        for doc_id, (title, text) in docs.items():
            f.write(json.dumps({"_id": doc_id, "title": title, "text": text}) + "\n")
    with (root / "queries.jsonl").open("w") as f:
        for qid, text in queries.items():
            f.write(json.dumps({"_id": qid, "text": text}) + "\n")
    with (root / "qrels" / "test.tsv").open("w") as f:
        f.write("query-id\tcorpus-id\tscore\n")
        for row in qrels:
            f.write("\t".join(map(str, row)) + "\n")
    return root


@pytest.fixture(scope="module")
def evaluated(tmp_path_factory):
    """One evaluation through the CLI (every backend and mode), then a second run on the cached store."""
    root = tmp_path_factory.mktemp("eval")
    dataset = write_dataset(root / "tiny")
    data = root / "data"
    runner = CliRunner()
    first = runner.invoke(main, ["eval", "retrieval", str(dataset), "--data", str(data), "--json"])
    assert first.exit_code == 0, first.output
    second = runner.invoke(main, ["eval", "retrieval", str(dataset), "--data", str(data)])
    assert second.exit_code == 0, second.output
    return dataset, data, json.loads(first.stdout), second.output


def test_json_shape_and_dataset_counts(evaluated):
    dataset, _, result, _ = evaluated
    assert set(result) == {"dataset", "results", "ingest_documents_per_s"}
    assert list(result["ingest_documents_per_s"]) == [DEFAULT_ENCODER_BACKEND]
    assert result["dataset"] == {"path": str(dataset.resolve()), "documents": len(DOCS), "queries": 9}
    keys = {"backend", "encoder_backend", "mode", "hyde", "ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100", "qps"}
    for row in result["results"]:
        assert set(row) == keys
        assert row["hyde"] is False and row["qps"] > 0
    keyword = [r for r in result["results"] if r["mode"] == "keyword"]
    assert len(keyword) == 1 and keyword[0]["backend"] is None
    expected = {(b, m) for b in available_backends() for m in ("dense", "hybrid")}
    assert {(r["backend"], r["mode"]) for r in result["results"] if r["backend"]} == expected


def test_numbers_are_what_the_fixture_implies(evaluated):
    """Every query names its subject in words only its document uses: exact rankers put it first.

    q9 has two relevant documents (grades 2 and 1); only d18 matches the query, so recall@10 may
    miss d10 but its first hit is d18 (MRR 1).
    """
    _, _, result, _ = evaluated
    exact = [r for r in result["results"] if r["backend"] in (None, "flat", "hnsw")]
    for row in exact:
        assert row["mrr@10"] == 1.0, row
        if row["mode"] != "keyword":  # 23 documents: a vector search reaches every one by depth 100
            assert row["recall@100"] == 1.0, row
    keyword = next(r for r in exact if r["mode"] == "keyword")
    # d10 (sleep and memory) shares no word with q9, so BM25 never retrieves it: q9 has recall 1/2 and
    # nDCG 2 / (2 + 1/log2(3)) (d18, grade 2, first; d10, grade 1, missing); the other 8 queries are perfect
    assert keyword["recall@10"] == keyword["recall@100"] == pytest.approx((8 + 0.5) / 9, abs=1e-4)
    assert keyword["ndcg@10"] == pytest.approx((8 + 2 / (2 + 1 / log2(3))) / 9, abs=1e-4)
    assert keyword["map@100"] == pytest.approx((8 + 0.5) / 9, abs=1e-4)


def test_flat_and_hnsw_agree(evaluated):
    _, _, result, _ = evaluated
    rows = {(r["backend"], r["mode"]): r for r in result["results"]}
    for backend in available_backends():
        for mode in ("dense", "hybrid"):
            row = rows[(backend, mode)]
            for metric in ("ndcg@10", "recall@10", "recall@100", "mrr@10", "map@100"):
                assert 0.0 <= row[metric] <= 1.0
                if backend == "hnsw":
                    assert row[metric] == rows[("flat", mode)][metric], (mode, metric)


def test_second_run_reuses_the_store_and_reports(evaluated):
    dataset, data, _, table = evaluated
    stores = list((data / "eval").glob("tiny-*"))
    assert len(stores) == 1 and (stores[0] / "rag.db").exists()
    assert "reused" in table
    assert "max-pooling" in table
    assert "1 unknown query id(s) and 1 unknown document id(s)" in table
    assert "have no relevant document and are skipped" in table
    assert "nDCG@10" in table and "flat" in table
    assert "1 document(s) could not be ingested and count as never retrieved: beir:d24: empty" in table
    plots = sorted(p.name for p in (data / "eval" / "plots").glob("*.png"))
    assert plots == ["tiny-test-ndcg.png", "tiny-test-recall.png"]


def test_the_long_document_was_split_and_found(evaluated):
    """d23 is several passages; the query about its last sentence finds it (first, by MRR above)."""
    _, data, _, table = evaluated
    assert "documents split into several passages (1 here)" in table


def test_report_is_one_self_contained_html_page(evaluated):
    dataset, data, _, _ = evaluated
    result = CliRunner().invoke(main, ["eval", "report", str(dataset), "--data", str(data), "--modes", "dense,keyword",
                                       "--backends", "flat", "--answers", "0", "--json"])
    assert result.exit_code == 0, result.output
    summary = json.loads(result.stdout)
    page = Path(summary["report"])
    assert page == data / "eval" / "report-tiny-test.html"
    html = page.read_text()
    assert html.count('src="data:image/png;base64,') == 2  # nDCG bars and recall curves, inline
    assert "<td>flat</td><td>dense</td><td>no</td><td>1.0000</td>" in html
    assert "max-pooling" in html and "too few for a meaningful benchmark" in html  # 24 vectors: no ANN run
    assert "http" not in html.replace("http-equiv", "")  # nothing fetched from elsewhere
    assert [r["mode"] for r in summary["retrieval"]["results"]] == ["keyword", "dense"]
    assert summary["ann"] is None and summary["answers"] is None


# --- bad datasets --------------------------------------------------------------------------------


def _run(args):
    return CliRunner().invoke(main, ["eval", "retrieval", *args])


@pytest.mark.parametrize("breakage, message", [
    ("missing-corpus", "corpus.jsonl: file not found"),
    ("bad-json", "corpus.jsonl line 3: not valid JSON"),
    ("missing-field", "queries.jsonl line 2: missing field 'text'"),
    ("bad-score", "test.tsv line 3: score 'high' is not an integer"),
    ("bad-columns", "test.tsv line 2: expected 3 tab-separated columns"),
    ("empty-corpus", "corpus.jsonl: the corpus is empty"),
    ("missing-split", "qrels/dev.tsv: qrels file not found"),
    ("nothing-relevant", "no query with a relevant document in the corpus"),
])
def test_malformed_datasets_are_clear_errors(tmp_path, breakage, message):
    root = write_dataset(tmp_path / "broken", docs=dict(list(DOCS.items())[:4]))
    args = [str(root), "--data", str(tmp_path / "data")]
    corpus, queries, qrels = root / "corpus.jsonl", root / "queries.jsonl", root / "qrels" / "test.tsv"
    if breakage == "missing-corpus":
        corpus.unlink()
    elif breakage == "bad-json":
        lines = corpus.read_text().splitlines()
        lines[2] = lines[2][:-1]
        corpus.write_text("\n".join(lines) + "\n")
    elif breakage == "missing-field":
        lines = queries.read_text().splitlines()
        lines[1] = json.dumps({"_id": "q2", "question": "no text field"})
        queries.write_text("\n".join(lines) + "\n")
    elif breakage == "bad-score":
        qrels.write_text("query-id\tcorpus-id\tscore\nq1\td01\t1\nq2\td02\thigh\n")
    elif breakage == "bad-columns":
        qrels.write_text("query-id\tcorpus-id\tscore\nq1 d01 1\n")
    elif breakage == "empty-corpus":
        corpus.write_text("\n")
    elif breakage == "missing-split":
        args += ["--split", "dev"]
    elif breakage == "nothing-relevant":
        qrels.write_text("query-id\tcorpus-id\tscore\nq1\td01\t0\nq2\td99\t1\n")
    result = _run(args)
    assert result.exit_code == 1, result.output
    assert isinstance(result.exception, SystemExit) and "Traceback" not in result.output  # a ClickException, no crash
    assert message in result.output
    assert not (tmp_path / "data" / "eval").exists() or breakage == "nothing-relevant"


def test_loader_counts_unknown_qrels_without_failing(tmp_path):
    dataset = load_beir(write_dataset(tmp_path / "tiny"))
    assert "q11" not in dataset.qrels and "no-such-query" not in dataset.qrels
    assert "q10" not in dataset.queries  # judged, but nothing relevant
    assert dataset.qrels["q9"] == {"d18": 2, "d10": 1}
    assert list(dataset.queries)[:3] == ["q1", "q2", "q3"]  # the qrels file's order (what --limit takes)
    assert any("skipped 2 row(s)" in w for w in dataset.warnings)


def test_unknown_backend_and_mode_are_clear_errors(tmp_path):
    root = write_dataset(tmp_path / "tiny", docs=dict(list(DOCS.items())[:4]))
    result = _run([str(root), "--data", str(tmp_path / "data"), "--backends", "nope"])
    assert result.exit_code == 1 and "unknown backend(s) nope" in result.output
    result = _run([str(root), "--data", str(tmp_path / "data"), "--modes", "dense,fuzzy"])
    assert result.exit_code == 1 and "unknown mode(s) fuzzy" in result.output
    with pytest.raises(DatasetError, match="dataset directory not found"):
        load_beir(tmp_path / "nowhere")


def test_each_encoder_backend_has_its_own_store_and_rows(tmp_path, encoders):
    """--encoder-backends: the same rows per back end, keyword once, a documents/s figure for each."""
    dataset = write_dataset(tmp_path / "tiny")
    result = CliRunner().invoke(main, ["eval", "retrieval", str(dataset), "--data", str(tmp_path / "data"), "--json",
                                       "--backends", "flat", "--modes", "keyword,dense,hybrid",
                                       "--encoder-backends", "torch,onnx-int8"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.stdout)
    rows = [(r["encoder_backend"], r["backend"], r["mode"]) for r in report["results"]]
    assert rows == [(None, None, "keyword"), ("torch", "flat", "dense"), ("torch", "flat", "hybrid"),
                    ("onnx-int8", "flat", "dense"), ("onnx-int8", "flat", "hybrid")]
    assert set(report["ingest_documents_per_s"]) == {"torch", "onnx-int8"}
    assert all(rate > 0 for rate in report["ingest_documents_per_s"].values())
    stores = sorted(p.name for p in (tmp_path / "data" / "eval").iterdir() if p.name.startswith("tiny"))
    assert len(stores) == 2
    # every query names its document in words only it uses: both back ends rank it first
    assert all(r["mrr@10"] == 1.0 for r in report["results"] if r["mode"] == "dense")
    bad = CliRunner().invoke(main, ["eval", "retrieval", str(dataset), "--data", str(tmp_path / "data"),
                                    "--encoder-backends", "tensorrt"])
    assert bad.exit_code != 0 and "unknown encoder back end(s) tensorrt" in bad.output
