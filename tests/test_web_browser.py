"""The page in a real headless Chromium (Playwright) against the real server on a loopback port.

Set RAG_SCREENS_DIR to also copy the answer-page screenshot there (the test always saves one under
its tmp_path).
"""
from __future__ import annotations

import os
import re
import shutil
from pathlib import Path

import pytest

from web import create_app
from web.server import BackgroundServer

CHROMIUM = "/usr/bin/chromium"
pytestmark = pytest.mark.skipif(not Path(CHROMIUM).exists(),
                                reason=f"{CHROMIUM} is absent: install Debian's chromium package to run browser tests")

NOTES = {
    "lighthouse.txt": "The Skerryvore lighthouse\n\nThe Skerryvore lighthouse stands on a reef off the west "
                      "coast of Scotland. It was designed by the engineer Alan Stevenson and completed in 1844.\n",
    "sourdough.txt": "Sourdough starter\n\nA sourdough starter is fed with equal weights of flour and water "
                     "every day. It is ready when it doubles within six hours.\n",
    "glacier.txt": "Glacier notes\n\nThe Aletsch glacier is the largest glacier in the Alps, about 23 km long.\n",
    "markup.txt": "Markup sample\n\nThis note about markup shows tags as text: "
                  "<script>window.pwned = 1; document.title = 'pwned';</script> and "
                  "<img src=x onerror=\"window.pwned = 2\"> must appear literally.\n",
}
TITLE = "rag"


@pytest.fixture(scope="module")
def data_dir(notes_data_dir) -> Path:
    return notes_data_dir("web-browser", NOTES)


@pytest.fixture(scope="module")
def server(data_dir, encoder):
    app = create_app({"DATA_DIR": str(data_dir), "ENCODER_OBJECT": encoder, "API_TOKEN": None})
    with BackgroundServer(app, "127.0.0.1", 0) as running:
        yield running


@pytest.fixture(scope="module")
def browser():
    playwright_api = pytest.importorskip("playwright.sync_api", reason="the playwright package is not installed")
    with playwright_api.sync_playwright() as p:
        browser = p.chromium.launch(executable_path=CHROMIUM, args=[
            "--headless", "--no-sandbox", "--disable-gpu", "--disable-background-networking",
            "--disable-component-update"])
        yield browser
        browser.close()


def open_page(browser, url: str):
    """A fresh browser context and page at ``url``, and the list its JavaScript errors collect into."""
    context = browser.new_context(viewport={"width": 1100, "height": 900})
    page = context.new_page()
    errors: list[str] = []
    page.on("pageerror", lambda exc: errors.append(str(exc)))
    page.goto(url)
    return context, page, errors


@pytest.fixture
def page(browser, server):
    context, page, errors = open_page(browser, server.url + "/")
    page.on("dialog", lambda dialog: dialog.accept())
    page.wait_for_selector("#documents li", state="attached")
    yield page
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def search_for(page, query: str, mode: str = "hybrid"):
    page.fill("#q", query)
    page.select_option("#mode", mode)
    with page.expect_response(lambda r: "/api/search" in r.url):
        page.click("#search-button")
    page.wait_for_selector("#progress", state="hidden")
    page.wait_for_selector("#results .hit")


def test_status_area_shows_the_library(page):
    assert page.text_content("#stat-documents") == str(len(NOTES))
    assert int(page.text_content("#stat-passages")) >= len(NOTES)
    assert page.text_content("#stat-encoder") == "all-MiniLM-L6-v2"
    assert page.text_content("#stat-backend")
    assert page.text_content("#stat-reader").startswith("span, shipped: ")
    assert page.get_attribute("#stat-generator", "data-state") in ("lazy", "loaded")
    assert "first Ask" in page.text_content("#stat-generator") or "loaded" in page.text_content("#stat-generator")
    assert page.is_hidden("#status-message")


