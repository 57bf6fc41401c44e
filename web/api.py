"""The JSON API: search, ask (plain or streamed as server-sent events), documents, stats, health.

Shapes follow the CLI's --json output (Hit.to_json, Answer.to_json); passages also carry the query
terms they contain (``matched_terms``) so a page can mark them. Every error is ``{"error": message}``
with a 4xx status (see web/errors.py).
"""
from __future__ import annotations

import json
import logging
import os
import queue
import re
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.utils import secure_filename

from rag.errors import RagError
from rag.records import Answer, Hit
from rag.snippets import _stem, query_terms  # one marking rule for the CLI and the page
from web.errors import ApiError
from web.openapi import openapi_document
from web.security import write_endpoint

bp = Blueprint("api", __name__)
log = logging.getLogger("web")

MAX_K = 100
MAX_QUERY_CHARS = 2000
MAX_LIST = 1000
DEFAULT_SEARCH_K = 10
DEFAULT_ASK_K = 5
DEFAULT_MODE = "hybrid"
DEFAULT_READER = "prompt"
UPLOAD_DIRNAME = "uploads"


def resources():
    return current_app.extensions["rag"]


# --- input checks (the edge: every field is validated here, with its name in the message) ------

def modes() -> tuple[str, ...]:
    from rag.search import MODES

    return tuple(MODES)


def readers() -> tuple[str, ...]:
    from rag.readers import READERS

    return tuple(READERS)


def parse_query(value: Any, field: str) -> str:
    if value is None:
        value = ""
    if not isinstance(value, str):
        raise ApiError(400, f"'{field}' must be a string")
    value = value.strip()
    if not value:
        raise ApiError(400, f"'{field}' is empty: type a query")
    if len(value) > MAX_QUERY_CHARS:
        raise ApiError(400, f"'{field}' is too long ({len(value)} characters; at most {MAX_QUERY_CHARS})")
    return value


def ask_max_k() -> int:
    from rag.answer import MAX_K as ANSWER_MAX_K

    return min(MAX_K, ANSWER_MAX_K)


def parse_k(value: Any, default: int, most: int = MAX_K) -> int:
    if value is None or value == "":
        return default
    problem = f"'k' must be an integer from 1 to {most}, not {value!r}"
    if isinstance(value, bool):
        raise ApiError(400, problem)
    try:
        k = int(value)
        if isinstance(value, float) and value != k:
            raise ValueError
    except (TypeError, ValueError):
        raise ApiError(400, problem) from None
    if not 1 <= k <= most:
        raise ApiError(400, problem)
    return k


def parse_choice(value: Any, field: str, choices: tuple[str, ...], default: str) -> str:
    if value is None or value == "":
        return default
    if value not in choices:
        raise ApiError(400, f"unknown {field} {value!r}: choose one of {', '.join(choices)}")
    return value


