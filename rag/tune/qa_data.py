"""Question-answer pairs to train and validate a reader on: SQuAD JSON (v1.1/v2.0) or JSONL.

Every record is checked where it enters, and a bad one is named (file and position) rather than
skipped: an empty question, an answer that its context does not hold, an unknown format. Records
are grouped by article (SQuAD) or document (JSONL), so that a train/validation split never puts a
document on both sides.
"""
from __future__ import annotations

import hashlib
import json
import random
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError


@dataclass
class QAExample:
    id: str
    question: str
    context: str
    answers: list[tuple[str, int]]  # (text, character start in context); empty: unanswerable
    group: str  # the article or document: never split across train and validation
    where: str = ""  # the record's place in its file, for messages

    @property
    def answer_texts(self) -> list[str]:
        return [text for text, _ in self.answers]


@dataclass
class QAData:
    path: str
    examples: list[QAExample] = field(default_factory=list)
    digest: str = ""  # sha256 of the file(s): recorded in what is trained on them

    def groups(self) -> list[str]:
        return list(dict.fromkeys(e.group for e in self.examples))


def _answer(context: str, text, start, where: str) -> tuple[str, int]:
    if not isinstance(text, str) or not text.strip():
        raise RagError(f"{where}: an empty answer")
    if start is None:
        start = context.find(text)
        if start < 0:
            raise RagError(f"{where}: the answer {text!r} is not in its context")
        return text, start
    if not isinstance(start, int) or context[start:start + len(text)] != text:
        found = context.find(text)
        if found < 0:
            raise RagError(f"{where}: the answer {text!r} is not in its context")
        raise RagError(f"{where}: the answer {text!r} is not at answer_start {start} of its context "
                       f"(it is at {found})")
    return text, start


def _question(raw, where: str) -> str:
    if not isinstance(raw, str) or not raw.strip():
        raise RagError(f"{where}: an empty question")
    return " ".join(raw.split())


def _squad(raw: dict, path: Path) -> list[QAExample]:
    examples = []
    for a, article in enumerate(raw["data"]):
        where = f"{path}: data[{a}]"
        if not isinstance(article, dict) or not isinstance(article.get("paragraphs"), list):
            raise RagError(f"{where}: an article needs a \"paragraphs\" list")
        title = str(article.get("title", f"article {a}")).replace("_", " ").strip()
        for p, paragraph in enumerate(article["paragraphs"]):
            context = paragraph.get("context") if isinstance(paragraph, dict) else None
            if not isinstance(context, str) or not context.strip():
                raise RagError(f"{where}.paragraphs[{p}]: no \"context\" text")
            for q, qa in enumerate(paragraph.get("qas", [])):
                at = f"{where}.paragraphs[{p}].qas[{q}]"
                if not isinstance(qa, dict):
                    raise RagError(f"{at}: not a question record")
                question = _question(qa.get("question"), at)
                impossible = bool(qa.get("is_impossible", False))
                answers = [] if impossible else qa.get("answers")
                if not isinstance(answers, list) or (not impossible and not answers):
                    raise RagError(f"{at}: an answerable question needs an \"answers\" list")
                spans = []
                for n, answer in enumerate(answers):
                    if not isinstance(answer, dict):
                        raise RagError(f"{at}.answers[{n}]: expected {{\"text\", \"answer_start\"}}")
                    spans.append(_answer(context, answer.get("text"), answer.get("answer_start"), f"{at}.answers[{n}]"))
                examples.append(QAExample(str(qa.get("id", at)), question, context, list(dict.fromkeys(spans)),
                                          title, at))
    return examples


