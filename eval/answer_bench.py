"""``rag eval answer``: answer quality and latency per reader, on SQuAD-format data or JSONL questions.

SQuAD v1.1/v2.0 (a .json file or a directory holding one): every paragraph becomes a document
titled by its article, ingested once through the normal path into a store cached under
<data>/eval/; every question is asked over that whole store. JSONL questions ({"id", "question",
"answers", "pages"}; empty answers: unanswerable) are asked over the Python documentation
(python3-doc), ingested once into <data>/bench/answer[-<int8 export>].

Per reader (x HyDE): exact match and token F1 as the official SQuAD script computes them,
containment (a normalized gold answer occurs in the answer), citation correctness (a cited
passage holds a gold answer), groundedness (every content word of the answer occurs in the
passages it cites; "not in the documents" asserts nothing and counts as grounded), refusal
accuracy on unanswerable questions, and p50/p95 seconds per answer.

With ``given=True`` (SQuAD only) each question is read from its own paragraph alone, SQuAD's
reading-comprehension setting in which its published figures (BERT-base F1 0.88, humans 0.91) are
measured; the gap to the open setting is what retrieval costs.
"""
from __future__ import annotations

import hashlib
import json
import statistics
import time
from dataclasses import dataclass, field
from pathlib import Path

from eval.squad import contains, exact_match, f1_score, is_squad, load_squad
from rag.errors import RagError

DOCS_ROOT = Path("/usr/share/doc/python3/html")
QUESTIONS = Path(__file__).parent / "questions" / "python_docs.jsonl"
COLLECTION = "python-docs"
SQUAD_COLLECTION = "squad"
# Ingested when the data directory has no python-docs collection yet: every page a question uses,
# plus the tutorial, the FAQ and some neighbouring library pages as distractors.
PAGES = ["tutorial", "faq", "library/json.html", "library/datetime.html", "library/collections.html",
         "library/itertools.html", "library/functools.html", "library/pathlib.html", "library/re.html",
         "library/os.path.html", "library/random.html", "library/statistics.html", "library/sqlite3.html",
         "library/venv.html", "library/string.html", "library/stdtypes.html", "library/functions.html"]


@dataclass
class Question:
    id: str
    question: str
    answers: list[str]  # empty: unanswerable, the reader should say the documents do not hold it
    pages: list[str] = field(default_factory=list)
    document: str = ""  # SQuAD: the uri of the paragraph it was asked about
    article: str = ""  # SQuAD: the article's title (what the span reader's training split is made of)

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

def grounded(answer, not_found: str) -> bool:
    """Every content word of the answer occurs in the passages it cites; a refusal asserts nothing."""
    from rag.answer.readers import content_words

    if answer.text == not_found:
        return True
    words = content_words(strip_citations(answer.text))
    cited = " ".join(c.hit.passage.text + " " + c.hit.document.title for c in answer.citations)
    return bool(answer.citations) and words <= content_words(cited)


def strip_citations(text: str) -> str:
    import re

    return re.sub(r"\s*\[\d+\]", "", text).strip()


def score(question: Question, answer, not_found: str) -> dict:
    """One answer's row: the official EM/F1 (a refusal is the empty answer), containment, citation, grounding."""
    refused = answer.text == not_found
    prediction = "" if refused else strip_citations(answer.text)
    gold = question.answers or [""]
    cited_texts = [c.hit.passage.text for c in answer.citations]
    return {
        "id": question.id, "answerable": question.answerable, "answer": answer.text, "refused": refused,
        "exact_match": exact_match(prediction, gold),
        "f1": round(f1_score(prediction, gold), 4),
        "contains": contains(prediction, question.answers) if question.answerable else float(refused),
        "cited_ok": float(any(contains(t, question.answers) for t in cited_texts)) if question.answerable
        else float(refused),
        "grounded": float(grounded(answer, not_found)),
        "retrieved": float(any(contains(h.passage.text, question.answers) for h in answer.passages))
        if question.answerable else None,
        "seconds": round(answer.timings.get("total", 0.0), 4),
    }


