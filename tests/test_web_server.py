"""The API against the real waitress server on a loopback port, and the `rag serve` command."""
from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import pytest
import requests
from click.testing import CliRunner

from rag.cli import main
from rag.ingest.pipeline import ingest_paths
from rag.library import open_library
from web import create_app
from web.security import is_loopback
from web.server import BackgroundServer, check_bind_host

REPO = Path(__file__).resolve().parent.parent

NOTES = {
    "lighthouse.txt": "The Skerryvore lighthouse\n\nThe Skerryvore lighthouse stands on a reef off the west "
                      "coast of Scotland. It was designed by Alan Stevenson and completed in 1844.\n",
    "sourdough.txt": "Sourdough starter\n\nA sourdough starter is fed with equal weights of flour and water "
                     "every day. It is ready when it doubles within six hours.\n",
    "glacier.txt": "Glacier notes\n\nThe Aletsch glacier is the largest glacier in the Alps, about 23 km long.\n",
}


@pytest.fixture(scope="module")
def data_dir(notes_data_dir) -> Path:
    return notes_data_dir("web-server", NOTES)


@pytest.fixture(scope="module")
def server(data_dir, encoder):
    app = create_app({"DATA_DIR": str(data_dir), "ENCODER_OBJECT": encoder, "API_TOKEN": None,
                      "MAX_CONTENT_LENGTH": 64 * 1024})
    with BackgroundServer(app, "127.0.0.1", 0) as running:
        yield running


def test_search_over_http(server):
    response = requests.get(f"{server.url}/api/search", params={"q": "largest glacier in the Alps", "k": 2},
                            timeout=60)
    assert response.status_code == 200
    assert response.headers["Content-Type"].startswith("application/json")
    body = response.json()
    assert body["results"][0]["document"]["title"] == "Glacier notes"
    assert "glacier" in body["results"][0]["matched_terms"]
    assert response.headers["Server"] == "rag"


def test_concurrent_searches_all_succeed_with_the_same_answers(server):
    queries = ["who designed the lighthouse", "how to feed a sourdough starter", "glacier length"] * 8
    expected = {"who designed the lighthouse": "The Skerryvore lighthouse",
                "how to feed a sourdough starter": "Sourdough starter", "glacier length": "Glacier notes"}

    def ask(q):
        with requests.get(f"{server.url}/api/search", params={"q": q, "k": 3, "mode": "hybrid"}, timeout=120) as r:
            return q, r.status_code, r.json()

    with ThreadPoolExecutor(max_workers=12) as pool:
        results = list(pool.map(ask, queries))
    for q, status, body in results:
        assert status == 200
        assert body["results"][0]["document"]["title"] == expected[q]


def test_errors_over_http_are_json(server):
    response = requests.get(f"{server.url}/api/search", params={"q": "", "k": 3}, timeout=30)
    assert response.status_code == 400 and response.json()["error"]
    response = requests.get(f"{server.url}/api/search", params={"q": "x", "mode": "nope"}, timeout=30)
    assert response.status_code == 400 and "mode" in response.json()["error"]
    big = {"file": ("big.txt", b"word " * 40_000)}  # 200 kB against a 64 kB limit
    response = requests.post(f"{server.url}/api/documents", files=big, timeout=30)
    assert response.status_code == 413 and "too large" in response.json()["error"]
    response = requests.get(f"{server.url}/api/search", params={"q": "x"}, headers={"Host": "evil.example"},
                            timeout=30)
    assert response.status_code == 403


def test_upload_and_delete_over_http(server):
    files = [("file", ("aurora.txt", b"Aurora notes\n\nThe aurora borealis is seen near the magnetic pole.\n")),
             ("file", ("empty.txt", b""))]
    response = requests.post(f"{server.url}/api/documents", files=files, timeout=120)
    assert response.status_code == 200
    body = response.json()
    assert [f["status"] for f in body["files"]] == ["added", "failed"]
    doc_id = body["files"][0]["document"]["id"]
    found = requests.get(f"{server.url}/api/search", params={"q": "aurora borealis", "k": 1}, timeout=60).json()
    assert found["results"][0]["document"]["id"] == doc_id
    # a browser on another origin cannot delete it
    response = requests.delete(f"{server.url}/api/documents/{doc_id}", headers={"Origin": "http://evil.example"},
                               timeout=30)
    assert response.status_code == 403
    response = requests.delete(f"{server.url}/api/documents/{doc_id}", timeout=60)
    assert response.status_code == 200
    found = requests.get(f"{server.url}/api/search", params={"q": "aurora borealis", "k": 3}, timeout=60).json()
    assert all(r["document"]["id"] != doc_id for r in found["results"])


def test_page_and_static_files_are_served(server):
    page = requests.get(server.url + "/", timeout=30)
    assert page.status_code == 200 and 'id="q"' in page.text
    script = requests.get(server.url + "/static/app.js", timeout=30)
    assert script.status_code == 200 and "textContent" in script.text
    for sink in (".innerHTML", ".outerHTML", "insertAdjacentHTML", "document.write"):
        assert sink not in script.text  # document text reaches the page only as text


# --- binding rules and the command ------------------------------------------------------------

@pytest.mark.parametrize("host, loopback", [("127.0.0.1", True), ("127.0.0.5", True), ("::1", True),
                                            ("localhost", True), ("[::1]:80", True), ("0.0.0.0", False),
                                            ("192.168.1.10", False), ("::", False), ("example.org", False)])
