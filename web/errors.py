"""Errors as JSON: every API failure is ``{"error": message}`` with a 4xx status, never a traceback."""
from __future__ import annotations

import logging

from flask import Flask, jsonify, request
from werkzeug.exceptions import HTTPException

from rag.errors import RagError

log = logging.getLogger("web")


class ApiError(Exception):
    """A request the API refuses, with the HTTP status and the message the caller sees."""

    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status = status
        self.message = message


def _wants_json() -> bool:
    return request.path.startswith("/api/") or request.path == "/healthz"


def error_response(status: int, message: str):
    response = jsonify(error=message)
    response.status_code = status
    if status == 401:
        response.headers["WWW-Authenticate"] = 'Bearer realm="rag"'
    return response


def register_error_handlers(app: Flask) -> None:
    @app.errorhandler(ApiError)
    def api_error(exc: ApiError):
        return error_response(exc.status, exc.message)

    @app.errorhandler(RagError)
    def rag_error(exc: RagError):
        return error_response(400, str(exc))

    @app.errorhandler(HTTPException)
    def http_error(exc: HTTPException):
        if exc.code == 413:
            limit = app.config.get("MAX_CONTENT_LENGTH")
            size = (f"{limit / 1e6:.0f} MB" if limit >= 1e6 else f"{limit:,} bytes") if limit else "the limit"
            return error_response(413, f"upload too large: the request body may be at most {size} "
                                       "(MAX_CONTENT_LENGTH)")
        if not _wants_json():
            return exc
        return error_response(exc.code or 500, exc.description or exc.name)

    @app.errorhandler(Exception)
    def unexpected(exc: Exception):
        log.exception("unhandled error on %s %s", request.method, request.path)
        message = f"internal error ({type(exc).__name__}); the server log has the details"
        if not _wants_json():
            return message, 500, {"Content-Type": "text/plain; charset=utf-8"}
        return error_response(500, message)
