"""Hostile inputs: idle sockets, odd uploads, huge passages, tricky HTML and text encodings."""
from __future__ import annotations

import io
import socket
import time
from pathlib import Path

import numpy as np
import pytest
import requests

from rag.ingest.chunking import MAX_PASSAGE_CHARS
from rag.ingest.loaders import load_bytes
from rag.ingest.pipeline import ingest_documents, ingest_paths
from rag.library import open_library
from rag.records import SourceDocument
from web import create_app
from web.server import CONNECTION_LIMIT, BackgroundServer

NOTES = {"kestrel.txt": "Kestrel notes\n\nThe kestrel hovers over fields before it drops onto a vole.\n"}


@pytest.fixture
def app(notes_data_dir, encoder):
    data = notes_data_dir("hardening", NOTES)
    return create_app({"DATA_DIR": str(data), "ENCODER_OBJECT": encoder, "API_TOKEN": None})


def upload(client, files, collection="default"):
    data = {"collection": collection, "file": [(io.BytesIO(body), name) for name, body in files]}
    response = client.post("/api/documents", data=data, content_type="multipart/form-data")
    return response.status_code, response.get_json()


# --- the server under idle connections --------------------------------------------------------------

def test_a_request_succeeds_while_300_idle_sockets_are_open(app):
    assert CONNECTION_LIMIT > 300
    with BackgroundServer(app, "127.0.0.1", 0) as server:
        port = int(server.url.rsplit(":", 1)[1])
        idle = []
        try:
            for _ in range(300):
                idle.append(socket.create_connection(("127.0.0.1", port), timeout=10))
            response = requests.get(f"{server.url}/api/search", params={"q": "kestrel", "k": 1}, timeout=30)
            assert response.status_code == 200
            assert response.json()["results"][0]["document"]["title"] == "Kestrel notes"
        finally:
            for sock in idle:
                sock.close()


def test_idle_connections_are_closed(app):
    with BackgroundServer(app, "127.0.0.1", 0, channel_timeout=1, cleanup_interval=1) as server:
        port = int(server.url.rsplit(":", 1)[1])
        sock = socket.create_connection(("127.0.0.1", port), timeout=30)
        try:
            sock.sendall(b"GET /healthz HTTP/1.1\r\n")  # a request never finished
            assert sock.recv(1024) == b""  # waitress hangs up on the idle connection
        finally:
            sock.close()


# --- uploads ----------------------------------------------------------------------------------------

def test_a_failed_upload_leaves_no_file_and_a_replaced_one_comes_back(app):
    client = app.test_client()
    folder = Path(app.config["DATA_DIR"]) / "uploads" / "default"
    status, body = upload(client, [("broken.pdf", b"%PDF-1.4 this is not really a pdf")])
    assert status == 422 and body["files"][0]["status"] == "failed"
    assert not (folder / "broken.pdf").exists()
    assert [p.name for p in folder.iterdir()] == []  # no partial or backup files either
    status, body = upload(client, [("owl.txt", b"Owl notes\n\nThe barn owl hunts by sound.\n")])
    assert status == 200 and body["added"] == 1
    status, body = upload(client, [("owl.txt", b"\x00\x01binary now")])
    assert status == 422
    assert (folder / "owl.txt").read_bytes().startswith(b"Owl notes")  # the good version is back
    assert sorted(p.name for p in folder.iterdir()) == ["owl.txt"]


def test_names_that_flatten_alike_are_both_kept(app):
    client = app.test_client()
    status, body = upload(client, [("my notes.txt", b"Notes one\n\nHeron notes: the grey heron waits.\n"),
                                   ("my_notes.txt", b"Notes two\n\nEgret notes: the little egret wades.\n")])
    assert status == 200 and body["added"] == 2
    saved = [f["saved_as"] for f in body["files"]]
    assert saved[1] == "my_notes.txt" and saved[0] != saved[1] and saved[0].startswith("my_notes-")
    status, body = upload(client, [("my notes.txt", b"Notes one\n\nHeron notes: the grey heron waits.\n")],
                          collection="other")  # another collection: its own folder, both kept
    assert status == 200 and body["added"] == 1
    titles = {d["title"] for d in client.get("/api/documents").get_json()["documents"]}
    assert {"Notes one", "Notes two"} <= titles
    assert client.get("/api/stats").get_json()["documents"] == 1 + 3
    status, body = upload(client, [("my notes.txt", b"Notes one\n\nHeron notes: the grey heron waits.\n")])
    assert body["files"][0]["status"] == "skipped"  # the same name still maps to the same file