def test_search_shows_passages_with_title_score_and_marked_terms(page):
    search_for(page, "Who designed the Skerryvore lighthouse?")
    first = page.locator("#results .hit").first
    assert first.locator(".hit-title").text_content() == "The Skerryvore lighthouse"
    assert first.locator(".hit-path").text_content().endswith("lighthouse.txt")
    assert re.fullmatch(r"score \d+\.\d{4}", first.locator(".hit-score").text_content())
    marked = {m.lower() for m in first.locator(".hit-text mark").all_text_contents()}
    assert {"skerryvore", "lighthouse", "designed"} <= marked
    assert "skerryvore" in first.locator(".terms").text_content()
    assert "q=Who+designed" in page.url  # the search can be reloaded or shared


def test_document_view_highlights_the_passage(page):
    search_for(page, "largest glacier in the Alps")
    hit = page.locator("#results .hit").first
    passage_text = hit.locator(".hit-text").text_content()
    hit.locator(".hit-title").click()
    page.wait_for_selector("#document-view:not([hidden]) #doc-highlight")
    assert page.text_content("#doc-title") == "Glacier notes"
    assert page.text_content("#doc-highlight") == passage_text
    assert page.locator("#doc-highlight").is_visible()


def test_markup_in_a_document_never_runs(page, server):
    search_for(page, "markup shows tags as text", mode="keyword")
    hit = page.locator("#results .hit").first
    assert hit.locator(".hit-title").text_content() == "Markup sample"
    assert "<script>window.pwned = 1;" in hit.locator(".hit-text").text_content()  # shown as text
    assert page.locator("#results script, #results img").count() == 0
    hit.locator(".hit-title").click()
    page.wait_for_selector("#document-view:not([hidden])")
    assert "<img src=x onerror" in page.text_content("#doc-text")
    assert page.locator("#doc-text script, #doc-text img").count() == 0
    page.wait_for_timeout(300)  # an onerror handler would have fired by now
    assert page.evaluate("window.pwned") is None
    assert page.title() == TITLE

    doc_id = hit.locator(".hit-title").get_attribute("data-document")
    page.goto(f"{server.url}/documents/{doc_id}")  # the server-rendered view escapes it too
    assert "<script>window.pwned = 1;" in page.text_content(".doc-text")
    assert page.locator(".doc-text script, .doc-text img").count() == 0
    assert page.evaluate("window.pwned") is None
    assert page.title() != "pwned"


def test_upload_a_file_find_it_and_delete_it(page, tmp_path):
    note = tmp_path / "kelp.txt"
    note.write_text("Kelp forest notes\n\nGiant kelp can grow half a metre in a single day.\n", encoding="utf-8")
    evil = tmp_path / "<img src=x onerror=window.pwned=3>.txt"
    evil.write_text("Evil file name\n\nThe file name of this note holds markup.\n", encoding="utf-8")
    page.set_input_files("#upload-files", [str(note), str(evil)])
    page.click("#upload-button")
    page.wait_for_selector("#upload-results li.added >> nth=1")
    results = page.locator("#upload-results li").all_text_contents()
    assert any(r.startswith("kelp.txt: added") for r in results)
    assert any(r.startswith("<img src=x onerror=window.pwned=3>.txt: added") for r in results)
    assert page.evaluate("window.pwned") is None
    page.wait_for_function(f"document.getElementById('stat-documents').textContent === '{len(NOTES) + 2}'")

    search_for(page, "how fast does giant kelp grow")
    first = page.locator("#results .hit").first
    assert first.locator(".hit-title").text_content() == "Kelp forest notes"

    for title in ("Kelp forest notes", "Evil file name"):
        page.click("#documents-box summary")
        item = page.locator("#documents li", has_text=title)
        item.locator("button.delete").click()
        item.wait_for(state="detached")
        page.click("#documents-box summary")
    page.wait_for_function(f"document.getElementById('stat-documents').textContent === '{len(NOTES)}'")
    search_for(page, "how fast does giant kelp grow")
    assert "Kelp forest notes" not in page.locator("#results .hit-title").all_text_contents()


def test_bad_input_shows_an_error_not_a_frozen_page(page):
    page.fill("#where", "nonsense")
    page.fill("#q", "glacier")
    page.click("#search-button")
    page.wait_for_selector("#error:not([hidden])")
    assert "bad 'where' filter" in page.text_content("#error")
    assert page.is_enabled("#search-button") and page.is_enabled("#ask-button")


