"""`rag tune retriever`: train the query-side adapter (rag.models.query_adapter) on question -> passage pairs.

The pairs come from the user's own store: a question's positives are the stored passages that hold
one of its answers and lie in its context (most of the passage's 5-word shingles are the context's),
or the passage its JSONL record names. The passage side is the vectors already stored, fixed: the
loss is a softmax of the question's cosine with every candidate passage (InfoNCE, temperature 0.05),
all positives in the numerator. When the whole store fits in ``pool`` vectors every stored passage
is a candidate in every step, so the hard negatives (what BM25 and the plain encoder rank above the
gold passage) are always among them; a larger store gives each step the positives, the BM25 and dense
top ``hard_negatives`` of every training question, and a random sample up to ``pool``.

After each epoch the validation questions (whole articles or documents kept out) are ranked against
the store; the best epoch is kept (mean reciprocal rank in the top 20, dense), and it is installed only
when it also ranks the validation questions' passages better than the plain encoder in hybrid search,
the product's default.
"""
from __future__ import annotations

import json
import math
import random
import sys
import time
from collections import Counter, defaultdict
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable

import numpy as np

from rag.errors import RagError
from rag.tune.qa_data import QAExample

SHINGLE = 5  # words
CONTEXT_SHARE = 0.5  # of a passage's shingles that must be its question's context's
DEPTH = 20  # ranks looked at when validating


@dataclass
class RetrieverConfig:
    """The recipe: saved in the manifest beside the adapter."""

    epochs: int = 2
    learning_rate: float = 1e-4  # 3e-4 overfits the training articles within an epoch (SQuAD dev, held-out MRR)
    batch_size: int = 32
    rank: int = 8
    alpha: int = 16
    dropout: float = 0.1
    temperature: float = 0.05
    warmup: float = 0.1  # share of the steps
    weight_decay: float = 0.01
    validation_share: float = 0.2
    seed: int = 0
    pool: int = 100_000  # candidate passages scored in each step
    hard_negatives: int = 20  # per question and ranking, when the store exceeds the pool


@dataclass
class RetrieverRun:
    config: RetrieverConfig
    losses: list[tuple[int, float]] = field(default_factory=list)
    validation: list[dict] = field(default_factory=list)  # per epoch, exact dense ranking over the store
    best_epoch: int = 0  # 0: the plain encoder
    seconds: float = 0.0


# --- positives ------------------------------------------------------------------------------------

def _words(text: str) -> list[str]:
    return text.lower().split()


def _shingles(words: list[str]) -> set[int]:
    if len(words) < SHINGLE:
        return {hash(tuple(words))} if words else set()
    return {hash(tuple(words[i:i + SHINGLE])) for i in range(len(words) - SHINGLE + 1)}


def gold_passages(library, examples: list[QAExample]) -> list[list[int]]:
    """For each question, the ids of the stored passages that hold one of its answers and lie in its context."""
    passages = library.passages(library.passage_ids().tolist())
    where: dict[int, list[int]] = defaultdict(list)  # shingle -> passages holding it
    folded, sizes = {}, {}
    for pid, passage in passages.items():
        words = _words(passage.text)
        folded[pid] = " ".join(words)
        shingles = _shingles(words)
        sizes[pid] = len(shingles)
        for h in shingles:
            where[h].append(pid)
    in_context: dict[str, list[int]] = {}
    golds = []
    for e in examples:
        if e.context not in in_context:
            shared = Counter(pid for h in _shingles(_words(e.context)) for pid in where.get(h, ()))
            in_context[e.context] = sorted(pid for pid, n in shared.items() if n >= CONTEXT_SHARE * sizes[pid])
        answers = [" ".join(_words(a)) for a in e.answer_texts]
        golds.append([pid for pid in in_context[e.context] if any(a and a in folded[pid] for a in answers)])
    return golds


# --- ranking --------------------------------------------------------------------------------------

