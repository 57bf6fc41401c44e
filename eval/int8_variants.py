"""Which int8 form of the ONNX encoder keeps float32's retrieval? A fast proxy before ``rag eval retrieval``.

A SciFact subset (every judged document plus random others) and the test queries are encoded by the
float32 export and by each variant; per variant: cosine to float32 (mean, worst), the share of each
query's dense top 10 it keeps, and dense nDCG@10 on the subset. Variants are made with ONNX Runtime's
quantizers from the cached float32 export:

- ``dynamic``: ``quantize_dynamic`` (the onnx-int8 form: uint8 per-channel weights, activations scaled
  per input: each text alone, as the encoder runs it; ``dynamic-rr`` 7-bit, ``dynamic-s8`` signed
  weights; a ``-qkv`` suffix quantizes the fused attention's query/key/value projection too),
  optionally leaving some MatMuls float32 (``:ex0o+ex1o`` = layers 0 and 1's feed-forward output;
  ``ex*i`` every feed-forward input; ``ex3q`` layer 3's attention projection, with ``-qkv``);
- ``static[-pct|-ent][-u8|-rr]``: ``quantize_static`` in QDQ form, activation ranges calibrated on
  Python-docs text (never SciFact) with MinMax, Percentile or Entropy;
- ``layerN``: only layer N's MatMuls quantized, to see which ones cost the most.

Variants are kept under <cache>/variants/<name>.onnx and reused (delete them after changing this file).
The figures of the current choice are in docs/benchmarks.md (Encoder back ends).

    python -m eval.int8_variants ../shared/datasets/scifact --cache rag-data/models --passages 500 \
        --variants "dynamic,layer0,dynamic-qkv:ex0o+ex1o+ex2o+ex3q+ex4q+ex5q"
"""
from __future__ import annotations

import argparse
import json
import logging
import random
from pathlib import Path

import numpy as np

from eval.beir import load_beir
from eval.metrics import evaluate
from rag.models.encoders import ONNX_FILE, OnnxEncoder, attention_blocks, onnx_export_dir, onnx_session

LAYER_PARTS = ("attention/output/dense", "intermediate/dense", "output/dense")


