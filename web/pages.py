"""The HTML pages: the search-and-answer page and a document view with a passage highlighted."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request

from rag.errors import RagError
from rag.ingest.locations import location_label
from rag.records import Passage

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    from rag.contract import DEFAULT_MODE, DEFAULT_READER, MODES, SEARCH_K, readers
    from web.api import stats_json
    from web.security import is_loopback

    if is_loopback(current_app.config["BIND_HOST"]):
        stats = stats_json()
    else:  # the page is public beyond loopback; the library's figures come with the token (app.js)
        stats = {"documents": "–", "passages": "–", "backend": "", "encoder": "", "message":
                 "Enter the API token below to search this library.",
                 "generator": {"state": "lazy", "message": ""}, "reader": None}
    reader = stats.get("reader")
    stats["reader_label"] = "" if not reader else (
        reader.get("message", "") if reader.get("source") == "missing" else f"span, {reader['source']}: {reader['name']}")
    return render_template(
        "index.html", stats=stats, modes=MODES, readers=readers(), default_reader=DEFAULT_READER,
        default_mode=DEFAULT_MODE,
        max_k=SEARCH_K.most, q=request.args.get("q", ""), auth_required=bool(current_app.config["API_TOKEN"]),
    )


def document_pieces(text: str, page_starts: list[int], passage: Passage | None) -> list[tuple[str, object]]:
    """The text cut where PDF pages start and where the passage begins and ends, in order:
    ("text", str), ("page", n) for a page marker, ("open", None) / ("close", None) around the passage."""
    events: list[tuple[int, int, str, object]] = [(min(start, len(text)), 1, "page", n)
                                                  for n, start in enumerate(page_starts, 1)]
    if passage is not None:  # at one offset: close the highlight, then mark the page, then open it
        events += [(passage.start, 2, "open", None), (passage.end, 0, "close", None)]
    pieces: list[tuple[str, object]] = []
    at = 0
    for offset, _, kind, value in sorted(events, key=lambda e: (e[0], e[1])):
        if offset > at:
            pieces.append(("text", text[at:offset]))
            at = offset
        pieces.append((kind, value))
    if at < len(text):
        pieces.append(("text", text[at:]))
    return pieces


@bp.get("/documents/<doc_id>")
def document(doc_id: str):
    """The whole document, PDF page markers in it; ?passage=ID highlights that passage by its
    character offsets (link with #highlight), ?page=N names the page (link with #page-N)."""
    from rag.contract import parse_document_id

    library = current_app.extensions["rag"].library
    try:
        doc = library.document(parse_document_id(doc_id))
        text = library.document_text(doc.id)
        passages = library.passages_of(doc.id)
        page_starts = library.page_starts(doc.id)
    except RagError:
        abort(404)
    passage = None
    wanted = request.args.get("passage", type=int)  # compared with this page's ids only
    if wanted is not None:
        passage = next((p for p in passages if p.id == wanted), None)
    page = request.args.get("page", type=int)
    if passage is not None and passage.page is not None:
        page = passage.page
    elif page is not None and not 1 <= page <= len(page_starts):
        page = None
    return render_template("document.html", document=doc, passage=passage, passage_count=len(passages),
                           pieces=document_pieces(text, page_starts, passage), page=page,
                           page_count=len(page_starts), where=location_label(
                               passage.page, passage.last_page, passage.heading) if passage else "")