def summarize(reader: str, hyde: bool, rows: list[dict]) -> dict:
    """The agreed result shape (see docs/benchmarks.md): means over the questions, latency percentiles."""
    answerable = [r for r in rows if r["answerable"]]
    unanswerable = [r for r in rows if not r["answerable"]]
    mean = lambda values: round(sum(values) / len(values), 4) if values else None  # noqa: E731
    seconds = sorted(r["seconds"] for r in rows)
    p95 = seconds[min(len(seconds) - 1, int(round(0.95 * (len(seconds) - 1))))] if seconds else None
    return {"reader": reader, "hyde": hyde,
            "exact_match": mean([r["exact_match"] for r in rows]),
            "f1": mean([r["f1"] for r in rows]),
            "contains": mean([r["contains"] for r in answerable]),
            "cited_ok": mean([r["cited_ok"] for r in answerable]),
            "grounded": mean([r["grounded"] for r in rows]),
            "refusal_ok": mean([r["contains"] for r in unanswerable]),
            "p50_s": round(statistics.median(seconds), 4) if seconds else None,
            "p95_s": round(p95, 4) if p95 is not None else None}


# --- datasets -------------------------------------------------------------------------------------

@dataclass
class AnswerDataset:
    """Questions plus the open library they are asked over (and the filter that selects their documents)."""

    path: str
    questions: list[Question]
    library: object
    where: dict | None
    documents: int


def _fingerprint(path: Path, extra: str) -> str:
    digest = hashlib.sha256(extra.encode())
    with path.open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]


def open_squad(path: str | Path, data_dir: Path, progress=None) -> AnswerDataset:
    """The SQuAD file's paragraphs in a store cached under <data>/eval/squad-<hash>/ (ingested once)."""
    from rag.ingest.pipeline import ingest_documents
    from rag.library import open_library
    from rag.models.encoders import load_encoder, vectors_tag

    dataset = load_squad(path)
    encoder = load_encoder()
    backend = getattr(encoder, "backend", "torch")
    key = _fingerprint(dataset.path, encoder.name if backend == "torch" else f"{encoder.name}:{vectors_tag(backend)}")
    directory = Path(data_dir) / "eval" / f"squad-{key}"
    library = open_library(directory, encoder=encoder)
    stored = library.documents(SQUAD_COLLECTION)
    if len(stored) != len(dataset.documents):
        if progress:
            progress(f"ingesting {len(dataset.documents):,} paragraphs of {dataset.path} into {directory} (once)")
        report = ingest_documents(library, dataset.documents, collection=SQUAD_COLLECTION)
        if report.failures:
            progress and progress(f"{len(report.failures)} paragraphs failed: {report.failures[:3]}")
    articles = {d.uri: d.title for d in dataset.documents}
    questions = [Question(id=q.id, question=q.question, answers=q.answers, document=q.document,
                          article=articles.get(q.document, "")) for q in dataset.questions]
    return AnswerDataset(str(dataset.path), questions, library, {"collection": SQUAD_COLLECTION},
                         len(dataset.documents))


def open_python_docs(questions_path: str | Path, data_dir: Path, docs_root: Path = DOCS_ROOT,
                     progress=None) -> AnswerDataset:
    """JSONL questions over the Python documentation pages, ingested once into <data>/bench/answer/ (float32
    back ends) or <data>/bench/answer-onnx-int8-v<N>/."""
    from rag.library import open_library
    from rag.models.encoders import DEFAULT_ENCODER_BACKEND, store_suffix

    questions = load_questions(questions_path)
    # a new int8 export gets its own store rather than a refusal of the old one
    library = open_library(Path(data_dir) / "bench" / f"answer{store_suffix(DEFAULT_ENCODER_BACKEND)}")
    if not library.documents(COLLECTION):
        if not docs_root.is_dir():
            library.close()
            raise RagError(f"the Python documentation is not at {docs_root}: install python3-doc (Debian) "
                           "or pass --docs")
        from rag.ingest.pipeline import ingest_paths

        paths = [str(docs_root / p) for p in PAGES if (docs_root / p).exists()]
        if progress:
            progress(f"ingesting {len(paths)} Python documentation paths into collection {COLLECTION} (once)")
        ingest_paths(library, paths, collection=COLLECTION)
    return AnswerDataset(str(questions_path), questions, library, {"collection": COLLECTION},
                         len(library.documents(COLLECTION)))


