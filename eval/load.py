"""`rag eval load`: many concurrent clients sending searches to a running server for a fixed time.

Measures what a user of the web API sees: requests/s, latency percentiles and errors. Without a URL
the benchmark starts `rag serve` itself in a subprocess (so the clients do not share the server's
interpreter lock) over the given data directory, on a free loopback port.
"""
from __future__ import annotations

import os
import socket
import subprocess
import sys
import tempfile
import threading
import time
from contextlib import contextmanager
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Iterator

import numpy as np
import requests

from rag.errors import RagError

# Used when the server's documents give too few titles to query with.
FALLBACK_QUERIES = [
    "how do I read a file line by line", "error handling with exceptions", "sorting a list",
    "regular expressions", "date and time formatting", "network sockets", "unit testing",
    "command line arguments", "threads and processes", "json encoding", "hash tables",
    "what is a generator", "string formatting", "environment variables", "logging configuration",
]


@dataclass
class LoadReport:
    url: str
    clients: int
    seconds: float
    mode: str
    k: int
    requests: int
    errors: int
    requests_per_s: float
    p50_ms: float
    p95_ms: float
    p99_ms: float
    mean_ms: float
    max_ms: float
    queries: int
    error_samples: list[str] = field(default_factory=list)
    samples: list[tuple[float, float]] = field(default_factory=list, repr=False)  # (start s, latency ms)

    def to_json(self) -> dict:
        data = asdict(self)
        del data["samples"]
        return data


def free_port(host: str = "127.0.0.1") -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind((host, 0))
        return s.getsockname()[1]


@contextmanager
def local_server(data: str | os.PathLike | None, threads: int = 8, timeout: float = 300.0) -> Iterator[str]:
    """`rag serve` in a subprocess on a free loopback port; yields its URL once /healthz answers."""
    port = free_port()
    cmd = [sys.executable, "-c", "from rag.cli import main; main()", "serve", "--host", "127.0.0.1",
           "--port", str(port), "--threads", str(threads)]
    if data:
        cmd += ["--data", str(data)]
    env = dict(os.environ)
    env.pop("RAG_API_TOKEN", None)
    # The server's output goes to a file (a pipe nobody reads would fill up and stall it).
    log = tempfile.TemporaryFile(mode="w+", prefix="rag-serve-")  # noqa: SIM115 - lives as long as the server
    proc = subprocess.Popen(cmd, stdout=log, stderr=subprocess.STDOUT, text=True, env=env,
                            cwd=str(Path(__file__).resolve().parent.parent))
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + timeout
        while True:
            if proc.poll() is not None:
                log.seek(0)
                raise RagError(f"the server exited before answering: {log.read().strip()[-800:]}")
            try:
                if requests.get(url + "/healthz", timeout=2).ok:
                    break
            except requests.RequestException:
                pass
            if time.monotonic() > deadline:
                raise RagError(f"the server did not answer on {url} within {timeout:.0f} s")
            time.sleep(0.3)
        yield url
    finally:
        proc.terminate()
        try:
            proc.wait(timeout=20)
        except subprocess.TimeoutExpired:
            proc.kill()
            proc.wait()
        log.close()


def queries_from(url: str, limit: int = 200) -> list[str]:
    """Document titles from the server as queries (they match real content), else a fixed list."""
    try:
        response = requests.get(f"{url}/api/documents", params={"limit": min(limit, 100)}, timeout=30)
        response.raise_for_status()
        titles = [d["title"] for d in response.json()["documents"] if d.get("title", "").strip()]
    except (requests.RequestException, ValueError, KeyError):
        titles = []
    titles = list(dict.fromkeys(t.strip()[:200] for t in titles))
    return titles if len(titles) >= 10 else titles + FALLBACK_QUERIES


