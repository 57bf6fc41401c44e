"""SQuAD v1.1 / v2.0 data and the official answer scoring.

The loader turns a SQuAD JSON file (or a directory holding one) into documents (one per paragraph,
titled by its article) and questions (with every gold answer; v2.0's unanswerable questions have
none, and a reader should refuse them). Scoring follows the official v1.1 evaluation script:
normalize (lower case, drop punctuation, drop the articles a/an/the, collapse white space), then the
best exact match and the best token F1 over the gold answers.
"""
from __future__ import annotations

import json
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError
from rag.records import SourceDocument
from rag.tune.squad_metrics import contains, exact_match, f1_score, normalize_answer  # noqa: F401 (re-exported)


@dataclass
class SquadQuestion:
    id: str
    question: str
    answers: list[str]  # empty: unanswerable (SQuAD v2.0)
    document: str  # the uri of the paragraph it was asked about

    @property
    def answerable(self) -> bool:
        return bool(self.answers)


@dataclass
class SquadDataset:
    path: Path
    version: str
    documents: list[SourceDocument] = field(default_factory=list)
    questions: list[SquadQuestion] = field(default_factory=list)

    @property
    def has_unanswerable(self) -> bool:
        return any(not q.answerable for q in self.questions)


def find_squad_file(path: str | Path) -> Path:
    """The SQuAD JSON file itself, or the one .json file in a directory."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.glob("*.json") if p.is_file())
        if len(files) != 1:
            raise RagError(f"{path}: expected one SQuAD .json file in the directory, found {len(files)}")
        return files[0]
    if not path.is_file():
        raise RagError(f"SQuAD file not found: {path}")
    return path


def is_squad(path: str | Path) -> bool:
    """True for a SQuAD-format JSON file or a directory holding one (not for JSONL question files)."""
    try:
        target = find_squad_file(path)
    except RagError:
        return False
    return target.suffix.lower() == ".json"


def load_squad(path: str | Path) -> SquadDataset:
    """Documents and questions from a SQuAD v1.1/v2.0 file; a malformed file names what is wrong."""
    target = find_squad_file(path)
    try:
        raw = json.loads(target.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, ValueError) as exc:
        raise RagError(f"{target}: not a readable SQuAD JSON file ({exc})") from exc
    if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
        raise RagError(f"{target}: not SQuAD format (no top-level \"data\" list)")
    dataset = SquadDataset(path=target, version=str(raw.get("version", "")))
    for a, article in enumerate(raw["data"]):
        where = f"{target}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise RagError(f"{where}: an article needs a \"paragraphs\" list")
        title = str(article.get("title", "")).replace("_", " ").strip()
        for p, paragraph in enumerate(article["paragraphs"]):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise RagError(f"{where}.paragraphs[{p}]: no \"context\" text")
            uri = f"squad:{a}:{p}"
            dataset.documents.append(SourceDocument(uri=uri, title=title, text=context,
                                                    metadata={"article": title, "paragraph": p}))
            for q, qa in enumerate(paragraph.get("qas", [])):
                try:
                    impossible = bool(qa.get("is_impossible", False))
                    answers = [] if impossible else [str(x["text"]) for x in qa["answers"]]
                    question = SquadQuestion(id=str(qa["id"]), question=str(qa["question"]),
                                             answers=list(dict.fromkeys(answers)), document=uri)
                except (KeyError, TypeError, AttributeError) as exc:
                    raise RagError(f"{where}.paragraphs[{p}].qas[{q}]: bad question record ({exc!r})") from exc
                if not question.question.strip():
                    continue
                if not impossible and not question.answers:
                    raise RagError(f"{where}.paragraphs[{p}].qas[{q}]: an answerable question without answers")
                dataset.questions.append(question)
    if not dataset.documents:
        raise RagError(f"{target}: no paragraphs")
    return dataset
