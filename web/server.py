"""Serving the app with waitress: the bind-address rule and a server object tests and benchmarks can stop.
(Whether a host is loopback is web.security's rule, which the Host check shares.)"""
from __future__ import annotations

import threading

from flask import Flask
from waitress.server import create_server

from rag.errors import RagError
from web.security import is_loopback


def check_bind_host(host: str, token: str | None) -> None:
    """Refuse to listen beyond this machine unless write endpoints are protected by RAG_API_TOKEN."""
    if not is_loopback(host) and not token:
        raise RagError(
            f"refusing to listen on {host}: anyone on the network could upload and delete documents; "
            "set RAG_API_TOKEN to a secret to require it for writes, or use --host 127.0.0.1"
        )


# waitress accepts 100 connections by default, and idle ones count: 120 idle sockets locked everyone
# out. Its select() loop cannot watch descriptors past 1024, so the limit stays well below that.
CONNECTION_LIMIT = 600
CHANNEL_TIMEOUT = 20  # seconds a connection may sit idle (a streamed answer sends a comment every 10 s)
CLEANUP_INTERVAL = 5  # how often idle connections are looked for


def make_server(app: Flask, host: str = "127.0.0.1", port: int = 8000, threads: int = 8,
                channel_timeout: int = CHANNEL_TIMEOUT, cleanup_interval: int = CLEANUP_INTERVAL):
    """A waitress server bound now (port 0 picks a free one: see ``.effective_port``); call ``.run()``."""
    _allow_open_files(CONNECTION_LIMIT + 200)
    return create_server(app, host=host, port=port, threads=threads, ident="rag",
                         connection_limit=CONNECTION_LIMIT, channel_timeout=channel_timeout,
                         cleanup_interval=cleanup_interval)


def _allow_open_files(wanted: int) -> None:
    """Raise this process's soft open-file limit towards ``wanted`` (never past the hard limit)."""
    import resource

    soft, hard = resource.getrlimit(resource.RLIMIT_NOFILE)
    if soft != resource.RLIM_INFINITY and soft < wanted:
        target = wanted if hard == resource.RLIM_INFINITY else min(wanted, hard)
        resource.setrlimit(resource.RLIMIT_NOFILE, (target, hard))


class BackgroundServer:
    """A waitress server running in a daemon thread, for tests and the load benchmark."""

    def __init__(self, app: Flask, host: str = "127.0.0.1", port: int = 0, threads: int = 8, **limits):
        self.server = make_server(app, host, port, threads, **limits)
        self.url = f"http://{host}:{self.server.effective_port}"
        self.thread = threading.Thread(target=self.server.run, name="rag-waitress", daemon=True)

    def __enter__(self) -> "BackgroundServer":
        self.thread.start()
        return self

    def __exit__(self, *exc) -> None:
        self.close()

    def close(self) -> None:
        """Close the listening socket and every open connection; the loop then ends and the thread exits."""
        from waitress import wasyncore

        wasyncore.close_all(self.server._map)
        self.thread.join(timeout=10)


def serve(data: str | None, host: str = "127.0.0.1", port: int = 8000, threads: int = 8,
          generator: str = "local", echo=print, cluster: str | None = None, allow_partial: bool = False) -> None:
    """`rag serve`: check the bind address, load the library and encoder once, then serve until stopped."""
    import os

    from web import create_app

    token = os.environ.get("RAG_API_TOKEN") or None
    check_bind_host(host, token)
    app = create_app({"DATA_DIR": data, "GENERATOR": generator, "API_TOKEN": token, "BIND_HOST": host,
                      "CLUSTER": cluster, "ALLOW_PARTIAL": allow_partial})
    resources = app.extensions["rag"]
    echo(f"Loading the library in {app.config['DATA_DIR']} (encoder and index)…")
    resources.preload()
    stats = resources.library.stats()
    echo(f"{stats['documents']} documents, {stats['passages']} passages, backend {resources.library.backend}, "
         f"encoder {resources.library.encoder.name}; the generator ({generator}) loads on the first Ask.")
    try:
        server = make_server(app, host, port, threads)
    except OSError as exc:
        raise RagError(f"cannot listen on {host}:{port}: {exc.strerror or exc}") from exc
    shown = f"[{host}]" if ":" in host else host
    echo(f"Serving on http://{shown}:{server.effective_port}/ (API: /api/openapi.json); Ctrl+C stops.")
    if token:
        echo("Uploads and deletes need 'Authorization: Bearer $RAG_API_TOKEN'"
             + ("." if is_loopback(host) else "; so do searches, answers and documents (not loopback)."))
    try:
        server.run()
    except KeyboardInterrupt:
        pass
    finally:
        server.close()
