"""Encoder back ends (torch, onnx, onnx-int8): each loads offline and encodes, agrees with torch, makes
its ONNX export once, and the store records which one built it."""
from __future__ import annotations

import json
import os
import sqlite3
import warnings

import numpy as np
import pytest
from click.testing import CliRunner

from eval.corpora import real_passages
from rag.cli import main
from rag.models.encoders import (DEFAULT_ENCODER, ENCODER_BACKENDS, EXPORT_VERSION, FLOAT_FFN_OUTPUT_LAYERS, INT8_ATTENTION_LAYERS,
                          INT8_FILE, ONNX_FILE, EncoderError, OnnxEncoder, attention_blocks, ffn_output_matmuls,
                          load_encoder, onnx_export_dir, vectors_tag)
from rag.errors import RagError
from rag.ingest.pipeline import ingest_paths
from rag.library import open_library
from rag.search.ranking import search

# Cosine against torch on real passages, (mean, worst) that each back end must reach. Measured on
# 1,000 Python-docs passages: onnx 1.00000 / 1.00000 (to 5 places), onnx-int8 0.9972 / 0.9917.
AGREEMENT = {"torch": (0.99999, 0.99999), "onnx": (0.99999, 0.9999), "onnx-int8": (0.995, 0.98)}

NOTES = {
    "lighthouse.md": "# Lighthouse keepers\n\nThe keeper trimmed the lamp wick every evening and logged passing ships.",
    "bread.txt": "Sourdough bread rises slowly: the starter's wild yeast needs a warm kitchen and a long night.",
    "glacier.md": "# Glacier report\n\nThe glacier retreated forty metres this year, leaving moraine and meltwater lakes.",
}


@pytest.fixture(scope="module")
def passages():
    return real_passages(300)


@pytest.fixture()
def notes(tmp_path):
    folder = tmp_path / "notes"
    folder.mkdir()
    for name, text in NOTES.items():
        (folder / name).write_text(text, encoding="utf-8")
    return folder


@pytest.mark.parametrize("name", ENCODER_BACKENDS)
def test_each_backend_loads_offline_and_encodes(encoders, name):
    encoder = encoders[name]
    assert os.environ["HF_HUB_OFFLINE"] == "1"
    assert (encoder.backend, encoder.name, encoder.dim, encoder.max_tokens) == (name, DEFAULT_ENCODER, 384, 256)
    texts = ["how do I read a file line by line", "x", "word " * 1000]  # the last one is cut at 256 tokens
    vectors = encoder.encode(texts)
    assert vectors.shape == (3, 384) and vectors.dtype == np.float32
    assert np.allclose(np.linalg.norm(vectors, axis=1), 1.0, atol=1e-5)
    # a query alone gets the vector it gets in a batch (ONNX: the very same, see the next test)
    alone = encoder.encode([texts[0]])[0]
    assert np.array_equal(alone, vectors[0]) if name != "torch" else float(alone @ vectors[0]) > 0.99999
    assert encoder.encode([]).shape == (0, 384)
    assert encoder.count_tokens(["hello world"]) == [2]


@pytest.mark.parametrize("name", ["onnx", "onnx-int8"])
def test_a_vector_is_a_function_of_its_text_alone(encoders, passages, name):
    """int8 activations are scaled over the whole input, and float32 GEMMs round with the batch's
    shape: each text is encoded alone, so its vector is bit-identical alone, in any batch (beside
    longer texts that would have padded it, or shorter ones), in any order and on any number of workers."""
    texts = ["x", "how do I read a file line by line", "word " * 1000] + passages[:80]  # short, long, cut at 256
    encoder = encoders[name]
    alone = np.stack([encoder.encode([text])[0] for text in texts])
    assert np.array_equal(encoder.encode(texts), alone)  # 83 texts: spread over the workers
    assert np.array_equal(encoder.encode(texts[::-1]), alone[::-1])
    assert np.array_equal(encoder.encode([texts[2], texts[0], texts[1]]), alone[[2, 0, 1]])
    one_worker, three = load_encoder(backend=name, threads=1), load_encoder(backend=name, threads=3)
    assert one_worker is not encoder and np.array_equal(one_worker.encode(texts[:20]), alone[:20])
    assert np.array_equal(three.encode(texts[::2]), alone[::2])
    assert np.array_equal(encoder.encode([texts[1]] * 3), alone[[1, 1, 1]])  # and again, unchanged