def test_ask_answers_and_a_citation_highlights_its_passage(browser, data_dir, encoder, generator, tmp_path):
    app = create_app({"DATA_DIR": str(data_dir), "ENCODER_OBJECT": encoder, "GENERATOR_OBJECT": generator})
    with BackgroundServer(app, "127.0.0.1", 0) as running:
        context, page, errors = open_page(browser, running.url + "/")
        page.fill("#q", "Who designed the Skerryvore lighthouse?")
        page.fill("#k", "3")
        page.click("#ask-button")
        assert page.is_visible("#progress")  # progress shows while the answer is written
        page.wait_for_selector("#answer-text a.citation", timeout=240_000)
        assert page.is_hidden("#progress") and page.is_enabled("#ask-button")
        answer = page.text_content("#answer-text")
        assert "Stevenson" in answer
        assert "citation" in page.text_content("#answer-meta")
        # the default (span) reader: the answer shown in its sentence, the span marked
        assert page.is_visible("#answer-sentence")
        assert "Stevenson" in page.text_content("#answer-sentence mark")
        assert len(page.text_content("#answer-sentence")) > len(page.text_content("#answer-sentence mark"))

        citation = page.locator("#answer-text a.citation").first
        passage_id = citation.get_attribute("data-passage")
        target = page.locator(f"#passage-{passage_id}")
        assert "highlighted" not in (target.get_attribute("class") or "")
        citation.click()
        page.wait_for_selector(f"#passage-{passage_id}.highlighted")
        assert target.locator(".hit-title").text_content() == "The Skerryvore lighthouse"
        assert "Alan Stevenson" in target.locator(".hit-text").text_content()
        page.wait_for_function(  # scrolled into view
            f"(() => {{ const r = document.getElementById('passage-{passage_id}').getBoundingClientRect();"
            " return r.top >= 0 && r.bottom <= window.innerHeight; })()")
        assert page.locator(".hit.highlighted").count() == 1
        save_screenshot(page, tmp_path, "answer-page.png")
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def save_screenshot(page, tmp_path: Path, name: str) -> Path:
    shot = tmp_path / name
    page.screenshot(path=str(shot), full_page=True)
    assert shot.stat().st_size > 10_000
    target = os.environ.get("RAG_SCREENS_DIR")
    if target:
        Path(target).mkdir(parents=True, exist_ok=True)
        shutil.copy(shot, Path(target) / name)
    return shot


def test_with_a_token_the_page_asks_for_it_before_writing(browser, encoder, tmp_path):
    app = create_app({"DATA_DIR": str(tmp_path / "data"), "ENCODER_OBJECT": encoder, "API_TOKEN": "page-token-123"})
    note = tmp_path / "tokened.txt"
    note.write_text("Token note\n\nUploaded with the API token typed into the page.\n", encoding="utf-8")
    with BackgroundServer(app, "127.0.0.1", 0) as running:
        context = browser.new_context()
        page = context.new_page()
        page.goto(running.url + "/")
        assert page.is_visible("#api-token")
        assert "page-token-123" not in page.content()
        page.set_input_files("#upload-files", [str(note)])
        page.click("#upload-button")
        page.wait_for_selector("#upload-results li.failed")
        assert "Bearer" in page.text_content("#upload-results")
        page.fill("#api-token", "page-token-123")
        page.set_input_files("#upload-files", [str(note)])
        page.click("#upload-button")
        page.wait_for_selector("#upload-results li.added")
        doc_id = page.evaluate("fetch('/api/documents?limit=1000').then(r => r.json())"
                               ".then(b => b.documents.find(d => d.title === 'Token note').id)")
        status = page.evaluate(f"fetch('/api/documents/{doc_id}', {{method: 'DELETE'}}).then(r => r.status)")
        assert status == 401  # a script on the page without the token cannot delete
        context.close()