def test_upload_limits_are_named_in_the_error(app):
    client = app.test_client()
    app.config["MAX_UPLOAD_FILES"] = 3
    status, body = upload(client, [(f"n{i}.txt", b"Note\n\nwords\n") for i in range(4)])
    assert status == 413 and "the limit is 3 files per request" in body["error"]
    app.config["MAX_UPLOAD_PASSAGES"] = 5
    long = "\n\n".join(f"Paragraph {i} about swifts, swallows and martins over the lake." * 8 for i in range(40))
    status, body = upload(client, [("long.txt", long.encode())])
    assert status == 422 and "the limit per upload is 5" in body["error"]
    assert not (Path(app.config["DATA_DIR"]) / "uploads" / "default" / "long.txt").exists()
    app.config["MAX_CONTENT_LENGTH"] = 1000
    status, body = upload(client, [("big.txt", b"word " * 1000)])
    assert status == 413 and "1,000 bytes" in body["error"]


# --- passages and loaders ----------------------------------------------------------------------------

def test_a_huge_single_word_never_becomes_one_huge_passage(tmp_path, encoder):
    word = "kestrel0123" * 450_000  # 5 MB without a space (a run of one letter is no word: test_repeats)
    (tmp_path / "word.txt").write_text(f"Start\n\n{word}\n\nend of the file", encoding="utf-8")
    with open_library(tmp_path / "data", encoder=encoder, backend="flat") as library:
        report = ingest_paths(library, [str(tmp_path / "word.txt")], encode_batch=4096)
        assert report.failed == 0
        ingest_documents(library, [SourceDocument(uri="field", title="t" * 1_000_000, text="voles4567" * 110_000)])
        assert len(library.documents()) == 2
        for doc in library.documents():
            passages = library.passages_of(doc.id)
            assert max(len(p.text) for p in passages) <= MAX_PASSAGE_CHARS
            text = library.document_text(doc.id)
            covered = np.zeros(len(text), dtype=bool)
            for p in passages:
                covered[p.start:p.end] = True
            assert all(text[i].isspace() for i in np.flatnonzero(~covered))  # nothing lost between pieces


SHORT_PAGE = b"""<html><head><title>Short page</title><script>var tracking = "SCRIPTTEXT";</script>
<style>.x { color: red }</style></head><body>
<nav><a href="/">Home</a> | <a href="/about">NAVTEXT</a></nav><header>HEADERTEXT banner</header>
<p>Tiny body about puffins.</p>
<footer>FOOTERTEXT copyright</footer><script>alert("SCRIPTTEXT")</script></body></html>"""

LONG_PAGE = (b"<html><head><title>Long page</title></head><body><nav>NAVTEXT menu</nav><header>HEADERTEXT</header>"
             b"<main><article><h1>Gannets</h1>"
             + b"".join(b"<p>Gannets dive from thirty metres into the sea to catch fish, folding their wings "
                        b"back just before they hit the water; colony " + str(i).encode() + b" nests on cliffs.</p>"
                        for i in range(30))
             + b"</article></main><footer>FOOTERTEXT</footer><script>var s = 'SCRIPTTEXT';</script></body></html>")


@pytest.mark.parametrize("page", [SHORT_PAGE, LONG_PAGE], ids=["fallback", "extractor"])
def test_html_boilerplate_is_never_indexed(page):
    (doc,) = load_bytes("page.html", page)
    for junk in ("NAVTEXT", "HEADERTEXT", "FOOTERTEXT", "SCRIPTTEXT", "color: red"):
        assert junk not in doc.text
    assert "puffins" in doc.text or "Gannets dive" in doc.text


def test_a_page_of_100000_nested_elements_keeps_its_text():
    page = ("<html><head><title>Deep</title></head><body><p>Top words.</p>" + "<div>" * 100_000
            + "The deepest sentence." + "</div>" * 100_000 + "</body></html>").encode()
    (doc,) = load_bytes("deep.html", page)
    assert doc.title == "Deep"
    assert "Top words." in doc.text and "The deepest sentence." in doc.text


@pytest.mark.parametrize("text", ["naïve café résumé", "Grüße aus Köln, schöne Straße",
                                  "Le garçon était très naïf, à côté de la forêt."])
def test_latin1_text_is_decoded_as_latin1(text):
    (doc,) = load_bytes("note.txt", text.encode("latin-1"))
    assert doc.text == text


def test_other_encodings_still_detected():
    russian = "Привет, как дела? Это пример текста на русском языке, довольно длинный."
    assert load_bytes("ru.txt", russian.encode("cp1251"))[0].text == russian
    assert load_bytes("u.txt", "naïve".encode("utf-8"))[0].text == "naïve"