def rank_scores(rankings: list[list[int]], golds: list[list[int]]) -> dict:
    """Share of questions with a gold passage at rank 1, in the top 5 and top 20; mean reciprocal rank (top 20)."""
    firsts = []
    for ranking, gold in zip(rankings, golds):
        gold = set(gold)
        firsts.append(next((r for r, pid in enumerate(ranking[:DEPTH], 1) if pid in gold), None))
    n = max(1, len(firsts))
    return {"questions": len(firsts),
            "top1": sum(1 for r in firsts if r == 1) / n,
            "top5": sum(1 for r in firsts if r and r <= 5) / n,
            "top20": sum(1 for r in firsts if r) / n,
            "mrr": sum(1.0 / r for r in firsts if r) / n}


def exact_rankings(query_vectors: np.ndarray, ids: np.ndarray, vectors: np.ndarray) -> list[list[int]]:
    """Top ``DEPTH`` passage ids of each query by cosine with every stored vector (no index: exact)."""
    out = []
    for start in range(0, len(query_vectors), 256):
        scores = query_vectors[start:start + 256] @ vectors.T
        top = np.argsort(-scores, axis=1, kind="stable")[:, :DEPTH]
        out += [[int(ids[j]) for j in row] for row in top]
    return out


def search_rankings(library, questions: list[str], query_vectors: np.ndarray, mode: str) -> list[list[int]]:
    """What the product's search returns (the library's index; BM25 fused for hybrid) for each question."""
    from rag.search.ranking import search

    return [[h.passage.id for h in search(library, q, k=DEPTH, mode=mode, query_vector=v)]
            for q, v in zip(questions, query_vectors)]


def encode_questions(model, questions: list[str], batch_size: int = 64) -> np.ndarray:
    """Unit vectors from the model being trained (torch, no gradient)."""
    import torch

    model.eval()
    out = []
    with torch.no_grad():
        for start in range(0, len(questions), batch_size):
            features = model.preprocess(questions[start:start + batch_size])
            out.append(torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1).numpy())
    return np.concatenate(out).astype(np.float32) if out else np.zeros((0, 0), np.float32)


# --- training -------------------------------------------------------------------------------------

def candidate_pool(library, ids: np.ndarray, questions: list[str], golds: list[list[int]],
                   config: RetrieverConfig) -> np.ndarray:
    """Row numbers (into the store's vectors) scored in each step: every row when they fit in ``pool``."""
    if len(ids) <= config.pool:
        return np.arange(len(ids))
    from rag.search.ranking import dense_ranking, keyword_ranking

    chosen = {pid for gold in golds for pid in gold}
    vectors = library.encoder.encode(questions)
    for question, vector in zip(questions, vectors):
        chosen.update(pid for pid, _ in keyword_ranking(library, question, config.hard_negatives))
        chosen.update(pid for pid, _ in dense_ranking(library, question, config.hard_negatives, query_vector=vector))
    row_of = {int(pid): row for row, pid in enumerate(ids)}
    rows = {row_of[pid] for pid in chosen if pid in row_of}
    rest = np.setdiff1d(np.arange(len(ids)), np.fromiter(rows, dtype=np.int64, count=len(rows)))
    fill = max(0, config.pool - len(rows))
    sample = np.random.default_rng(config.seed).choice(rest, size=min(fill, len(rest)), replace=False)
    return np.sort(np.concatenate([np.fromiter(rows, dtype=np.int64, count=len(rows)), sample]))


