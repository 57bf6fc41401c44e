"""The int8 variant measurement (eval/int8_variants.py) on a small BEIR dataset and the real export: the
variant it makes of the shipped choice is the shipped onnx-int8 graph, and its figures say so."""
from __future__ import annotations

import numpy as np
import pytest
from test_eval_retrieval import write_dataset

from eval.int8_variants import measure
from rag.models.encoders import FLOAT_FFN_OUTPUT_LAYERS, INT8_ATTENTION_LAYERS


def test_variants_are_measured_against_float32(tmp_path, encoders, model_cache):
    dataset = write_dataset(tmp_path / "beir")
    shipped = "dynamic-qkv:" + "+".join([f"ex{layer}o" for layer in range(FLOAT_FFN_OUTPUT_LAYERS)] +
                                        [f"ex{layer}q" for layer in range(INT8_ATTENTION_LAYERS, 6)])
    rows = {row["variant"]: row for row in measure(dataset, model_cache, [shipped, "layer5"], passages=30,
                                                   work=tmp_path / "variants")}
    assert list(rows) == ["float32", shipped, "layer5"]
    assert rows["float32"]["cos_mean"] == 1.0 and rows["float32"]["top10_overlap"] == 1.0
    # 15 of 18 MatMuls and 3 of 6 fused attentions' projections int8; float32: 3 feed-forward outputs and
    # the last 3 attention projections
    assert rows[shipped]["int8_share"] == pytest.approx((15 * 384 * 384 + 9 * 384 * 1536) /
                                                        (6 * 384 * 384 * 4 + 12 * 384 * 1536), abs=1e-3)
    assert rows["layer5"]["int8_share"] == pytest.approx(0.125, abs=1e-3)
    for name in (shipped, "layer5"):  # close to float32, not equal
        assert 0.99 < rows[name]["cos_mean"] < 1.0 and rows[name]["cos_min"] > 0.97
    assert rows["layer5"]["cos_mean"] > rows[shipped]["cos_mean"]  # one layer quantized errs less than five

    # the variant named after the shipped choice is the shipped graph: same vectors as the onnx-int8 encoder
    from eval.int8_variants import encode_with

    texts = ["The keeper trimmed the lamp wick every evening.", "Sourdough rises slowly in a cold kitchen."]
    ours = encode_with(encoders["onnx"], tmp_path / "variants" / f"{shipped}.onnx", texts)
    assert np.allclose(ours, encoders["onnx-int8"].encode(texts), atol=1e-5)


def test_an_unknown_variant_is_a_clear_error(tmp_path, model_cache):
    dataset = write_dataset(tmp_path / "beir")
    with pytest.raises(ValueError, match="unknown variant 'int3'"):
        list(measure(dataset, model_cache, ["int3"], passages=5, work=tmp_path / "variants"))
    with pytest.raises(ValueError, match="unknown exclusion 'keep0'"):
        list(measure(dataset, model_cache, ["dynamic:keep0"], passages=5, work=tmp_path / "variants"))