def parse_bool(value: Any, field: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off", ""):
        return value.lower() in ("true", "1", "yes", "on")
    raise ApiError(400, f"'{field}' must be true or false, not {value!r}")


def parse_where(values: list[str] | str | dict | None) -> dict[str, str] | None:
    """FIELD=VALUE filters (collection=NAME, path=GLOB, title=GLOB, id=N or a metadata field)."""
    if not values:
        return None
    if isinstance(values, dict):
        items = [f"{k}={v}" for k, v in values.items()]
    elif isinstance(values, str):
        items = [values]
    elif isinstance(values, list) and all(isinstance(v, str) for v in values):
        items = values
    else:
        raise ApiError(400, "'where' must be FIELD=VALUE, a list of them, or an object")
    where: dict[str, str] = {}
    for item in items:
        for part in item.split("&") if "&" in item else [item]:
            field, sep, value = part.partition("=")
            if not sep or not field.strip():
                raise ApiError(400, f"bad 'where' filter {part!r}: use FIELD=VALUE, e.g. collection=notes")
            where[field.strip()] = value.strip()
    return where


def json_body() -> dict:
    if not request.is_json:
        raise ApiError(415, "send the request body as JSON (Content-Type: application/json)")
    body = request.get_json(silent=True)
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


# --- shapes ---------------------------------------------------------------------------------------

def matched_terms(query: str, text: str) -> list[str]:
    """The query's words found in the text: a word matches when it starts with the term's stem,
    the rule the CLI marks snippets by (rag.snippets), as one regex search per term."""
    lowered = text.lower()
    return [term for term in query_terms(query) if re.search(r"(?<!\w)" + re.escape(_stem(term)), lowered)]


def hit_json(hit: Hit, query: str) -> dict:
    data = hit.to_json()
    data["matched_terms"] = matched_terms(query, hit.passage.text)
    data["document"]["collection"] = hit.document.collection
    return data


def answer_json(answer: Answer) -> dict:
    data = answer.to_json()
    data["passages"] = [hit_json(h, answer.question) for h in answer.passages]
    return data


def stats_json() -> dict:
    res = resources()
    stats = res.library.stats()
    stats["encoder"] = stats.get("encoder") or res.encoder_name()
    stats["generator"] = res.generator_status()
    stats["message"] = ""
    if not stats.get("documents"):
        stats["message"] = ("The library is empty: add files with the upload form below, "
                            "or run `rag ingest PATH` and reload.")
    elif stats["generator"]["state"] == "missing":
        stats["message"] = "Search works, but Ask needs a generator: " + stats["generator"]["message"]
    return stats


# --- health and stats -----------------------------------------------------------------------------

@bp.get("/healthz")
def healthz():
    return {"status": "ok"}


@bp.get("/api/stats")
def api_stats():
    return stats_json()


@bp.get("/api/openapi.json")
def openapi():
    return openapi_document(modes(), readers(), MAX_K, ask_max_k())


# --- search and ask -------------------------------------------------------------------------------

@bp.get("/api/search")
def api_search():
    from rag.search import search

    q = parse_query(request.args.get("q"), "q")
    k = parse_k(request.args.get("k"), DEFAULT_SEARCH_K)
    mode = parse_choice(request.args.get("mode"), "mode", modes(), DEFAULT_MODE)
    where = parse_where(request.args.getlist("where"))
    hits = search(resources().library, q, k=k, mode=mode, where=where)
    return {"query": q, "mode": mode, "results": [hit_json(h, q) for h in hits]}


class AskCancelled(Exception):
    """The client went away; stop generating."""


def _ask(params: dict, on_token=None, on_status=None) -> Answer:
    """Load the generator if needed, then answer one question (one generation at a time)."""
    from rag.answer import ask

    res = resources()
    if not res.generator_loaded and on_status:
        on_status("Loading the generator model (first Ask; this can take a minute)…")
    try:
        generator = res.generator()
    except RagError as exc:
        raise ApiError(503, f"the generator is unavailable: {exc}") from exc
    if res.generate_lock.locked() and on_status:
        on_status("Waiting for another answer to finish…")
    with res.generate_lock:
        if on_status:
            on_status("Writing hypothetical passages (HyDE), then retrieving and answering…" if params["hyde"]
                      else "Retrieving passages and writing the answer…")
        return ask(res.library, params["question"], k=params["k"], mode=params["mode"], hyde=params["hyde"],
                   reader=params["reader"], generator=generator, where=params["where"], on_token=on_token)


def _sse(event: str, data: dict) -> str:
    return f"event: {event}\ndata: {json.dumps(data)}\n\n"


def _stream_answer(app, params: dict) -> Iterator[str]:
    """Run the answer in a worker thread and relay status, tokens and the final answer as SSE."""
    events: queue.Queue = queue.Queue()
    cancelled = threading.Event()

    def on_token(text: str) -> None:
        if cancelled.is_set():
            raise AskCancelled()
        events.put(("token", {"text": text}))

    def work() -> None:
        with app.app_context():
            try:
                answer = _ask(params, on_token=on_token, on_status=lambda m: events.put(("status", {"message": m})))
                events.put(("answer", answer_json(answer)))
            except AskCancelled:
                pass
            except ApiError as exc:
                events.put(("error", {"error": exc.message, "status": exc.status}))
            except RagError as exc:
                events.put(("error", {"error": str(exc), "status": 400}))
            except Exception as exc:  # a bug: log it, tell the page without a traceback
                log.exception("ask failed")
                events.put(("error", {"error": f"internal error ({type(exc).__name__})", "status": 500}))
            finally:
                events.put(None)

    threading.Thread(target=work, name="rag-ask", daemon=True).start()
    try:
        while True:
            try:
                item = events.get(timeout=10)
            except queue.Empty:
                yield ": still working\n\n"  # keeps proxies from timing out; a gone client fails here
                continue
            if item is None:
                return
            yield _sse(*item)
    finally:
        cancelled.set()


@bp.post("/api/ask")
def api_ask():
    body = json_body()
    params = {
        "question": parse_query(body.get("question"), "question"),
        "k": parse_k(body.get("k"), DEFAULT_ASK_K, ask_max_k()),
        "mode": parse_choice(body.get("mode"), "mode", modes(), DEFAULT_MODE),
        "hyde": parse_bool(body.get("hyde"), "hyde"),
        "reader": parse_choice(body.get("reader"), "reader", readers(), DEFAULT_READER),
        "where": parse_where(body.get("where")),
    }
    if request.accept_mimetypes.best == "text/event-stream" or body.get("stream") is True:
        app = current_app._get_current_object()
        return Response(_stream_answer(app, params), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return answer_json(_ask(params))


# --- documents ------------------------------------------------------------------------------------

def _document(doc_id: int):
    try:
        return resources().library.document(doc_id)
    except RagError as exc:
        raise ApiError(404, str(exc)) from exc


@bp.get("/api/documents")
def list_documents():
    try:
        limit = int(request.args.get("limit") or 100)
        offset = int(request.args.get("offset") or 0)
    except ValueError:
        raise ApiError(400, "'limit' and 'offset' must be whole numbers") from None
    if not 1 <= limit <= MAX_LIST or offset < 0:
        raise ApiError(400, f"'limit' must be from 1 to {MAX_LIST} and 'offset' at least 0")
    collection = request.args.get("collection") or None
    docs = resources().library.documents(collection=collection)
    page = docs[offset:offset + limit]
    return {"total": len(docs), "offset": offset,
            "documents": [dict(d.to_json(), collection=d.collection, size=d.size, ingested_at=d.ingested_at)
                          for d in page]}


@bp.get("/api/documents/<int:doc_id>")
def get_document(doc_id: int):
    library = resources().library
    doc = _document(doc_id)
    passages = library.passages_of(doc_id)
    return {
        "document": dict(doc.to_json(), collection=doc.collection, size=doc.size, mtime=doc.mtime,
                         metadata=doc.metadata, ingested_at=doc.ingested_at),
        "text": library.document_text(doc_id),
        "passages": [{"id": p.id, "order": p.order, "start": p.start, "end": p.end} for p in passages],
    }


def upload_dir() -> Path:
    path = Path(resources().data_dir) / UPLOAD_DIRNAME
    path.mkdir(parents=True, exist_ok=True)
    return path


def _collection_name(value: str | None) -> str:
    name = (value or "default").strip() or "default"
    if len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name):
        raise ApiError(400, f"bad 'collection' {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def _ingest_upload(storage, collection: str) -> dict:
    """Save one uploaded file under a safe name in the upload folder and ingest it like the CLI does."""
    from rag.ingest import ingest_paths

    original = storage.filename or ""
    name = secure_filename(os.path.basename(original.replace("\\", "/")))
    result: dict[str, Any] = {"file": original, "saved_as": name}
    if not name:
        return dict(result, status="failed", reason="the file name is empty or unusable")
    folder = upload_dir()
    target = folder / name
    partial = folder / f".{uuid.uuid4().hex}.part"
    try:
        storage.save(str(partial))
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        return dict(result, status="failed", reason=f"cannot save the upload: {exc.strerror or exc}")
    report = ingest_paths(resources().library, [str(target)], collection=collection)
    if report.failed:
        reasons = "; ".join(reason for _, reason in report.failures) or "ingestion failed"
        return dict(result, status="failed", reason=reasons)
    status = "added" if report.added else "updated" if report.updated else "skipped"
    try:
        doc = resources().library.find_document(str(target))
    except RagError:
        doc = None
    if doc is not None:
        result["document"] = doc.to_json()
        result["passages"] = len(resources().library.passages_of(doc.id))
    if status == "skipped":
        result["reason"] = "unchanged: already in the library"
    return dict(result, status=status)


@bp.post("/api/documents")
@write_endpoint
def upload_documents():
    files = request.files.getlist("file")
    if not files:
        raise ApiError(400, "no file in the multipart field 'file'")
    collection = _collection_name(request.form.get("collection"))
    res = resources()
    with res.write_lock:
        results = [_ingest_upload(f, collection) for f in files]
    counts = {s: sum(r["status"] == s for r in results) for s in ("added", "updated", "skipped", "failed")}
    body = dict(counts, files=results)
    if counts["failed"] == len(results):
        body["error"] = "no file could be ingested: " + "; ".join(f"{r['file']}: {r['reason']}" for r in results)
        return jsonify(body), 422
    return jsonify(body), 200


@bp.delete("/api/documents/<int:doc_id>")
@write_endpoint
def delete_document(doc_id: int):
    res = resources()
    with res.write_lock:
        doc = _document(doc_id)
        res.library.remove_document(doc_id)
        uploaded = Path(doc.path)
        folder = upload_dir().resolve()
        if uploaded.parent.resolve() == folder and uploaded.is_file():
            uploaded.unlink()  # so the file is not ingested again from the upload folder
    return {"deleted": doc.to_json()}