def train_query_adapter(library, train: list[tuple[str, list[int]]], validation: list[tuple[str, list[int]]],
                        config: RetrieverConfig, progress: Callable[[str], None] | None = None, bar: bool = True):
    """Train on (question, gold passage ids) pairs; returns the model holding the best epoch's adapter
    (the plain encoder's weights if no epoch beat it) and the run's record."""
    import torch

    from rag.models.query_adapter import new_query_model
    from rag.tune.reader import Steps, linear_schedule

    say = progress or (lambda message: None)
    started = time.perf_counter()
    ids, vectors = library.embeddings()
    rows = candidate_pool(library, ids, [q for q, _ in train], [g for _, g in train], config)
    pool = torch.from_numpy(np.ascontiguousarray(vectors[rows]))
    column = {int(ids[r]): c for c, r in enumerate(rows)}
    model = new_query_model(library.encoder.path, config.rank, config.alpha, config.dropout, config.seed)
    parameters = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(parameters, lr=config.learning_rate, weight_decay=config.weight_decay)
    steps_per_epoch = math.ceil(len(train) / config.batch_size)
    total = steps_per_epoch * config.epochs
    scheduler = linear_schedule(optimizer, total, config.warmup)
    run = RetrieverRun(config)
    say(f"{len(train):,} training and {len(validation):,} validation questions; {len(rows):,} candidate "
        f"passages a step; {total:,} steps")

    def validate() -> dict:
        questions = [q for q, _ in validation]
        return rank_scores(exact_rankings(encode_questions(model, questions), ids, vectors), [g for _, g in validation])

    trainable = lambda: {k: v.detach().clone() for k, v in model.state_dict().items() if "lora_" in k}  # noqa: E731
    best = None
    if validation:
        with model[0].model.disable_adapter():
            base = validate()
        run.validation.append({"epoch": 0, **base})
        best = (base["mrr"], 0, trainable())
        say(f"plain encoder: validation top-5 {base['top5']:.3f}, MRR {base['mrr']:.3f}")
    steps = Steps(parameters, optimizer, scheduler, total, run.losses, 10, bar, "tuning retriever")
    rng = random.Random(config.seed)
    try:
        for epoch in range(config.epochs):
            model.train()
            order = list(range(len(train)))
            rng.shuffle(order)
            for start in range(0, len(order), config.batch_size):
                batch = [train[i] for i in order[start:start + config.batch_size]]
                features = model.preprocess([q for q, _ in batch])
                query = torch.nn.functional.normalize(model(features)["sentence_embedding"], dim=-1)
                logits = query @ pool.T / config.temperature
                gold = torch.zeros_like(logits, dtype=torch.bool)
                for row, (_, pids) in enumerate(batch):
                    gold[row, [column[p] for p in pids if p in column]] = True
                steps.take((torch.logsumexp(logits, 1)
                            - torch.logsumexp(logits.masked_fill(~gold, -math.inf), 1)).mean(), epoch)
            if validation:
                scores = validate()
                run.validation.append({"epoch": epoch + 1, **scores})
                say(f"epoch {epoch + 1}: validation top-5 {scores['top5']:.3f}, MRR {scores['mrr']:.3f}")
                if scores["mrr"] > best[0]:
                    best = (scores["mrr"], epoch + 1, trainable())
    finally:
        steps.close()
    if best is not None:
        run.best_epoch = best[1]
        model.load_state_dict(best[2], strict=False)
    else:
        run.best_epoch = config.epochs
    model.eval()
    run.seconds = time.perf_counter() - started
    return model, run


# --- `rag tune retriever`, end to end -------------------------------------------------------------

def _open_f1(library, examples: list[QAExample], query_vectors: np.ndarray, k: int, mode: str, say) -> dict:
    """The span reader's open-setting EM/F1 when dense search takes ``query_vectors``."""
    from rag.models.span_reader import load_span_reader, reader_directory
    from rag.tune.reader import open_scores, read_open

    reader = load_span_reader(reader_directory(library.data_dir))
    rows = read_open(library, reader, examples, k=k, mode=mode, progress=say, search_vectors=query_vectors)
    return open_scores(rows, examples, reader.settings.retrieval_weight, reader.settings.no_answer_margin)


def measure(library, examples: list[QAExample], golds: list[list[int]], query_vectors: np.ndarray,
            k: int, open_setting: bool, say) -> dict:
    """Where the product's search puts the gold passages (dense and hybrid), and the reader's EM/F1."""
    questions = [e.question for e in examples]
    scores = {mode: rank_scores(search_rankings(library, questions, query_vectors, mode), golds)
              for mode in ("dense", "hybrid")}
    if open_setting:
        scores["open"] = {**_open_f1(library, examples, query_vectors, k, "hybrid", say), "k": k, "mode": "hybrid"}
    return scores


