"""``rag eval answer``: answer quality and latency on questions over the Python documentation.

Per reader, with and without HyDE: answer containment (a gold answer appears in the answer), token F1
against the gold answers, citation correctness (a cited passage comes from a page that holds the
answer; for unanswerable questions: nothing cited and the "not in the documents" reply), whether
retrieval found a gold page at all, and latency per question. Then FiD against the prompt reader as
the number of passages grows, with every passage fitted into the prompt so both read the same text.
"""
from __future__ import annotations

import json
import re
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError

DOCS_ROOT = Path("/usr/share/doc/python3/html")
QUESTIONS = Path(__file__).parent / "questions" / "python_docs.jsonl"
COLLECTION = "python-docs"
# Ingested when the data directory has no python-docs collection yet: every page a question uses,
# plus the tutorial, the FAQ and some neighbouring library pages as distractors.
PAGES = ["tutorial", "faq", "library/json.html", "library/datetime.html", "library/collections.html",
         "library/itertools.html", "library/functools.html", "library/pathlib.html", "library/re.html",
         "library/os.path.html", "library/random.html", "library/statistics.html", "library/sqlite3.html",
         "library/venv.html", "library/string.html", "library/stdtypes.html", "library/functions.html"]
PASSAGE_TOKENS = 320  # both readers see passages cut to the same length


@dataclass
class Question:
    id: str
    question: str
    answers: list[str]
    pages: list[str]

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


def load_questions(path: str | Path = QUESTIONS) -> list[Question]:
    """Questions from JSONL: {"id", "question", "answers": [...], "pages": [...]} (empty answers: unanswerable)."""
    questions = []
    path = Path(path)
    if not path.is_file():
        raise RagError(f"question file not found: {path}")
    for number, line in enumerate(path.read_text(encoding="utf-8").splitlines(), 1):
        if not line.strip():
            continue
        try:
            row = json.loads(line)
            questions.append(Question(id=str(row["id"]), question=str(row["question"]),
                                      answers=[str(a) for a in row.get("answers", [])],
                                      pages=[str(p) for p in row.get("pages", [])]))
        except (ValueError, KeyError, TypeError) as exc:
            raise RagError(f"{path}:{number}: bad question record ({exc})") from exc
    if not questions:
        raise RagError(f"{path} holds no questions")
    return questions


# --- scoring --------------------------------------------------------------------------------------

def _normal(text: str) -> str:
    text = re.sub(r"\[\d+\]", " ", text)  # citation markers are not part of the answer
    text = text.replace("\u2019", "'").replace("\u201c", '"').replace("\u201d", '"')
    return " ".join(text.lower().split())


def _tokens(text: str) -> list[str]:
    return re.findall(r"\w+|[^\w\s]+", _normal(text))


def contains_answer(prediction: str, answers: list[str]) -> bool:
    prediction = _normal(prediction)
    return any(_normal(a) in prediction for a in answers)


def token_f1(prediction: str, answers: list[str]) -> float:
    """SQuAD-style token F1 against the best-matching gold answer (punctuation tokens kept: '//', '()')."""
    predicted = _tokens(prediction)
    best = 0.0
    for answer in answers:
        gold = _tokens(answer)
        common = sum(min(predicted.count(t), gold.count(t)) for t in set(gold))
        if common:
            precision, recall = common / len(predicted), common / len(gold)
            best = max(best, 2 * precision * recall / (precision + recall))
    return best


def _on_page(path: str, pages: list[str]) -> bool:
    return any(path.replace("\\", "/").endswith("/" + p) or path.endswith(p) for p in pages)


def score(question: Question, answer, not_found: str) -> dict:
    cited = [c.hit.document.path for c in answer.citations]
    retrieved = [h.document.path for h in answer.passages]
    if question.answerable:
        contains = contains_answer(answer.text, question.answers)
        f1 = token_f1(answer.text, question.answers)
        citation_ok = any(_on_page(p, question.pages) for p in cited)
        retrieval_ok = any(_on_page(p, question.pages) for p in retrieved)
    else:
        contains = answer.text == not_found
        f1 = 1.0 if contains else 0.0
        citation_ok = not cited
        retrieval_ok = True
    return {"id": question.id, "answerable": question.answerable, "answer": answer.text,
            "cited": cited, "contains": contains, "f1": round(f1, 4), "citation_ok": citation_ok,
            "retrieval_ok": retrieval_ok, "timings": {k: round(v, 3) for k, v in answer.timings.items()}}


