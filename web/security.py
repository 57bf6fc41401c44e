"""Who may call what: the Host check, the bearer token for writes, and CSRF protection for the page.

The approach:
- Without RAG_API_TOKEN the server only listens on loopback (see web/server.py) and answers only
  requests whose Host header is a loopback name, so a web page elsewhere cannot reach it through
  DNS rebinding.
- Write endpoints (upload, delete) then refuse any browser request whose Origin is not this server,
  and browser requests (those with an Origin or Sec-Fetch-Site header) must also carry the page's
  CSRF token in the X-CSRF-Token header. A custom header cannot be sent cross-origin without a CORS
  preflight, which this server never grants. Programs such as curl send neither header and may write.
- With RAG_API_TOKEN every write needs ``Authorization: Bearer <token>``; the page asks the user for it.
- POST /api/ask accepts only a JSON body, which a cross-site form cannot send.
"""
from __future__ import annotations

import hmac
from functools import wraps

from flask import current_app, request

from web.errors import ApiError
from web.server import is_loopback


def check_host() -> None:
    """Before every request: without an API token, answer loopback Host names only."""
    if current_app.config["API_TOKEN"]:
        return
    host = request.host
    if is_loopback(host) or host.split(":")[0] in current_app.config["ALLOWED_HOSTS"]:
        return
    raise ApiError(403, f"unexpected Host header {host!r}: without RAG_API_TOKEN this server answers "
                        "loopback names only (localhost, 127.0.0.1, [::1])")


def check_write_allowed() -> None:
    """The bearer token when one is configured; otherwise same-origin plus the CSRF token for browsers."""
    token = current_app.config["API_TOKEN"]
    if token:
        given = request.headers.get("Authorization", "")
        scheme, _, value = given.partition(" ")
        if scheme.lower() != "bearer" or not value:
            raise ApiError(401, "this endpoint needs 'Authorization: Bearer <token>' (RAG_API_TOKEN is set)")
        if not hmac.compare_digest(value.strip().encode(), token.encode()):
            raise ApiError(401, "wrong API token")
        return
    origin = request.headers.get("Origin")
    if origin is not None and origin.rstrip("/") != request.host_url.rstrip("/"):
        raise ApiError(403, f"cross-origin write refused (Origin {origin})")
    from_browser = origin is not None or "Sec-Fetch-Site" in request.headers
    if from_browser:
        sent = request.headers.get("X-CSRF-Token", "")
        if not hmac.compare_digest(sent.encode(), current_app.config["CSRF_TOKEN"].encode()):
            raise ApiError(403, "missing or wrong CSRF token: reload the page and try again")


def write_endpoint(view):
    """Decorator for endpoints that change the library."""

    @wraps(view)
    def guarded(*args, **kwargs):
        check_write_allowed()
        return view(*args, **kwargs)

    return guarded