def open_dataset(path: str | Path | None, data_dir: Path, docs_root: Path = DOCS_ROOT, progress=None
                 ) -> AnswerDataset:
    """SQuAD JSON (file or directory) or JSONL questions (default: the shipped Python-docs questions)."""
    if path is not None and is_squad(path):
        return open_squad(path, data_dir, progress)
    return open_python_docs(path or QUESTIONS, data_dir, docs_root, progress)


def held_out(questions: list[Question], data_dir: Path, store_dir: Path | None = None
             ) -> tuple[list[Question], dict]:
    """The questions whose article neither the span reader (the data directory's tuned one, else the shipped
    one) nor the store's query adapter (`rag tune retriever`) trained on: no figure is reported on an
    article a model learned from."""
    from rag.models.query_adapter import adapter_directory, read_manifest as adapter_manifest
    from rag.models.span_reader import read_manifest, reader_directory

    manifests = [read_manifest(reader_directory(data_dir))]
    if store_dir is not None and (adapter_directory(store_dir) / "manifest.json").is_file():
        manifests.append(adapter_manifest(adapter_directory(store_dir)))
    trained = {str(g).replace("_", " ").strip() for m in manifests for g in m.get("train_groups", [])}
    kept = [q for q in questions if q.article not in trained]
    return kept, {"left_out": len(questions) - len(kept),
                  "trained_articles_of": ", ".join(m.get("name", "") for m in manifests)}