# --- the benchmark --------------------------------------------------------------------------------

@dataclass
class AnswerBench:
    settings: dict
    configs: list[dict] = field(default_factory=list)  # one per reader x HyDE, with per-question rows
    scaling: list[dict] = field(default_factory=list)  # one per reader x k

    def to_json(self) -> dict:
        return {"settings": self.settings, "configs": self.configs, "scaling": self.scaling}


def ensure_corpus(library, docs_root: Path = DOCS_ROOT, pages: list[str] = PAGES, progress=None) -> int:
    """Ingest the Python docs pages once (collection python-docs); later runs reuse the store."""
    if library.documents(COLLECTION):
        return 0
    if not docs_root.is_dir():
        raise RagError(f"the Python documentation is not at {docs_root}: install python3-doc (Debian) "
                       "or pass --docs")
    from rag.ingest import ingest_paths

    paths = [str(docs_root / p) for p in pages if (docs_root / p).exists()]
    if progress:
        progress(f"ingesting {len(paths)} Python documentation paths into collection {COLLECTION} (once)")
    report = ingest_paths(library, paths, collection=COLLECTION)
    return report.passages


def _summary(rows: list[dict]) -> dict:
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    latencies = [r["timings"]["total"] for r in rows]
    mean = lambda values: round(sum(values) / len(values), 4) if values else None  # noqa: E731
    return {
        "questions": len(rows),
        "contains": mean([float(r["contains"]) for r in answerable]),
        "f1": mean([r["f1"] for r in answerable]),
        "citation": mean([float(r["citation_ok"]) for r in answerable]),
        "retrieval": mean([float(r["retrieval_ok"]) for r in answerable]),
        "refusal": mean([float(r["contains"]) for r in unanswerable]),
        "latency_mean": mean(latencies),
        "latency_p50": round(statistics.median(latencies), 3) if latencies else None,
        "generate_mean": mean([r["timings"]["generate"] for r in rows]),
        "hyde_mean": mean([r["timings"]["hyde"] for r in rows]),
    }


def run(data_dir: Path, questions_path: str | Path = QUESTIONS, readers: tuple[str, ...] = ("prompt", "fid"),
        hyde_options: tuple[bool, ...] = (False, True), k: int = 5, mode: str = "hybrid", hyde_n: int = 2,
        scaling_ks: tuple[int, ...] = (5, 10, 20), scaling_questions: int = 4, generator: str = "local",
        docs_root: Path = DOCS_ROOT, limit: int | None = None, progress=None) -> AnswerBench:
    from rag.answer import NOT_FOUND, ask
    from rag.answer import resolve_generator
    from rag.library import open_library

    questions = load_questions(questions_path)[:limit]
    library = open_library(Path(data_dir) / "bench" / "answer")
    try:
        ensure_corpus(library, docs_root, progress=progress)
        gen = resolve_generator(generator, library)
        where = {"collection": COLLECTION}
        bench = AnswerBench(settings={
            "questions": str(questions_path), "k": k, "mode": mode, "hyde_n": hyde_n, "generator": gen.name,
            "passages": library.passage_count(), "passage_tokens": PASSAGE_TOKENS,
            "documents": len(library.documents(COLLECTION))})
        ask(library, questions[0].question, k=1, mode=mode, generator=gen, where=where)  # warm-up, not timed
        for reader in readers:
            for hyde in hyde_options:
                rows = []
                for q in questions:
                    answer = ask(library, q.question, k=k, mode=mode, hyde=hyde, hyde_n=hyde_n, reader=reader,
                                 generator=gen, where=where, passage_tokens=PASSAGE_TOKENS)
                    rows.append(score(q, answer, NOT_FOUND))
                    if progress:
                        progress(f"{reader}{' +HyDE' if hyde else ''} {q.id}: {answer.text[:70]!r} "
                                 f"({answer.timings['total']:.1f} s)")
                bench.configs.append({"reader": reader, "hyde": hyde, **_summary(rows), "rows": rows})
        sample = [q for q in questions if q.answerable][:scaling_questions]
        for depth in scaling_ks:
            for reader in readers:
                options = {"passage_tokens": PASSAGE_TOKENS}
                if reader == "prompt":  # room for every passage, so both readers read the same text
                    options["context_tokens"] = depth * (PASSAGE_TOKENS + 40) + 400
                generate, total, correct = [], [], 0
                for q in sample:
                    answer = ask(library, q.question, k=depth, mode=mode, reader=reader, generator=gen,
                                 where=where, min_relevance=-1.0, **options)
                    generate.append(answer.timings["generate"])
                    total.append(answer.timings["total"])
                    correct += contains_answer(answer.text, q.answers)
                    if progress:
                        progress(f"k={depth} {reader} {q.id}: generate {answer.timings['generate']:.1f} s")
                bench.scaling.append({"k": depth, "reader": reader, "questions": len(sample),
                                      "generate_mean": round(sum(generate) / len(generate), 3),
                                      "total_mean": round(sum(total) / len(total), 3),
                                      "contains": round(correct / len(sample), 3)})
        return bench
    finally:
        library.close()