@pytest.mark.parametrize("name", ["onnx", "onnx-int8"])
def test_vectors_agree_with_torch(encoders, passages, name):
    reference = encoders["torch"].encode(passages)
    vectors = encoders[name].encode(passages)
    cosine = np.sum(vectors * reference, axis=1)
    mean, worst = AGREEMENT[name]
    assert cosine.mean() >= mean and cosine.min() >= worst, (cosine.mean(), cosine.min())
    # the neighbour each passage finds among the others is (nearly) always the one torch finds
    ours, theirs = vectors @ reference.T, reference @ reference.T
    np.fill_diagonal(ours, -1)
    np.fill_diagonal(theirs, -1)
    assert (ours.argmax(1) == theirs.argmax(1)).mean() >= (0.99 if name == "onnx" else 0.95)  # int8: 0.98


def test_export_is_made_once_reused_and_remade_when_broken(tmp_path, encoders, passages):
    cache = tmp_path / "cache"
    first = OnnxEncoder(quantized=True, cache_dir=cache)
    directory = onnx_export_dir(first.path, cache)
    assert first.file == directory / INT8_FILE
    made = {p.name: p.stat().st_mtime_ns for p in directory.glob("*.onnx")}
    assert set(made) == {ONNX_FILE, INT8_FILE}
    assert json.loads((directory / "manifest.json").read_text())["source"] == first.path

    with warnings.catch_warnings():
        warnings.simplefilter("error")  # no "making it again"
        second = OnnxEncoder(quantized=True, cache_dir=cache)
    assert {p.name: p.stat().st_mtime_ns for p in directory.glob("*.onnx")} == made  # reused, not made again
    texts = passages[:20]
    expected = first.encode(texts)
    assert np.array_equal(second.encode(texts), expected)
    # the export is deterministic: the session's encoder (made in another cache) gives the same vectors
    assert np.allclose(encoders["onnx-int8"].encode(texts), expected, atol=1e-4)

    (directory / INT8_FILE).write_bytes(b"not an onnx graph")  # a torn or corrupt file
    with pytest.warns(UserWarning, match="making it again"):
        third = OnnxEncoder(quantized=True, cache_dir=cache)
    assert np.allclose(third.encode(texts), expected, atol=1e-6)

    (directory / ONNX_FILE).write_bytes((directory / ONNX_FILE).read_bytes()[:4096])  # truncated float32 export
    with pytest.warns(UserWarning, match="making it again"):
        fourth = OnnxEncoder(quantized=False, cache_dir=cache)
    assert np.allclose(fourth.encode(texts), encoders["onnx"].encode(texts), atol=1e-5)

    (directory / INT8_FILE).unlink()  # missing: quantized again from the float32 export
    assert np.allclose(OnnxEncoder(quantized=True, cache_dir=cache).encode(texts), expected, atol=1e-6)


def test_int8_export_keeps_the_costliest_weights_float(encoders):
    """The first layers' feed-forward output MatMuls and the last layers' attention projections stay
    float32; every other weight multiplication runs on int8 weights."""
    import onnx

    int8 = onnx.load(str(encoders["onnx-int8"].file)).graph
    kept = ffn_output_matmuls(encoders["onnx"].file)
    assert len(kept) == FLOAT_FFN_OUTPUT_LAYERS and all("/output/dense/" in name for name in kept)
    assert sorted(n.name for n in int8.node if n.op_type == "MatMul") == sorted(kept)
    fp32 = onnx.load(str(encoders["onnx"].file)).graph.node
    fp32_matmuls = [n for n in fp32 if n.op_type == "MatMul"]
    assert len(fp32_matmuls) == 18  # six layers: attention output, feed-forward in and out
    quantized = [n for n in int8.node if n.op_type in ("MatMulInteger", "DynamicQuantizeMatMul")]
    assert len(quantized) == len(fp32_matmuls) - FLOAT_FFN_OUTPUT_LAYERS
    blocks = attention_blocks(encoders["onnx"].file)
    assert len(blocks) == 6 and sum(n.op_type == "Attention" for n in fp32) == 6
    assert sorted(n.name for n in int8.node if n.op_type == "Attention") == sorted(blocks[INT8_ATTENTION_LAYERS:])
    assert sum(n.op_type == "QAttention" for n in int8.node) == INT8_ATTENTION_LAYERS


def test_cached_vectors_are_keyed_by_back_end_and_int8_export():
    """Caches of stored vectors (eval stores, benchmark vectors): float32 back ends keep their old keys,
    int8 ones name the export, so a new export never reuses an old one's vectors."""
    assert [vectors_tag(b) for b in ("torch", "onnx")] == ["torch", "onnx"]
    assert vectors_tag("onnx-int8") == f"onnx-int8-v{EXPORT_VERSION}"
    with pytest.raises(EncoderError, match="unknown encoder back end 'int4'"):
        vectors_tag("int4")