def matmul_names(model_path: Path) -> list[str]:
    """The fused graph's MatMuls: per layer attention output, feed-forward in and feed-forward out."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "MatMul"]


def pick(names: list[str], layers: list[int], parts: tuple[str, ...] = LAYER_PARTS) -> list[str]:
    """The MatMuls of the given layers and parts (e.g. layer 5's ``output/dense``)."""
    chosen = []
    for name in names:
        for layer in layers:
            for part in parts:
                if f"/layer.{layer}/{part}/" in name and not (part == "output/dense" and "attention/output" in name):
                    chosen.append(name)
    return chosen


def int8_share(model_path: Path) -> float:
    """The share of weight multiplications per token done in int8 (a load-free stand-in for speed):
    float32 MatMul and fused-attention weights against integer-MatMul ones."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    sizes = {t.name: int(np.prod(t.dims)) for t in graph.initializer}
    fp32 = int8 = 0
    for node in graph.node:
        if node.op_type in ("MatMul", "Attention"):
            fp32 += max((sizes.get(i, 0) for i in node.input), default=0)
        elif node.op_type in ("MatMulInteger", "DynamicQuantizeMatMul", "QAttention"):
            int8 += max((sizes.get(i, 0) for i in node.input), default=0)
    # QDQ form: a MatMul whose weight comes through a DequantizeLinear runs as an integer MatMul
    dequantized = {n.output[0]: sizes.get(n.input[0], 0) for n in graph.node if n.op_type == "DequantizeLinear"}
    int8 += sum(dequantized.get(n.input[1], 0) for n in graph.node if n.op_type == "MatMul" and len(n.input) > 1)
    return round(int8 / (int8 + fp32), 3)


def quantize_dynamic_variant(source: Path, target: Path, exclude: list[str] = (), reduce_range: bool = False,
                             signed: bool = False, attention: bool = False) -> None:
    from onnxruntime.quantization import QuantType, quantize_dynamic

    quantize_dynamic(str(source), str(target), weight_type=QuantType.QInt8 if signed else QuantType.QUInt8,
                     per_channel=True, reduce_range=reduce_range,
                     op_types_to_quantize=["MatMul", "Attention"] if attention else ["MatMul"],
                     nodes_to_exclude=list(exclude), extra_options={"DefaultTensorType": 1})


class _TextReader:
    """Feeds calibration batches to quantize_static, tokenized as the encoder does."""

    def __init__(self, encoder: OnnxEncoder, texts: list[str], batch_size: int = 16):
        self.batches = []
        tok = encoder.tokenizer
        for start in range(0, len(texts), batch_size):
            enc = tok(texts[start:start + batch_size], truncation=True, max_length=encoder.max_tokens,
                      padding="max_length", return_tensors="np")  # one shape: histogram calibrators need it
            self.batches.append({k: enc[k].astype(np.int64) for k in ("input_ids", "attention_mask", "token_type_ids")})
        self._it = iter(self.batches)

    def get_next(self):
        return next(self._it, None)

    def rewind(self):
        self._it = iter(self.batches)


def calibration_texts(count: int, seed: int = 0) -> list[str]:
    """Python-docs passages (never SciFact), joined into texts of abstract length (about 1,200 chars)."""
    from eval.corpora import real_passages

    passages = real_passages(limit=count * 6)
    random.Random(seed).shuffle(passages)
    texts, current = [], ""
    for p in passages:
        current = f"{current} {p}".strip()
        if len(current) > 1200:
            texts.append(current)
            current = ""
        if len(texts) == count:
            break
    return texts


def quantize_static_variant(source: Path, target: Path, reader: _TextReader, method: str = "MinMax",
                            exclude: list[str] = (), unsigned_weights: bool = False, reduce_range: bool = False,
                            extra: dict | None = None) -> None:
    import onnx
    from onnxruntime.quantization import CalibrationMethod, QuantFormat, QuantType, quantize_static

    # the fused operators have no type inference: name the MatMuls' inputs float, or they stay unquantized
    model = onnx.load(str(source))
    known = {v.name for v in model.graph.value_info}
    for node in model.graph.node:
        if node.op_type == "MatMul" and node.input[0] not in known:
            info = onnx.helper.make_tensor_value_info(node.input[0], onnx.TensorProto.FLOAT, None)
            model.graph.value_info.append(info)
    typed = target.with_name(target.name + ".typed.onnx")
    onnx.save(model, str(typed))
    reader.rewind()
    try:
        quantize_static(str(typed), str(target), reader, quant_format=QuantFormat.QDQ, per_channel=True,
                        op_types_to_quantize=["MatMul"], nodes_to_exclude=list(exclude),
                        activation_type=QuantType.QUInt8, reduce_range=reduce_range,
                        weight_type=QuantType.QUInt8 if unsigned_weights else QuantType.QInt8,
                        calibrate_method=getattr(CalibrationMethod, method),
                        extra_options={"DefaultTensorType": 1, **(extra or {})})
    finally:
        typed.unlink(missing_ok=True)


def subset(dataset, passages: int, seed: int = 0) -> tuple[list[str], list[str]]:
    """Doc ids: every judged one, then random others up to ``passages``."""
    judged = sorted({d for docs in dataset.qrels.values() for d in docs if d in dataset.corpus})
    rest = sorted(set(dataset.corpus) - set(judged))
    random.Random(seed).shuffle(rest)
    ids = judged + rest[:max(0, passages - len(judged))]
    return ids, [dataset.corpus[d].full_text for d in ids]


def encode_with(encoder: OnnxEncoder, model: Path, texts: list[str]) -> np.ndarray:
    """The encoder's own tokenizing and pooling (each text alone), over another ONNX file."""
    import copy

    other = copy.copy(encoder)
    other._session = onnx_session(model, 1)
    return other.encode(texts)


def compare(ref_docs, ref_queries, docs, queries, doc_ids, query_ids, dataset) -> dict:
    cos = np.sum(ref_docs * docs, axis=1)
    qcos = np.sum(ref_queries * queries, axis=1)
    top_ref = np.argsort(-(ref_queries @ ref_docs.T), axis=1)[:, :10]
    scores = queries @ docs.T
    top = np.argsort(-scores, axis=1)[:, :10]
    overlap = np.mean([len(set(a) & set(b)) / 10 for a, b in zip(top_ref, top)])
    run = {q: {doc_ids[j]: float(scores[i, j]) for j in np.argsort(-scores[i])[:100]} for i, q in enumerate(query_ids)}
    return {"cos_mean": round(float(cos.mean()), 5), "cos_min": round(float(cos.min()), 4),
            "query_cos_mean": round(float(qcos.mean()), 5), "top10_overlap": round(float(overlap), 4),
            "ndcg@10": round(evaluate(dataset.qrels, run)["ndcg@10"], 4)}


def make_variant(variant: str, fp32: Path, target: Path, encoder: OnnxEncoder, calibration: int = 300) -> None:
    """Write one named variant (see the module docstring) of the float32 export ``fp32`` to ``target``."""
    names = matmul_names(fp32)
    attention = attention_blocks(fp32)
    kind, _, rest = variant.partition(":")
    exclude = []
    for item in filter(None, rest.split("+")):  # ex<layer or *><part: o, i, a, q, or none for the whole layer>
        if not item.startswith("ex") or len(item) < 3 or item[3:] not in ("", "o", "i", "a", "q"):
            raise ValueError(f"unknown exclusion {item!r} in variant {variant!r}")
        layers = list(range(12)) if item[2] == "*" else [int(item[2])]
        if item[3:] == "q":  # the fused attention's query/key/value projection (with -qkv)
            exclude += [attention[layer] for layer in layers if layer < len(attention)]
            continue
        parts = {"": LAYER_PARTS, "o": ("output/dense",), "i": ("intermediate/dense",),
                 "a": ("attention/output/dense",)}[item[3:]]
        exclude += pick(names, layers, parts)
    if kind.startswith("layer"):  # only layer N quantized
        exclude = [n for n in names if n not in pick(names, [int(kind[5:])])]
        kind = "dynamic"
    if kind.removesuffix("-qkv") in ("dynamic", "dynamic-rr", "dynamic-s8"):
        quantize_dynamic_variant(fp32, target, exclude, reduce_range="-rr" in kind, signed="-s8" in kind,
                                 attention=kind.endswith("-qkv"))
    elif kind.startswith("static"):
        method = "Percentile" if "-pct" in kind else "Entropy" if "-ent" in kind else "MinMax"
        reader = _TextReader(encoder, calibration_texts(calibration))
        quantize_static_variant(fp32, target, reader, method, exclude, unsigned_weights="-u8" in kind,
                                reduce_range="-rr" in kind)
    else:
        raise ValueError(f"unknown variant {variant!r}")


def measure(dataset_dir: str | Path, cache: str | Path, variants: list[str], passages: int = 2000,
            work: str | Path | None = None, calibration: int = 300):
    """Yield one row per variant (float32 first): cosine to float32, top-10 kept, subset nDCG@10."""
    dataset = load_beir(dataset_dir)
    encoder = OnnxEncoder(cache_dir=cache)
    fp32 = onnx_export_dir(encoder.path, cache) / ONNX_FILE
    work = Path(work) if work else Path(cache) / "variants"
    work.mkdir(parents=True, exist_ok=True)
    doc_ids, texts = subset(dataset, passages)
    query_ids = sorted(dataset.queries)
    queries = [dataset.queries[q] for q in query_ids]
    ref_docs, ref_queries = encode_with(encoder, fp32, texts), encode_with(encoder, fp32, queries)
    logging.disable(logging.WARNING)  # the quantizers' advice to pre-process (shape inference fails here)
    try:
        yield {"variant": "float32", "int8_share": 0.0,
               **compare(ref_docs, ref_queries, ref_docs, ref_queries, doc_ids, query_ids, dataset)}
        for variant in variants:
            target = work / f"{variant}.onnx"
            if not target.exists():
                make_variant(variant, fp32, target, encoder, calibration)
            docs, qs = encode_with(encoder, target, texts), encode_with(encoder, target, queries)
            yield {"variant": variant, "int8_share": int8_share(target),
                   **compare(ref_docs, ref_queries, docs, qs, doc_ids, query_ids, dataset)}
    finally:
        logging.disable(logging.NOTSET)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("dataset")
    parser.add_argument("--cache", required=True, help="model cache holding (or to hold) the float32 export")
    parser.add_argument("--passages", type=int, default=2000)
    parser.add_argument("--variants", default="dynamic",
                        help="comma-separated: dynamic[-s8|-rr][-qkv], layerN (only layer N), "
                             "static[-pct|-ent][-u8|-rr], each with an optional :ex<layer|*><o|i|a|q>+... of MatMuls left float32, e.g. dynamic:ex0o+ex1o")
    parser.add_argument("--out", default=None, help="JSON lines of results, appended")
    parser.add_argument("--calibration", type=int, default=300, help="calibration texts for static variants")
    args = parser.parse_args()
    for row in measure(args.dataset, args.cache, args.variants.split(","), args.passages,
                       calibration=args.calibration):
        print(json.dumps(row), flush=True)
        if args.out:
            with open(args.out, "a", encoding="utf-8") as f:
                f.write(json.dumps(row) + "\n")


if __name__ == "__main__":
    main()
