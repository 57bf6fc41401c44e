"""The request contract: what a search or a question may ask for, and the JSON shapes of the answers.

The CLI's click choices and ranges, the web API's checks and its OpenAPI description all read
this one module, so a limit or a shape is defined once: ``rag search --json`` and ``/api/search``
return the same object, ``rag docs --json`` and ``/api/documents`` the same documents.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass
from typing import Any

from rag.answer.readers import DEFAULT_READER  # noqa: F401  (the readers' module decides it)
from rag.errors import RagError
from rag.records import Answer, Document, Hit, Passage

MODES = ("dense", "keyword", "hybrid")
DEFAULT_MODE = "hybrid"
MAX_QUERY_CHARS = 2000
MAX_ID = 2**63 - 1  # SQLite's largest integer: a larger "id" names no document
_ID = re.compile(r"[0-9]+")  # ASCII digits only: '１' and '١' are not ids


class RequestError(RagError):
    """A request field out of the contract; ``field`` names it."""

    def __init__(self, field: str, message: str):
        super().__init__(message)
        self.field = field


@dataclass(frozen=True)
class KRange:
    """How many passages a request may ask for."""

    default: int
    most: int

    def parse(self, value: Any, field: str = "k") -> int:
        """From a request: a whole number (JSON number, or a query string of ASCII digits) from 1 to
        ``most``; missing or "" is the default. Infinity, 1e400 and '１' are refused, never a 500."""
        if value is None or value == "":
            return self.default
        if isinstance(value, str):
            text = value.strip()
            if not _ID.fullmatch(text) or len(text) > 20:
                raise RequestError(field, self._problem(value, field))
            value = int(text)
        elif isinstance(value, float) and math.isfinite(value) and value == int(value):
            value = int(value)
        return self.check(value, field)

    def check(self, value: Any, field: str = "k") -> int:
        """In-process callers: an int from 1 to ``most``."""
        if isinstance(value, bool) or not hasattr(value, "__index__") or not 1 <= int(value) <= self.most:
            raise RequestError(field, self._problem(value, field))
        return int(value)

    def _problem(self, value: Any, field: str) -> str:
        return f"'{field}' must be a whole number from 1 to {self.most}, not {str(value)[:40]!r}"


# Hybrid search fuses the top 100 of each ranking, so a deeper k would add nothing reliable.
SEARCH_K = KRange(default=10, most=100)
# The passages a reader is given; more no longer fit the generator's context.
ASK_K = KRange(default=5, most=50)
# Documents one page of GET /api/documents lists.
LIST_LIMIT = KRange(default=100, most=1000)


def readers() -> tuple[str, ...]:
    """Reader names, as registered in rag.answer.readers (a new reader is one line there)."""
    from rag.answer.readers import READERS

    return tuple(READERS)


def check_mode(value: Any, field: str = "mode") -> str:
    return check_choice(value, field, MODES, DEFAULT_MODE)


def check_reader(value: Any, field: str = "reader") -> str:
    return check_choice(value, field, readers(), DEFAULT_READER)


def check_choice(value: Any, field: str, choices: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if value not in choices:
        raise RequestError(field, f"unknown {field} {value!r}: choose one of {', '.join(choices)}")
    return value


def check_query(value: Any, field: str = "q") -> str:
    """A non-empty string of at most MAX_QUERY_CHARS characters."""
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise RequestError(field, f"'{field}' must be a string")
    value = value.strip()
    if not value:
        raise RequestError(field, f"'{field}' is empty: type a query")
    if len(value) > MAX_QUERY_CHARS:
        raise RequestError(field, f"'{field}' is too long ({len(value)} characters; at most {MAX_QUERY_CHARS})")
    return value


def parse_where(values: Any, field: str = "where") -> dict[str, str]:
    """FIELD=VALUE filters (collection=NAME, path=GLOB, title=GLOB, id=N or a metadata field): a list
    of them, one string, or an object. The field name is trimmed, the value kept exactly as given."""
    if not values:
        return {}
    if isinstance(values, dict):
        items = [f"{k}={v}" for k, v in values.items()]
    elif isinstance(values, str):
        items = [values]
    elif isinstance(values, (list, tuple)) and all(isinstance(v, str) for v in values):
        items = list(values)
    else:
        raise RequestError(field, f"'{field}' must be FIELD=VALUE, a list of them, or an object")
    where: dict[str, str] = {}
    for item in items:
        key, sep, value = item.partition("=")
        if not sep or not key.strip():
            raise RequestError(field, f"bad '{field}' filter {item!r}: use FIELD=VALUE, e.g. collection=notes "
                                      "or path='*.md'")
        where[key.strip()] = value
    return where


def parse_document_id(value: Any, field: str = "id") -> int:
    """A document id: ASCII digits (or an int) from 1 to 2^63 - 1."""
    if isinstance(value, bool):
        raise RequestError(field, f"bad document {field} {value!r}")
    if isinstance(value, int):
        number = value
    elif isinstance(value, str) and _ID.fullmatch(value) and len(value) <= 20:
        number = int(value)
    else:
        raise RequestError(field, f"bad document {field} {str(value)[:40]!r}: a whole number of ASCII digits")
    if not 1 <= number <= MAX_ID:
        raise RequestError(field, f"no document with id {number}: ids run from 1 to {MAX_ID}")
    return number


def as_document_id(value: Any) -> int | None:
    """The id ``value`` names, or None when it is not an id (then it may be a path)."""
    try:
        return parse_document_id(value)
    except RequestError:
        return None


# --- JSON shapes ----------------------------------------------------------------------------------

def document_json(doc: Document, passages: int | None = None) -> dict:
    """A document as listed: the same fields from `rag docs --json`, /api/documents and a hit."""
    data = dict(doc.to_json(), collection=doc.collection, size=doc.size, mtime=doc.mtime,
                metadata=doc.metadata, ingested_at=doc.ingested_at)
    if passages is not None:
        data["passages"] = passages
    return data


def matched_terms(query: str, text: str) -> list[str]:
    """The query's words found in the text: a word matches when it starts with the term's stem,
    the rule the CLI marks snippets by (rag.search.snippets)."""
    from rag.search.snippets import query_terms, stem

    lowered = text.lower()
    return [term for term in query_terms(query) if re.search(r"(?<!\w)" + re.escape(stem(term)), lowered)]


def hit_json(hit: Hit, query: str) -> dict:
    data = hit.to_json()
    data["document"]["collection"] = hit.document.collection
    data["matched_terms"] = matched_terms(query, hit.passage.text)
    return data


def search_json(query: str, mode: str, hits: list[Hit], missing_shards: list[int] | None = None) -> dict:
    """`rag search --json` and GET /api/search; on a cluster library also whether shards were left out
    (``partial``, with ``--allow-partial``: never a silently short list)."""
    data = {"query": query, "mode": mode, "results": [hit_json(h, query) for h in hits]}
    if missing_shards is not None:
        data.update(partial=bool(missing_shards), missing_shards=list(missing_shards))
    return data


def answer_json(answer: Answer) -> dict:
    """`rag ask --json` and POST /api/ask."""
    data = answer.to_json()
    data["passages"] = [hit_json(h, answer.question) for h in answer.passages]
    return data


def passage_json(passage: Passage) -> dict:
    return {"id": passage.id, "order": passage.order, "start": passage.start, "end": passage.end,
            **passage.location_json()}