def spread(questions: list[Question], limit: int | None) -> list[Question]:
    """``limit`` questions evenly spaced over the file (every article represented), in file order."""
    if not limit or limit >= len(questions):
        return list(questions)
    return [questions[i * len(questions) // limit] for i in range(limit)]


# --- the run --------------------------------------------------------------------------------------

@dataclass
class AnswerReport:
    dataset: dict
    results: list[dict]
    setting: str = "open"  # or "given paragraph": each question read from its own paragraph alone
    rows: dict = field(default_factory=dict)  # "reader/hyde" -> per-question rows

    def to_json(self) -> dict:
        return {"dataset": self.dataset, "results": self.results}


def run(data_dir: Path, dataset_path: str | Path | None = None,
        readers: tuple[str, ...] = ("span", "extract", "prompt", "fid"),
        hyde_options: tuple[bool, ...] = (False,), k: int = 5, mode: str = "hybrid", hyde_n: int = 2,
        generator: str = "local", docs_root: Path = DOCS_ROOT, limit: int | None = None,
        given: bool = False, progress=None) -> AnswerReport:
    from rag.answer.pipeline import NOT_FOUND, ask, resolve_generator
    from rag.answer.readers import NEEDS_GENERATOR, get_reader

    for reader in readers:
        get_reader(reader)  # an unknown name fails before anything is ingested
    if given and (dataset_path is None or not is_squad(dataset_path)):
        raise RagError("--given-paragraph needs SQuAD data: JSONL questions do not name their paragraph")
    data = open_dataset(dataset_path, Path(data_dir), docs_root, progress)
    library = data.library

    def where(q: Question) -> dict | None:
        return {**data.where, "path": q.document} if given else data.where

    try:
        questions, left_out = data.questions, {}
        if any(q.article for q in questions):
            questions, left_out = held_out(questions, Path(data_dir), getattr(library, "data_dir", None))
            if not questions:
                raise RagError(f"every question of {data.path} is on an article the span reader trained on")
            if progress and left_out["left_out"]:
                progress(f"{left_out['left_out']:,} questions on articles the span reader or query adapter trained on are left out")
        questions = spread(questions, limit)
        needs_generator = any(r in NEEDS_GENERATOR for r in readers) or any(hyde_options)
        gen = resolve_generator(generator, library) if needs_generator else None
        report = AnswerReport(dataset={"path": data.path, "questions": len(questions), "documents": data.documents,
                                       **(left_out if left_out.get("left_out") else {})},
                              results=[], setting="given paragraph" if given else "open")
        ask(library, questions[0].question, k=1, mode=mode, reader="extract", where=data.where)  # warm-up
        for reader in readers:
            for hyde in hyde_options:
                ask(library, questions[0].question, k=k, mode=mode, reader=reader, hyde=hyde, hyde_n=hyde_n,
                    generator=gen, where=data.where)  # warm-up: loads the reader, builds cached prompt prefixes
                rows = []
                for n, q in enumerate(questions, 1):
                    answer = ask(library, q.question, k=k, mode=mode, hyde=hyde, hyde_n=hyde_n, reader=reader,
                                 generator=gen, where=where(q))
                    rows.append(score(q, answer, NOT_FOUND))
                    if progress and (n % 50 == 0 or n == len(questions)):
                        done = summarize(reader, hyde, rows)
                        progress(f"{reader}{' +HyDE' if hyde else ''} {n}/{len(questions)}: EM {done['exact_match']:.3f} "
                                 f"F1 {done['f1']:.3f} contains {done['contains'] or 0:.3f} p50 {done['p50_s']:.2f} s")
                report.results.append(summarize(reader, hyde, rows))
                report.rows[f"{reader}/{'hyde' if hyde else 'plain'}"] = rows
        return report
    finally:
        library.close()


def format_table(report: AnswerReport) -> str:
    d = report.dataset
    fmt = lambda v, spec=".3f": "-" if v is None else format(v, spec)  # noqa: E731
    over = "each read from its own paragraph" if report.setting != "open" else f"over {d['documents']:,} documents"
    held = (f" (held out: {d['left_out']:,} questions on articles {d['trained_articles_of']!r} trained on are "
            f"left out)") if d.get("left_out") else ""
    lines = [f"Answers on {d['path']}: {d['questions']:,} questions {over}{held}", "",
             f"{'reader':<8} {'HyDE':<5} {'EM':>6} {'F1':>6} {'contains':>8} {'cited ok':>8} {'grounded':>8} "
             f"{'refusal':>7} {'p50 s':>7} {'p95 s':>7}"]
    for r in report.results:
        lines.append(f"{r['reader']:<8} {'yes' if r['hyde'] else 'no':<5} {fmt(r['exact_match']):>6} {fmt(r['f1']):>6} "
                     f"{fmt(r['contains']):>8} {fmt(r['cited_ok']):>8} {fmt(r['grounded']):>8} "
                     f"{fmt(r['refusal_ok']):>7} {fmt(r['p50_s'], '.2f'):>7} {fmt(r['p95_s'], '.2f'):>7}")
    lines += ["", "EM/F1: official SQuAD normalization, best over the gold answers (a refusal is the empty answer); "
                  "contains/cited ok: answerable questions; refusal: unanswerable ones."]
    return "\n".join(lines)


def plot(report: AnswerReport, path: Path) -> Path:
    """Quality per reader (EM, F1, containment) beside its median seconds per answer."""
    from eval.plots import plt, save_figure  # Agg: files only

    labels = [f"{r['reader']}{'+HyDE' if r['hyde'] else ''}" for r in report.results]
    fig, (left, right) = plt.subplots(1, 2, figsize=(10, 4))
    width = 0.25
    for i, metric in enumerate(("exact_match", "f1", "contains")):
        left.bar([x + i * width for x in range(len(labels))], [r[metric] or 0 for r in report.results], width,
                 label=metric)
    left.set_xticks([x + width for x in range(len(labels))], labels)
    left.set_ylim(0, 1)
    left.set_title("Answer quality")
    left.legend()
    right.bar(labels, [r["p50_s"] or 0 for r in report.results], color="grey")
    right.set_ylabel("p50 seconds per answer")
    right.set_title("Latency")
    fig.suptitle(Path(report.dataset["path"]).name)
    return save_figure(fig, path)


def save(report: AnswerReport, directory: Path) -> Path:
    directory.mkdir(parents=True, exist_ok=True)
    target = directory / f"answer-{time.strftime('%Y%m%d-%H%M%S')}.json"
    target.write_text(json.dumps({**report.to_json(), "setting": report.setting, "rows": report.rows},
                                  indent=2), encoding="utf-8")
    return target

