"""Load a BEIR-format dataset: corpus.jsonl, queries.jsonl, qrels/<split>.tsv.

Broken files are errors that name the file and line; qrels rows naming a query or document the
dataset does not have are dropped, counted and reported as warnings (BEIR data often has a few).
"""
from __future__ import annotations

import hashlib
import json
from dataclasses import dataclass, field
from pathlib import Path

from rag.errors import RagError


class DatasetError(RagError):
    """The dataset directory or one of its files cannot be used."""


@dataclass
class BeirDocument:
    id: str
    title: str
    text: str

    @property
    def full_text(self) -> str:
        """What BEIR and MTEB encode: title + " " + text (just the text when there is no title)."""
        return f"{self.title} {self.text}".strip() if self.title else self.text


@dataclass
class BeirDataset:
    path: Path
    split: str
    corpus: dict[str, BeirDocument]
    queries: dict[str, str]  # only the queries the split's qrels judge
    qrels: dict[str, dict[str, int]]
    warnings: list[str] = field(default_factory=list)

    @property
    def name(self) -> str:
        return self.path.name or "dataset"


def _read_jsonl(path: Path, required: tuple[str, ...]) -> list[dict]:
    if not path.is_file():
        raise DatasetError(f"{path}: file not found (a BEIR dataset has corpus.jsonl, queries.jsonl, qrels/<split>.tsv)")
    rows = []
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            try:
                row = json.loads(line)
            except json.JSONDecodeError as exc:
                raise DatasetError(f"{path} line {number}: not valid JSON ({exc.msg})") from None
            if not isinstance(row, dict):
                raise DatasetError(f"{path} line {number}: expected a JSON object, got {type(row).__name__}")
            missing = [key for key in required if key not in row]
            if missing:
                raise DatasetError(f"{path} line {number}: missing field {', '.join(map(repr, missing))}")
            rows.append(row)
    return rows


def _read_qrels(path: Path) -> list[tuple[int, str, str, int]]:
    """(line number, query id, doc id, grade) rows; the header line is optional."""
    if not path.is_file():
        raise DatasetError(f"{path}: qrels file not found (use --split to pick another file in {path.parent})")
    rows = []
    first = True
    with path.open(encoding="utf-8") as handle:
        for number, line in enumerate(handle, start=1):
            if not line.strip():
                continue
            is_first, first = first, False
            parts = line.rstrip("\r\n").split("\t")
            if len(parts) == 4:  # TREC layout: query-id Q0 doc-id grade
                parts = [parts[0], parts[2], parts[3]]
            if len(parts) != 3:
                raise DatasetError(f"{path} line {number}: expected 3 tab-separated columns "
                                   f"(query-id, corpus-id, score), got {len(parts)}")
            try:
                grade = int(parts[2])
            except ValueError:
                if is_first:
                    continue  # the header
                raise DatasetError(f"{path} line {number}: score {parts[2]!r} is not an integer") from None
            rows.append((number, parts[0].strip(), parts[1].strip(), grade))
    return rows


def load_beir(directory: str | Path, split: str = "test") -> BeirDataset:
    """Read and check a BEIR dataset; DatasetError says which file and line is wrong."""
    path = Path(directory).expanduser().resolve()
    if not path.is_dir():
        raise DatasetError(f"{path}: dataset directory not found")
    warnings = []
    corpus: dict[str, BeirDocument] = {}
    rows = _read_jsonl(path / "corpus.jsonl", ("_id", "text"))
    for row in rows:
        doc_id = str(row["_id"])
        corpus[doc_id] = BeirDocument(doc_id, str(row.get("title") or ""), str(row["text"] or ""))
    if not corpus:
        raise DatasetError(f"{path / 'corpus.jsonl'}: the corpus is empty")
    if len(rows) > len(corpus):
        warnings.append(f"{path / 'corpus.jsonl'}: {len(rows) - len(corpus)} repeated _id(s); the last one is kept")
    rows = _read_jsonl(path / "queries.jsonl", ("_id", "text"))
    all_queries = {str(row["_id"]): str(row["text"]) for row in rows}
    if len(rows) > len(all_queries):
        warnings.append(f"{path / 'queries.jsonl'}: {len(rows) - len(all_queries)} repeated _id(s); the last one is kept")

    qrels_path = path / "qrels" / f"{split}.tsv"
    qrels: dict[str, dict[str, int]] = {}
    unknown_queries: set[str] = set()
    unknown_docs: set[str] = set()
    dropped = 0
    for _, query_id, doc_id, grade in _read_qrels(qrels_path):
        if query_id not in all_queries:
            unknown_queries.add(query_id)
            dropped += 1
        elif doc_id not in corpus:
            unknown_docs.add(doc_id)
            dropped += 1
        else:
            qrels.setdefault(query_id, {})[doc_id] = grade

    if dropped:
        warnings.append(
            f"{qrels_path}: skipped {dropped} row(s) naming {len(unknown_queries)} unknown query id(s)"
            f" and {len(unknown_docs)} unknown document id(s)"
            + (f", e.g. {sorted(unknown_queries | unknown_docs)[:3]}" if unknown_queries or unknown_docs else ""))
    unjudged = [q for q, docs in qrels.items() if not any(g >= 1 for g in docs.values())]
    if unjudged:
        warnings.append(f"{qrels_path}: {len(unjudged)} query(ies) have no relevant document and are skipped")
    qrels = {q: docs for q, docs in qrels.items() if q not in unjudged}
    if not qrels:
        raise DatasetError(f"{qrels_path}: no query with a relevant document in the corpus: nothing to evaluate")
    queries = {q: all_queries[q] for q in qrels}  # in the qrels file's order, so --limit takes its first N
    return BeirDataset(path, split, corpus, queries, qrels, warnings)


def corpus_fingerprint(directory: str | Path, extra: str = "") -> str:
    """A short hash of corpus.jsonl's bytes (and `extra`, e.g. the encoder), naming the cached store."""
    digest = hashlib.sha256(extra.encode())
    with (Path(directory) / "corpus.jsonl").open("rb") as handle:
        for block in iter(lambda: handle.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()[:12]
