"""The JSON API: search, ask (plain or streamed as server-sent events), documents, stats, health.

Requests and shapes follow rag.contract, the rules the CLI reads too: /api/search returns exactly
what `rag search --json` prints, /api/ask what `rag ask --json` prints. Every error is
``{"error": message}`` with a 4xx status (see web/errors.py).
"""
from __future__ import annotations

import hashlib
import json
import logging
import os
import queue
import threading
import uuid
from pathlib import Path
from typing import Any, Iterator

from flask import Blueprint, Response, current_app, jsonify, request
from werkzeug.utils import secure_filename

from rag.contract import (ASK_K, LIST_LIMIT, SEARCH_K, answer_json, check_mode, check_query, check_reader,
                          document_json, parse_document_id, parse_where, passage_json, search_json)
from rag.errors import RagError
from rag.records import Answer
from web.errors import ApiError
from web.openapi import openapi_document
from web.security import write_endpoint

bp = Blueprint("api", __name__)
log = logging.getLogger("web")

UPLOAD_DIRNAME = "uploads"


def resources():
    return current_app.extensions["rag"]


# --- input checks: the rules live in rag.contract; here they meet the request ---------------------

def parse_bool(value: Any, field: str) -> bool:
    if value is None:
        return False
    if isinstance(value, bool):
        return value
    if isinstance(value, str) and value.lower() in ("true", "1", "yes", "on", "false", "0", "no", "off", ""):
        return value.lower() in ("true", "1", "yes", "on")
    raise ApiError(400, f"'{field}' must be true or false, not {value!r}")


def parse_offset(value: Any) -> int:
    if value is None or value == "":
        return 0
    if not isinstance(value, str) or not value.isascii() or not value.isdigit() or len(value) > 18:
        raise ApiError(400, f"'offset' must be a whole number from 0, not {value!r}")
    return int(value)


def json_body() -> dict:
    if not request.is_json:
        raise ApiError(415, "send the request body as JSON (Content-Type: application/json)")
    try:
        body = request.get_json(silent=True)
    except RecursionError:
        raise ApiError(400, "the JSON body is nested too deeply") from None
    if not isinstance(body, dict):
        raise ApiError(400, "the request body must be a JSON object")
    return body


# --- shapes (rag.contract holds them; stats adds the server's own status) ----------------------

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
        stats["message"] = ("Search and Ask (span and extract readers) work; the prompt and fid readers and HyDE "
                            "need a generator: " + stats["generator"]["message"])
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
    return openapi_document()


# --- search and ask -------------------------------------------------------------------------------

@bp.get("/api/search")
def api_search():
    from rag.search.ranking import search

    q = check_query(request.args.get("q"), "q")
    k = SEARCH_K.parse(request.args.get("k"))
    mode = check_mode(request.args.get("mode"))
    where = parse_where(request.args.getlist("where"))
    library = resources().library
    tracking = getattr(library, "tracking_missing", None)  # a cluster library: shards may be down
    if tracking is None:
        return search_json(q, mode, search(library, q, k=k, mode=mode, where=where))
    with tracking() as missing:
        hits = search(library, q, k=k, mode=mode, where=where)
    return search_json(q, mode, hits, missing)


class AskCancelled(Exception):
    """The client went away; stop generating."""


def _ask(params: dict, on_token=None, on_status=None) -> Answer:
    """Load the generator if needed, then answer one question (one generation at a time)."""
    from rag.answer.pipeline import ask
    from rag.answer.readers import NEEDS_GENERATOR

    res = resources()
    generator = None
    if params["reader"] in NEEDS_GENERATOR or params["hyde"]:
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
        "question": check_query(body.get("question"), "question"),
        "k": ASK_K.parse(body.get("k")),
        "mode": check_mode(body.get("mode")),
        "hyde": parse_bool(body.get("hyde"), "hyde"),
        "reader": check_reader(body.get("reader")),
        "where": parse_where(body.get("where")),
    }
    if request.accept_mimetypes.best == "text/event-stream" or body.get("stream") is True:
        app = current_app._get_current_object()
        return Response(_stream_answer(app, params), mimetype="text/event-stream",
                        headers={"Cache-Control": "no-cache", "X-Accel-Buffering": "no"})
    return answer_json(_ask(params))


# --- documents ------------------------------------------------------------------------------------

def _document(raw_id: str):
    """The document a URL names; anything else (not ASCII digits, beyond 2^63 - 1, gone) is a 404."""
    try:
        return resources().library.document(parse_document_id(raw_id))
    except RagError as exc:
        raise ApiError(404, str(exc)) from exc


