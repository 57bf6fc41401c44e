"""The HTML pages: the search-and-answer page and a document view with a passage highlighted."""
from __future__ import annotations

from flask import Blueprint, abort, current_app, render_template, request

from rag.errors import RagError

bp = Blueprint("pages", __name__)


@bp.get("/")
def index():
    from rag.contract import DEFAULT_MODE, MODES, SEARCH_K, readers
    from web.api import stats_json
    from web.server import is_loopback

    if is_loopback(current_app.config["BIND_HOST"]):
        stats = stats_json()
    else:  # the page is public beyond loopback; the library's figures come with the token (app.js)
        stats = {"documents": "–", "passages": "–", "backend": "", "encoder": "", "message":
                 "Enter the API token below to search this library.",
                 "generator": {"state": "lazy", "message": ""}}
    return render_template(
        "index.html", stats=stats, modes=MODES, readers=readers(), default_mode=DEFAULT_MODE,
        max_k=SEARCH_K.most, q=request.args.get("q", ""), auth_required=bool(current_app.config["API_TOKEN"]),
    )


@bp.get("/documents/<doc_id>")
def document(doc_id: str):
    """The whole document; ?passage=ID highlights that passage by its character offsets."""
    from rag.contract import parse_document_id

    library = current_app.extensions["rag"].library
    try:
        doc = library.document(parse_document_id(doc_id))
        text = library.document_text(doc.id)
        passages = library.passages_of(doc.id)
    except RagError:
        abort(404)
    passage = None
    wanted = request.args.get("passage", type=int)  # compared with this page's ids only
    if wanted is not None:
        passage = next((p for p in passages if p.id == wanted), None)
    if passage is None:
        before, marked, after = text, "", ""
    else:
        before, marked, after = text[:passage.start], text[passage.start:passage.end], text[passage.end:]
    return render_template("document.html", document=doc, passage=passage, passage_count=len(passages),
                           before=before, marked=marked, after=after)