@pytest.fixture(scope="module")
def pdf_data_dir(tmp_path_factory, encoder) -> Path:
    """A library holding one four-page PDF (page 2 blank)."""
    from conftest import write_paged_pdf

    from rag.ingest.pipeline import ingest_paths
    from rag.library import open_library

    root = tmp_path_factory.mktemp("web-pdf")
    write_paged_pdf(root / "survey.pdf")
    library = open_library(root / "data", encoder=encoder)
    try:
        assert ingest_paths(library, [str(root / "survey.pdf")]).added == 1
    finally:
        library.close()
    return root / "data"


@pytest.fixture(scope="module")
def pdf_server(pdf_data_dir, encoder):
    app = create_app({"DATA_DIR": str(pdf_data_dir), "ENCODER_OBJECT": encoder, "API_TOKEN": None})
    with BackgroundServer(app, "127.0.0.1", 0) as running:
        yield running


def test_a_pdf_passage_shows_its_page_and_the_document_opens_there(browser, pdf_server, tmp_path):
    from conftest import PAGED_PDF_QUERY

    context, page, errors = open_page(browser, pdf_server.url + "/")
    page.wait_for_selector("#documents li", state="attached")
    search_for(page, PAGED_PDF_QUERY)
    first = page.locator("#results .hit").first
    assert "forty-two hives" in first.locator(".hit-text").text_content()
    assert first.locator(".hit-where").text_content() in ("p. 3", "pp. 3\u20134")
    href = first.locator(".hit-title").get_attribute("href")
    assert "page=3" in href and href.endswith("#highlight")

    first.locator(".hit-title").click()
    page.wait_for_selector("#document-view:not([hidden]) #doc-highlight")
    assert page.locator("#doc-text .page-marker").count() == 4
    marker = page.locator("#doc-page-3")
    assert marker.is_visible()
    assert page.evaluate("getComputedStyle(document.getElementById('doc-page-3'), '::before').content") == '"page 3"'
    assert "p. 3" in page.text_content("#doc-path") or "pp. 3\u20134" in page.text_content("#doc-path")
    # the highlight follows the page-3 marker (and no page marker is counted as passage text)
    assert page.evaluate("document.getElementById('doc-page-3').compareDocumentPosition("
                         "document.getElementById('doc-highlight')) & Node.DOCUMENT_POSITION_FOLLOWING")
    assert page.text_content("#doc-highlight") == first.locator(".hit-text").text_content()
    page.wait_for_function(  # the highlighted passage is scrolled into the document view
        "(() => { const box = document.getElementById('doc-text').getBoundingClientRect();"
        " const r = document.getElementById('doc-highlight').getBoundingClientRect();"
        " return r.top < box.bottom && r.bottom > box.top; })()")
    save_screenshot(page, tmp_path, "pdf-page.png")

    page.goto(pdf_server.url + href)  # the server-rendered view, opened in a new tab
    assert page.locator(".doc-text .page-marker").count() == 4
    assert "p. 3" in page.text_content(".document-page") or "pp. 3\u20134" in page.text_content(".document-page")
    assert page.locator("#highlight").is_visible()
    context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"


def test_an_answer_citing_a_pdf_names_the_page(browser, pdf_data_dir, encoder, generator):
    from conftest import PAGED_PDF_QUERY

    app = create_app({"DATA_DIR": str(pdf_data_dir), "ENCODER_OBJECT": encoder,
                      "GENERATOR_OBJECT": generator})
    with BackgroundServer(app, "127.0.0.1", 0) as running:
        context, page, errors = open_page(browser, running.url + "/")
        page.fill("#q", PAGED_PDF_QUERY)
        page.fill("#k", "2")
        page.click("#ask-button")
        page.wait_for_selector("#answer-text a.citation", timeout=240_000)
        citation = page.locator("#answer-text a.citation").first
        where = page.locator("#answer-text .citation-where").first.text_content()
        assert where in (" (p. 3)", " (pp. 3\u20134)")
        passage = page.locator(f"#passage-{citation.get_attribute('data-passage')}")
        assert "forty-two hives" in passage.locator(".hit-text").text_content()
        assert passage.locator(".hit-where").text_content() == where.strip(" ()")
        context.close()
    assert not errors, f"JavaScript errors on the page: {errors}"
