"""The HTML pages: the search-and-answer page and a document view with a passage highlighted."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request

from rag.errors import RagError
from rag.locations import location_label
from rag.records import Passage

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    from web.api import DEFAULT_MODE, MAX_K, default_reader, modes, readers, stats_json

    return render_template(
        "index.html", stats=stats_json(), modes=modes(), readers=readers(), default_reader=default_reader(), default_mode=DEFAULT_MODE,
        max_k=MAX_K, q=request.args.get("q", ""), auth_required=bool(current_app.config["API_TOKEN"]),
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


@bp.get("/documents/<int:doc_id>")
def document(doc_id: int):
    """The whole document, PDF page markers in it; ?passage=ID highlights that passage by its
    character offsets (link with #highlight), ?page=N names the page (link with #page-N)."""
    store = current_app.extensions["rag"].library.store
    try:
        doc = store.document(doc_id)
        text = store.document_text(doc_id)
        passages = store.passages_of(doc_id)
        page_starts = store.page_starts(doc_id)
    except RagError:
        abort(404)
    passage = None
    wanted = request.args.get("passage", type=int)
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