def test_is_loopback(host, loopback):
    assert is_loopback(host) is loopback


def test_serve_refuses_a_public_host_without_a_token(tmp_path):
    runner = CliRunner()
    result = runner.invoke(main, ["serve", "--host", "0.0.0.0", "--data", str(tmp_path)],
                           env={"RAG_API_TOKEN": ""})
    assert result.exit_code != 0
    assert "refusing to listen on 0.0.0.0" in result.output and "RAG_API_TOKEN" in result.output
    check_bind_host("0.0.0.0", "a-token")  # allowed once writes need a token


def _free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def test_rag_serve_command_serves_the_library(data_dir):
    port = _free_port()
    env = {k: v for k, v in os.environ.items() if k != "RAG_API_TOKEN"}
    proc = subprocess.Popen([sys.executable, "-c", "from rag.cli import main; main()", "serve", "--port", str(port),
                             "--data", str(data_dir)], cwd=REPO, env=env, stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)
    url = f"http://127.0.0.1:{port}"
    try:
        deadline = time.monotonic() + 180
        while True:
            assert proc.poll() is None, proc.stdout.read()
            try:
                if requests.get(url + "/healthz", timeout=2).ok:
                    break
            except requests.ConnectionError:
                pass
            assert time.monotonic() < deadline, "rag serve did not come up"
            time.sleep(0.3)
        stats = requests.get(url + "/api/stats", timeout=30).json()
        assert stats["documents"] == len(NOTES)
        found = requests.get(url + "/api/search", params={"q": "Alan Stevenson", "mode": "keyword"}, timeout=60).json()
        assert found["results"][0]["document"]["title"] == "The Skerryvore lighthouse"
    finally:
        proc.terminate()
        output, _ = proc.communicate(timeout=30)
    assert f"Serving on http://127.0.0.1:{port}/" in output
    assert "3 documents" in output


def test_answer_streams_over_http_as_server_sent_events(data_dir, encoder, generator):
    app = create_app({"DATA_DIR": str(data_dir), "ENCODER_OBJECT": encoder, "GENERATOR_OBJECT": generator})
    with BackgroundServer(app, "127.0.0.1", 0) as running:
        with requests.post(f"{running.url}/api/ask", json={"question": "How long is the Aletsch glacier?", "k": 2},
                           headers={"Accept": "text/event-stream"}, stream=True, timeout=300) as response:
            assert response.status_code == 200
            assert response.headers["Content-Type"].startswith("text/event-stream")
            assert response.headers["Cache-Control"] == "no-cache"
            names, answer = [], None
            for line in response.iter_lines(decode_unicode=True):
                if line.startswith("event: "):
                    names.append(line[7:])
                elif line.startswith("data: ") and names[-1] == "answer":
                    answer = json.loads(line[6:])
    assert names[0] == "status" and names[-1] == "answer" and "error" not in names
    assert names.index("token") < names.index("answer")  # pieces arrive before the whole answer
    assert "23" in answer["answer"]
    assert answer["citations"][0]["document"]["title"] == "Glacier notes"


def test_load_benchmark_counts_requests_and_errors(server, tmp_path):
    from eval.load import format_report, plot_latency, run_load

    report = run_load(server.url, clients=3, seconds=2, k=3, mode="keyword")
    assert report.errors == 0 and report.error_samples == []
    assert report.requests == len(report.samples) > 0
    assert report.p50_ms <= report.p95_ms <= report.p99_ms <= report.max_ms
    assert report.queries >= 3  # document titles from the server, topped up with fixed queries
    assert "requests/s" in format_report(report)
    assert plot_latency(report, tmp_path / "load.png").stat().st_size > 1000


def test_load_benchmark_command(server):
    result = CliRunner().invoke(main, ["eval", "load", "--url", server.url, "--clients", "2", "--seconds", "1",
                                       "--json"])
    assert result.exit_code == 0, result.output
    report = json.loads(result.output)
    assert report["errors"] == 0 and report["requests"] > 0 and report["clients"] == 2
    result = CliRunner().invoke(main, ["eval", "load", "--url", "http://127.0.0.1:9", "--seconds", "1"])
    assert result.exit_code != 0 and "no server answering" in result.output


def test_the_server_sees_documents_another_process_ingests(server, data_dir, encoder, tmp_path):
    """`rag ingest` while `rag serve` runs: the next search reopens the library and finds the new passages."""
    query = {"q": "Which river flows through the Grand Canyon?", "k": 1, "mode": "dense"}
    before = requests.get(f"{server.url}/api/search", params=query, timeout=60).json()
    assert before["results"][0]["document"]["title"] != "Canyon notes"
    note = tmp_path / "canyon.txt"
    note.write_text("Canyon notes\n\nThe Colorado River carved the Grand Canyon in Arizona.\n", encoding="utf-8")
    other = open_library(data_dir, encoder=encoder)  # as a separate `rag ingest` would
    try:
        assert ingest_paths(other, [str(note)]).added == 1
        after = requests.get(f"{server.url}/api/search", params=query, timeout=60).json()
        assert after["results"][0]["document"]["title"] == "Canyon notes"
        other.remove_document(str(note))
    finally:
        other.close()
    gone = requests.get(f"{server.url}/api/search", params=dict(query, k=5), timeout=60).json()
    assert "Canyon notes" not in [r["document"]["title"] for r in gone["results"]]