def test_a_missing_model_directory_is_a_clear_error(tmp_path):
    with pytest.raises(EncoderError, match="encoder model directory not found"):
        OnnxEncoder(str(tmp_path / "no-such-model"), cache_dir=tmp_path)


def test_store_records_the_backend_and_refuses_mixing_int8_with_float(tmp_path, notes, encoders):
    int8 = tmp_path / "int8"
    library = open_library(int8, encoder=encoders["onnx-int8"])
    assert ingest_paths(library, [str(notes)]).added == 3
    library.close()

    again = open_library(int8)  # no choice given: the store's
    assert again.encoder_backend == "onnx-int8" and again.stats()["encoder_backend"] == "onnx-int8"
    # int8 vectors depend on the export's quantization: a store made by an earlier export is refused
    again._store.set_meta("encoder_export", str(EXPORT_VERSION - 1))
    again.close()
    with pytest.raises(RagError, match=f"earlier onnx-int8 export .version {EXPORT_VERSION - 1}; "
                                       f"this release makes version {EXPORT_VERSION}"):
        open_library(int8)
    store = open_library(tmp_path / "fresh", encoder_backend="onnx-int8")
    assert store._store.meta("encoder_export") == str(EXPORT_VERSION)
    store.close()
    with sqlite3.connect(int8 / "rag.db") as raw:  # the current export again, for the refusals below
        raw.execute("UPDATE meta SET value = ? WHERE key = 'encoder_export'", (str(EXPORT_VERSION),))
    for kwargs in ({"encoder_backend": "torch"}, {"encoder_backend": "onnx"}, {"encoder": encoders["torch"]}):
        with pytest.raises(RagError, match="encoded with the onnx-int8 encoder back end, whose vectors differ"):
            open_library(int8, **kwargs)

    # torch and onnx vectors agree to cosine 0.99999: a store built by one is searched by the other
    fp32 = tmp_path / "fp32"
    library = open_library(fp32, encoder=encoders["torch"])
    ingest_paths(library, [str(notes)])
    library.close()
    mixed = open_library(fp32, encoder=encoders["onnx"])
    hits = search(mixed, "who looked after the lamp", k=1, mode="dense")
    assert hits[0].document.title == "Lighthouse keepers"
    assert mixed.encoder_backend == "onnx" and mixed._store.meta("encoder_backend") == "torch"
    # a store from before back ends were recorded holds torch vectors
    mixed._store.conn.execute("DELETE FROM meta WHERE key = 'encoder_backend'")
    mixed.close()
    assert open_library(fp32).encoder_backend == "torch"
    with pytest.raises(RagError, match="encoded with the torch encoder back end"):
        open_library(fp32, encoder_backend="onnx-int8")

    # an empty store takes the back end it is given, and may change it until it holds vectors
    empty = tmp_path / "empty"
    assert open_library(empty, encoder_backend="onnx")._store.meta("encoder_backend") == "onnx"
    assert open_library(empty, encoder_backend="onnx-int8")._store.meta("encoder_backend") == "onnx-int8"
    with pytest.raises(RagError, match="unknown encoder back end 'tensorrt'"):
        open_library(empty, encoder_backend="tensorrt")


def test_cli_ingest_with_onnx_int8_then_search(tmp_path, notes, encoders):
    data = str(tmp_path / "data")
    runner = CliRunner()
    result = runner.invoke(main, ["ingest", str(notes), "--data", data, "--no-progress",
                                  "--encoder-backend", "onnx-int8"])
    assert result.exit_code == 0, result.output
    assert "3 added" in result.output

    result = runner.invoke(main, ["search", "bread dough and yeast", "--data", data, "--mode", "dense", "--json", "-k", "1"])
    assert result.exit_code == 0, result.output
    assert json.loads(result.output)["results"][0]["document"]["path"].endswith("bread.txt")
    stats = json.loads(runner.invoke(main, ["stats", "--data", data, "--json"]).output)
    assert stats["encoder_backend"] == "onnx-int8" and stats["passages"] == 3
    assert "all-MiniLM-L6-v2 (384 dims), onnx-int8" in runner.invoke(main, ["stats", "--data", data]).output

    (notes / "more.txt").write_text("Meltwater lakes form where the ice used to be.", encoding="utf-8")
    result = runner.invoke(main, ["ingest", str(notes), "--data", data, "--no-progress", "--encoder-backend", "torch"])
    assert result.exit_code == 1 and "use --encoder-backend onnx-int8" in result.output
    result = runner.invoke(main, ["ingest", str(notes), "--data", data, "--no-progress"])  # follows the store
    assert result.exit_code == 0 and "1 added" in result.output, result.output