@bp.get("/api/documents")
def list_documents():
    limit = LIST_LIMIT.parse(request.args.get("limit"), "limit")
    offset = parse_offset(request.args.get("offset"))
    collection = request.args.get("collection") or None
    library = resources().library
    docs = library.documents(collection=collection)
    counts = library.passage_counts()
    page = docs[offset:offset + limit]
    return {"total": len(docs), "offset": offset,
            "documents": [document_json(d, counts.get(d.id, 0)) for d in page]}


@bp.get("/api/documents/<doc_id>")
def get_document(doc_id: str):
    library = resources().library
    doc = _document(doc_id)
    passages = library.passages_of(doc.id)
    return {
        "document": document_json(doc, len(passages)),
        "text": library.document_text(doc.id),
        "page_starts": library.page_starts(doc.id),
        "passages": [passage_json(p) for p in passages],
    }


def upload_root() -> Path:
    return Path(resources().data_dir) / UPLOAD_DIRNAME


def upload_name(original: str) -> str:
    """A safe file name for an upload. When making it safe changed the name ('my notes.txt' ->
    'my_notes.txt'), a short hash of the original is added, so two names that flatten alike
    ('my notes.txt', 'my_notes.txt') never replace each other; the same name maps to the same file."""
    base = os.path.basename(original.replace("\\", "/"))
    name = secure_filename(base)
    if name and name != base:
        stem, suffix = os.path.splitext(name)
        name = f"{stem}-{hashlib.sha256(base.encode('utf-8', 'surrogatepass')).hexdigest()[:8]}{suffix}"
    return name


def _collection_name(value: str | None) -> str:
    name = (value or "default").strip() or "default"
    if len(name) > 100 or not all(c.isalnum() or c in "-_." for c in name) or not name.strip("."):
        raise ApiError(400, f"bad 'collection' {name!r}: use letters, digits, '-', '_' or '.'")
    return name


def _ingest_upload(storage, collection: str) -> dict:
    """Save one uploaded file under a safe name in <data>/uploads/<collection>/ and ingest it like
    the CLI does. A file that fails leaves nothing behind (a replaced file comes back)."""
    from rag.ingest.pipeline import ingest_paths

    original = storage.filename or ""
    name = upload_name(original)
    result: dict[str, Any] = {"file": original, "saved_as": name}
    if not name:
        return dict(result, status="failed", reason="the file name is empty or unusable")
    folder = upload_root() / collection
    folder.mkdir(parents=True, exist_ok=True)
    target = folder / name
    partial = folder / f".{uuid.uuid4().hex}.part"
    previous = folder / f".{uuid.uuid4().hex}.previous"
    try:
        storage.save(str(partial))
        if target.exists():
            os.replace(target, previous)
        os.replace(partial, target)
    except OSError as exc:
        partial.unlink(missing_ok=True)
        if previous.exists():
            os.replace(previous, target)
        return dict(result, status="failed", reason=f"cannot save the upload: {exc.strerror or exc}")
    try:
        report = ingest_paths(resources().library, [str(target)], collection=collection,
                              max_passages=current_app.config["MAX_UPLOAD_PASSAGES"])
    except BaseException:
        _restore(target, previous)
        raise
    if report.failed:
        _restore(target, previous)
        reasons = "; ".join(reason for _, reason in report.failures) or "ingestion failed"
        return dict(result, status="failed", reason=reasons)
    previous.unlink(missing_ok=True)
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


def _restore(target: Path, previous: Path) -> None:
    """Undo a failed upload on disk: the file that was there before, or nothing."""
    if previous.exists():
        os.replace(previous, target)
    else:
        target.unlink(missing_ok=True)


@bp.post("/api/documents")
@write_endpoint
def upload_documents():
    files = request.files.getlist("file")
    if not files:
        raise ApiError(400, "no file in the multipart field 'file'")
    most = current_app.config["MAX_UPLOAD_FILES"]
    if len(files) > most:
        raise ApiError(413, f"too many files: {len(files)} in one request (the limit is {most} files per "
                            "request; send them in several)")
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


@bp.delete("/api/documents/<doc_id>")
@write_endpoint
def delete_document(doc_id: str):
    res = resources()
    with res.write_lock:
        doc = _document(doc_id)
        res.library.remove_document(doc.id)
        uploaded = Path(doc.path)
        if uploaded.is_file() and uploaded.resolve().is_relative_to(upload_root().resolve()):
            uploaded.unlink()  # so the file is not ingested again from the upload folder
    return {"deleted": doc.to_json()}
