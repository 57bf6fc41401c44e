"""The web search-and-answer UI and JSON API (Flask).

    app = create_app({"DATA_DIR": "rag-data"})   # then serve it: `rag serve` (waitress)

Configuration comes from the argument, then the environment (RAG_DATA, RAG_API_TOKEN), never globals.
Keys: DATA_DIR, API_TOKEN, MAX_CONTENT_LENGTH (upload limit, bytes), MAX_UPLOAD_FILES (per request),
MAX_UPLOAD_PASSAGES (per file), GENERATOR (engine name),
GENERATOR_OPTIONS, ENCODER_MODEL, BACKEND, ALLOWED_HOSTS (extra Host names on a loopback bind),
BIND_HOST (the address served: beyond loopback every data request needs the token),
CLUSTER (a Ray address: the library is sharded over a cluster, rag.cluster), ALLOW_PARTIAL,
LIBRARY / ENCODER_OBJECT / GENERATOR_OBJECT (already loaded objects to share, e.g. in tests).
"""
from __future__ import annotations

import os
import secrets

from flask import Flask

from rag.config import data_dir

DEFAULT_MAX_UPLOAD = 50 * 1024 * 1024
DEFAULT_MAX_UPLOAD_FILES = 100  # files in one upload request
DEFAULT_MAX_UPLOAD_PASSAGES = 20_000  # passages one uploaded file may make (a 50 MB text makes ~40,000)


def create_app(config: dict | None = None) -> Flask:
    """A Flask app over one library; the encoder, index and generator are loaded once per app."""
    from web import api, pages
    from web.errors import register_error_handlers
    from web.resources import Resources
    from web.security import check_host

    app = Flask(__name__)
    app.config.update(
        DATA_DIR=None,
        API_TOKEN=os.environ.get("RAG_API_TOKEN") or None,
        MAX_CONTENT_LENGTH=DEFAULT_MAX_UPLOAD,
        MAX_UPLOAD_FILES=DEFAULT_MAX_UPLOAD_FILES,
        MAX_UPLOAD_PASSAGES=DEFAULT_MAX_UPLOAD_PASSAGES,
        GENERATOR="local",
        ALLOWED_HOSTS=(),
        BIND_HOST="127.0.0.1",
        CLUSTER=os.environ.get("RAG_RAY_ADDRESS") or None,
        ALLOW_PARTIAL=False,
        JSON_SORT_KEYS=False,
    )
    app.config.update(config or {})
    app.config["DATA_DIR"] = str(data_dir(app.config["DATA_DIR"]))
    app.config["CSRF_TOKEN"] = secrets.token_urlsafe(32)
    app.json.sort_keys = False
    app.extensions["rag"] = Resources(app.config)

    app.before_request(check_host)
    register_error_handlers(app)
    app.register_blueprint(pages.bp)
    app.register_blueprint(api.bp)

    @app.context_processor
    def page_globals():
        return {"csrf_token": app.config["CSRF_TOKEN"]}

    @app.after_request
    def security_headers(response):
        response.headers.setdefault("X-Content-Type-Options", "nosniff")
        response.headers.setdefault("Referrer-Policy", "same-origin")
        response.headers.setdefault("X-Frame-Options", "DENY")
        if response.mimetype == "text/html":
            response.headers.setdefault(
                "Content-Security-Policy",
                "default-src 'self'; script-src 'self'; style-src 'self'; img-src 'self' data:; "
                "object-src 'none'; base-uri 'none'; frame-ancestors 'none'; form-action 'self'")
        return response

    return app