def _jsonl(text: str, path: Path, library) -> list[QAExample]:
    examples = []
    for number, line in enumerate(text.splitlines(), 1):
        if not line.strip():
            continue
        at = f"{path}:{number}"
        try:
            row = json.loads(line)
        except ValueError as exc:
            raise RagError(f"{at}: not a JSON object ({exc})") from exc
        if not isinstance(row, dict):
            raise RagError(f"{at}: not a JSON object")
        question = _question(row.get("question"), at)
        if isinstance(row.get("context"), str) and row["context"].strip():
            context, group = row["context"], str(row.get("document") or row.get("title") or f"{path}:{number}")
        elif "passage_id" in row:
            if library is None:
                raise RagError(f"{at}: \"passage_id\" needs a store (--data) holding that passage")
            try:
                passage = library.passages([int(row["passage_id"])]).get(int(row["passage_id"]))
            except (TypeError, ValueError):
                passage = None
            if passage is None:
                raise RagError(f"{at}: passage {row['passage_id']!r} is not in the store")
            context, group = passage.text, f"document {passage.document_id}"
        else:
            raise RagError(f"{at}: a record needs \"context\" text or a \"passage_id\" of the store")
        answers = row.get("answers", [])
        if isinstance(answers, str):
            answers = [answers]
        if not isinstance(answers, list):
            raise RagError(f"{at}: \"answers\" must be a list")
        spans = []
        for n, answer in enumerate(answers):
            text, start = (answer.get("text"), answer.get("answer_start")) if isinstance(answer, dict) else (answer, None)
            spans.append(_answer(context, text, start, f"{at}: answers[{n}]"))
        examples.append(QAExample(str(row.get("id", number)), question, context, list(dict.fromkeys(spans)),
                                  group, at))
    return examples


def load_qa(path: str | Path, library=None) -> QAData:
    """QA pairs from a SQuAD .json file (or a directory holding one) or a .jsonl file."""
    path = Path(path)
    if path.is_dir():
        files = sorted(p for p in path.iterdir() if p.suffix.lower() in (".json", ".jsonl"))
        if len(files) != 1:
            raise RagError(f"{path}: expected one .json (SQuAD) or .jsonl file in the directory, found {len(files)}")
        path = files[0]
    if not path.is_file():
        raise RagError(f"training data not found: {path}")
    blob = path.read_bytes()
    try:
        text = blob.decode("utf-8")
    except UnicodeDecodeError as exc:
        raise RagError(f"{path}: not UTF-8 text ({exc})") from exc
    if path.suffix.lower() == ".jsonl":
        examples = _jsonl(text, path, library)
    else:
        try:
            raw = json.loads(text)
        except ValueError as exc:
            raise RagError(f"{path}: unknown format: neither SQuAD JSON nor JSONL ({exc})") from exc
        if not isinstance(raw, dict) or not isinstance(raw.get("data"), list):
            raise RagError(f"{path}: unknown format: SQuAD JSON needs a top-level \"data\" list "
                           "(or give a .jsonl file of {\"question\", \"answers\", \"context\"} records)")
        examples = _squad(raw, path)
    if not examples:
        raise RagError(f"{path}: no questions")
    return QAData(str(path), examples, hashlib.sha256(blob).hexdigest())


def split_groups(data: QAData, validation_share: float, seed: int = 0) -> tuple[list[str], list[str]]:
    """Train and validation groups: whole articles/documents, about ``validation_share`` of the questions."""
    if not 0.0 <= validation_share < 1.0:
        raise RagError(f"--validation-share must be from 0 to below 1 (got {validation_share})")
    groups = data.groups()
    if validation_share == 0.0:
        return groups, []
    if len(groups) < 2:
        raise RagError(f"{data.path}: one article/document only: it cannot be split into train and validation "
                       "(use --validation-share 0)")
    sizes = {g: 0 for g in groups}
    for e in data.examples:
        sizes[e.group] += 1
    order = sorted(groups)
    random.Random(seed).shuffle(order)
    target, held, validation = validation_share * len(data.examples), 0, []
    for group in order:
        if held >= target or len(validation) == len(groups) - 1:
            break
        validation.append(group)
        held += sizes[group]
    chosen = set(validation)
    return [g for g in groups if g not in chosen], [g for g in groups if g in chosen]
