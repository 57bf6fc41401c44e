"""Who may call what: the Host check, the bearer token for writes, and CSRF protection for the page.

The approach:
- Without RAG_API_TOKEN the server only listens on loopback (see web/server.py). On loopback, token
  or not, it answers only requests whose Host header is a loopback name, so a web page elsewhere
  cannot reach it through DNS rebinding. Beyond loopback every request for library data (search,
  ask, documents, stats) needs the token too.
- Write endpoints (upload, delete) then refuse any browser request whose Origin is not this server,
  and browser requests (those with an Origin or Sec-Fetch-Site header) must also carry the page's
  CSRF token in the X-CSRF-Token header. A custom header cannot be sent cross-origin without a CORS
  preflight, which this server never grants. Programs such as curl send neither header and may write.
- With RAG_API_TOKEN every write needs ``Authorization: Bearer <token>``; the page asks the user for it.
- POST /api/ask accepts only a JSON body, which a cross-site form cannot send.
"""
from __future__ import annotations

import hmac
import ipaddress
from functools import wraps

from flask import current_app, request

from web.errors import ApiError

LOOPBACK_NAMES = ("localhost", "localhost.localdomain", "ip6-localhost")


def is_loopback(host: str) -> bool:
    """True for loopback names and addresses (127.0.0.0/8, ::1), with or without a :port or [brackets]."""
    host = host.strip()
    if host.startswith("["):
        host = host[1:].split("]", 1)[0]
    elif host.count(":") == 1:
        host = host.split(":", 1)[0]
    if host.lower() in LOOPBACK_NAMES:
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


# Served without the token even beyond loopback: they hold no library data.
PUBLIC_PATHS = ("/healthz", "/api/openapi.json", "/")


def check_host() -> None:
    """Before every request. On a loopback bind (token or not) only loopback Host names are
    answered, so a page elsewhere cannot reach the server through DNS rebinding; beyond loopback
    (which needs RAG_API_TOKEN) every read needs the token too, not only writes."""
    if not is_loopback(current_app.config["BIND_HOST"]):
        if request.path not in PUBLIC_PATHS and not request.path.startswith("/static/"):
            check_token(current_app.config["API_TOKEN"])
        return
    host = request.host
    if is_loopback(host) or host.split(":")[0] in current_app.config["ALLOWED_HOSTS"]:
        return
    raise ApiError(403, f"unexpected Host header {host!r}: this server listens on loopback and answers "
                        "loopback names only (localhost, 127.0.0.1, [::1])")


def check_token(token: str | None) -> None:
    """``Authorization: Bearer <token>``, compared in constant time."""
    if not token:
        raise ApiError(403, "this server listens beyond loopback without RAG_API_TOKEN; set it and restart")
    given = request.headers.get("Authorization", "")
    scheme, _, value = given.partition(" ")
    if scheme.lower() != "bearer" or not value:
        raise ApiError(401, "this endpoint needs 'Authorization: Bearer <token>' (RAG_API_TOKEN is set)")
    if not hmac.compare_digest(value.strip().encode(), token.encode()):
        raise ApiError(401, "wrong API token")


def check_write_allowed() -> None:
    """The bearer token when one is configured; otherwise same-origin plus the CSRF token for browsers."""
    token = current_app.config["API_TOKEN"]
    if token:
        check_token(token)
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