def tune_retriever(data_path: str | Path, data_dir: str | Path | None, config: RetrieverConfig,
                   name: str | None = None, k: int = 5, open_setting: bool = True,
                   progress: Callable[[str], None] | None = None, bar: bool = True) -> dict:
    """Train the query adapter on DATA's training articles against this data directory's store, measure
    before and after on its validation articles, and install it when it ranks them better."""
    import datetime
    import hashlib

    from rag.config import data_dir as resolve_data_dir
    from rag.library import Library
    from rag.models.query_adapter import ADAPTER_FILES, MANIFEST, adapter_directory, save_adapter
    from rag.store.database import DB_NAME
    from rag.tune.qa_data import load_qa, split_groups
    from rag.tune.reader import install_files

    say = progress or (lambda message: None)
    directory = resolve_data_dir(data_dir)
    if not (directory / DB_NAME).is_file():
        raise RagError(f"no store in {directory}: ingest the documents the questions are about first (rag ingest)")
    with Library(directory, create=False) as library:
        if library.passage_count() == 0:
            raise RagError(f"no passages in {directory}: ingest the documents the questions are about first")
        data = load_qa(data_path, library)
        train_groups, validation_groups = split_groups(data, config.validation_share, config.seed)
        golds = gold_passages(library, data.examples)
        missing = [e for e, g in zip(data.examples, golds) if not g and e.answers]
        if missing:
            say(f"{len(missing):,} questions have no passage holding their answer in this store and are left out "
                f"(first: {missing[0].where or missing[0].id}: {missing[0].question!r})")
        split = set(train_groups)
        train = [(e.question, g) for e, g in zip(data.examples, golds) if g and e.group in split]
        kept = [(e, g) for e, g in zip(data.examples, golds) if g and e.group not in split]
        if not train:
            raise RagError(f"{data.path}: no training question has a passage holding its answer in {directory}; "
                           "ingest the documents the questions are about first (rag ingest)")
        say(f"recipe: {json.dumps(asdict(config))}")
        say(f"validation groups: {', '.join(validation_groups) or '(none)'}")
        model, run = train_query_adapter(library, train, [(e.question, g) for e, g in kept], config,
                                         progress=say, bar=bar)
        scores: dict = {"training_seconds": round(run.seconds, 1), "best_epoch": run.best_epoch}
        if kept:
            examples, kept_golds = [e for e, _ in kept], [g for _, g in kept]
            say("measuring the plain encoder on the validation questions")
            scores["before"] = measure(library, examples, kept_golds, library.encoder.encode([e.question for e in examples]),
                                       k, open_setting, say)
            say("measuring the tuned question encoder")
            scores["after"] = measure(library, examples, kept_golds, encode_questions(model, [e.question for e in examples]),
                                      k, open_setting, say)
        # installed only when it also ranks better in the search the product runs by default (hybrid)
        improved = run.best_epoch > 0 and (not kept or scores["after"]["hybrid"]["mrr"] > scores["before"]["hybrid"]["mrr"])
        manifest = {
            "name": name or f"tuned on {Path(data.path).name}",
            "created": datetime.datetime.now(datetime.timezone.utc).isoformat(timespec="seconds"),
            "encoder": library.encoder.name, "encoder_path": library.encoder.path,
            "recipe": asdict(config), "data": {"path": str(data.path), "sha256": data.digest,
                                               "questions": len(data.examples), "without_passage": len(missing)},
            "train_groups": train_groups, "validation_groups": validation_groups,
            "losses": run.losses, "validation": run.validation, "scores": scores,
        }
        work = directory / "tune" / "retriever"
        save_adapter(model, work, library.encoder.name)
        (work / MANIFEST).write_text(json.dumps(manifest, indent=2), encoding="utf-8")
        target = adapter_directory(directory)
        if improved:
            install_files(work, target, ADAPTER_FILES)
            library.record_query_adapter(manifest["name"])
        digest = hashlib.sha256((work / "adapter_model.safetensors").read_bytes()).hexdigest()[:12]
        return {"manifest": manifest, "installed": improved, "adapter": str(target if improved else work),
                "weights_sha256": digest}