def run_load(url: str, clients: int = 20, seconds: float = 30.0, queries: list[str] | None = None,
             k: int = 10, mode: str = "hybrid") -> LoadReport:
    """Each client sends one search after another (keep-alive) until the time is up."""
    url = url.rstrip("/")
    queries = queries or queries_from(url)
    try:
        requests.get(url + "/healthz", timeout=10).raise_for_status()
    except requests.RequestException as exc:
        raise RagError(f"no server answering at {url}: {exc}") from exc
    latencies: list[list[float]] = [[] for _ in range(clients)]
    started_at: list[list[float]] = [[] for _ in range(clients)]
    errors: list[list[str]] = [[] for _ in range(clients)]
    start = threading.Barrier(clients + 1)
    stop_at = [0.0]

    def client(i: int) -> None:
        session = requests.Session()
        n = i
        start.wait()
        while time.perf_counter() < stop_at[0]:
            q = queries[n % len(queries)]
            n += clients
            t0 = time.perf_counter()
            try:
                r = session.get(url + "/api/search", params={"q": q, "k": k, "mode": mode}, timeout=60)
                ok = r.status_code == 200 and "results" in r.json()
                problem = "" if ok else f"HTTP {r.status_code}: {r.text[:200]}"
            except (requests.RequestException, ValueError) as exc:
                problem = f"{type(exc).__name__}: {exc}"[:200]
            elapsed = time.perf_counter() - t0
            if problem:
                errors[i].append(problem)
            else:
                latencies[i].append(elapsed)
                started_at[i].append(t0)
        session.close()

    threads = [threading.Thread(target=client, args=(i,), daemon=True) for i in range(clients)]
    for t in threads:
        t.start()
    began = time.perf_counter()
    stop_at[0] = began + seconds
    start.wait()
    for t in threads:
        t.join()
    wall = time.perf_counter() - began
    lat = np.array([x for per in latencies for x in per], dtype=np.float64) * 1000.0
    when = np.array([x for per in started_at for x in per], dtype=np.float64) - began
    errs = [e for per in errors for e in per]
    pct = (lambda p: float(np.percentile(lat, p))) if len(lat) else (lambda p: float("nan"))
    return LoadReport(
        url=url, clients=clients, seconds=round(wall, 2), mode=mode, k=k,
        requests=int(len(lat) + len(errs)), errors=len(errs),
        requests_per_s=round((len(lat) + len(errs)) / wall, 2),
        p50_ms=round(pct(50), 1), p95_ms=round(pct(95), 1), p99_ms=round(pct(99), 1),
        mean_ms=round(float(lat.mean()), 1) if len(lat) else float("nan"),
        max_ms=round(float(lat.max()), 1) if len(lat) else float("nan"),
        queries=len(queries), error_samples=list(dict.fromkeys(errs))[:5],
        samples=list(zip(when.round(4).tolist(), lat.round(2).tolist())),
    )


def format_report(report: LoadReport) -> str:
    """A plain table for people."""
    rows = [
        ("server", report.url), ("clients", report.clients), ("duration", f"{report.seconds} s"),
        ("search", f"mode={report.mode} k={report.k}, {report.queries} distinct queries"),
        ("requests", report.requests), ("requests/s", f"{report.requests_per_s:.1f}"),
        ("latency p50", f"{report.p50_ms:.1f} ms"), ("latency p95", f"{report.p95_ms:.1f} ms"),
        ("latency p99", f"{report.p99_ms:.1f} ms"), ("latency mean", f"{report.mean_ms:.1f} ms"),
        ("latency max", f"{report.max_ms:.1f} ms"), ("errors", report.errors),
    ]
    width = max(len(name) for name, _ in rows)
    lines = [f"{name:<{width}}  {value}" for name, value in rows]
    lines += [f"  error: {e}" for e in report.error_samples]
    return "\n".join(lines)


def check_has_documents(data: str | os.PathLike | None) -> None:
    """Refuse to benchmark an empty library: every search would return nothing."""
    from rag.config import data_dir
    from rag.library import open_library

    path = data_dir(data)
    try:
        with open_library(path, create=False) as library:
            count = len(library.documents())
    except RagError:
        count = 0
    if not count:
        raise RagError(f"no documents in {path}: ingest some first (`rag ingest PATH`, or the demo "
                       "corpus from the README), or pass --url of a running server")


def plot_latency(report: LoadReport, path: str | os.PathLike) -> Path:
    """Each request's latency against when it started, with the p50/p95/p99 lines."""
    from eval.plots import plt, save_figure  # Agg: files only

    path = Path(path)
    fig, ax = plt.subplots(figsize=(8, 4))
    if report.samples:
        when, latency = zip(*report.samples)
        ax.scatter(when, latency, s=4, alpha=0.4, label="requests")
    for value, name, style in ((report.p50_ms, "p50", "-"), (report.p95_ms, "p95", "--"), (report.p99_ms, "p99", ":")):
        ax.axhline(value, linestyle=style, color="black", linewidth=1, label=f"{name} {value:.0f} ms")
    ax.set_xlabel("time since start (s)")
    ax.set_ylabel("search latency (ms)")
    ax.set_title(f"{report.clients} clients, {report.requests_per_s:.1f} requests/s, {report.errors} errors "
                 f"(mode={report.mode}, k={report.k})")
    ax.legend(loc="upper right", fontsize=8)
    return save_figure(fig, path)


def save_report(report: LoadReport, data: str | os.PathLike | None) -> Path:
    """Keep the result next to the library it measured: <data>/eval/load.json."""
    import json

    from rag.config import data_dir

    path = data_dir(data) / "eval" / "load.json"
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = path.with_suffix(".json.tmp")
    tmp.write_text(json.dumps(report.to_json(), indent=2), encoding="utf-8")
    os.replace(tmp, path)
    return path