def format_table(bench: AnswerBench) -> str:
    s = bench.settings
    lines = [f"Answers on {s['documents']} Python documentation pages ({s['passages']} passages), "
             f"generator {s['generator']}, k={s['k']}, {s['mode']} retrieval, HyDE n={s['hyde_n']}",
             "",
             f"{'reader':<8} {'HyDE':<5} {'contains':>8} {'F1':>6} {'cited ok':>8} {'retrieved':>9} "
             f"{'refusal':>7} {'latency s':>9} {'p50 s':>6} {'gen s':>6} {'HyDE s':>6}"]
    fmt = lambda v: "-" if v is None else f"{v:.2f}"  # noqa: E731
    for c in bench.configs:
        lines.append(f"{c['reader']:<8} {'yes' if c['hyde'] else 'no':<5} {fmt(c['contains']):>8} {fmt(c['f1']):>6} "
                     f"{fmt(c['citation']):>8} {fmt(c['retrieval']):>9} {fmt(c['refusal']):>7} "
                     f"{fmt(c['latency_mean']):>9} {fmt(c['latency_p50']):>6} {fmt(c['generate_mean']):>6} "
                     f"{fmt(c['hyde_mean']):>6}")
    if bench.scaling:
        lines += ["", "Reader latency as k grows (every passage in context; mean over "
                      f"{bench.scaling[0]['questions']} questions)",
                  f"{'k':>3} {'reader':<8} {'generate s':>10} {'total s':>8} {'contains':>8}"]
        for r in bench.scaling:
            lines.append(f"{r['k']:>3} {r['reader']:<8} {r['generate_mean']:>10.2f} {r['total_mean']:>8.2f} "
                         f"{r['contains']:>8.2f}")
    lines += ["", "contains/F1/cited ok/retrieved: answerable questions; refusal: unanswerable ones answered "
                  "'not in the documents'."]
    return "\n".join(lines)


def plot(bench: AnswerBench, path: Path) -> Path:
    """Generation time against k for each reader."""
    from eval.plots import plt, save_figure  # Agg: files only

    fig, ax = plt.subplots(figsize=(6, 4))
    for reader in sorted({r["reader"] for r in bench.scaling}):
        rows = [r for r in bench.scaling if r["reader"] == reader]
        ax.plot([r["k"] for r in rows], [r["generate_mean"] for r in rows], marker="o", label=reader)
    ax.set_xlabel("passages (k)")
    ax.set_ylabel("generation time per question (s)")
    ax.set_title("Prompt reader vs fusion-in-decoder")
    ax.grid(alpha=0.3)
    ax.legend()
    return save_figure(fig, path)


def save(bench: AnswerBench, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"answer-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps(bench.to_json(), indent=2), encoding="utf-8")
    return target
