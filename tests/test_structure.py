"""Passages that follow the document's structure: no passage crosses a heading (HTML h1-h6, Markdown,
a PDF's outline), a short section is a passage of its own, each passage carries its own section's
heading, and passages end at sentence ends, not where the source happened to wrap a line."""
from __future__ import annotations

import re
import sqlite3
import textwrap
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.ingest.chunking import chunk, section_ranges
from rag.cli import main
from rag.ingest.pipeline import ingest_paths, passage_spans, text_window
from rag.library import open_library
from rag.ingest.loaders import load_bytes
from rag.ingest.locations import locate, markdown_headings, outline_headings

LOREM = [
    "The harbour master keeps a ledger of every boat that enters the basin after dark",
    "Visitors moor on the pontoon by the fish market, and the fees are collected each evening",
    "A tidal gate holds the water in the inner basin when the sea falls below the sill",
    "Diesel is sold from the quay pump between eight in the morning and six at night",
    "The slipway is free for dinghies, but larger boats must book the crane a day ahead",
    "Showers and a laundry are open to crews in the old net loft above the chandlery",
    "Fishing boats have the right of way in the channel at every state of the tide",
    "The lifeboat station welcomes visitors on summer afternoons when no exercise is planned",
]


def prose(n: int, start: int = 0, width: int = 0) -> str:
    """``n`` sentences; ``width`` wraps them at that many characters, as HTML sources are wrapped."""
    text = " ".join(f"{LOREM[(start + i) % len(LOREM)]} ({start + i})." for i in range(n))
    return textwrap.fill(text, width) if width else text


SECTIONS = [  # (tag, heading, body): nested headings of every level, long and short sections
    ("h1", "Harbour handbook", None),  # a page title right above its first section: no passage of its own
    ("h2", "Moorings", prose(14, 0, 70)),
    ("h3", "Fees", prose(2, 3, 70)),
    ("h4", "Winter rates", prose(1, 5)),
    ("h5", "Discounts", prose(2, 6, 70)),
    ("h6", "Members", prose(1, 1)),
    ("h2", "Fuel", prose(9, 2, 70)),
    ("h3", "Safety", prose(1, 7)),
]


def handbook_html() -> str:
    body = "".join(f"<{tag}>{heading}<a class='headerlink' href='#x'>\u00b6</a></{tag}>\n"
                   + (f"<p>{text}</p>\n" if text else "") for tag, heading, text in SECTIONS)
    return (f"<html><head><title>Harbour handbook</title></head><body><nav><h3>Site menu</h3>Home</nav>"
            f"<article>{body}</article></body></html>")


MARKDOWN = "\n\n".join([
    "# Field guide", prose(1, 0),
    "## Mosses", prose(12, 1),
    "```python\n# not a heading: a comment in code\nprint('moss')\n```",
    "### Peat", prose(1, 2),
    "#### Bog", prose(2, 3),
    "##### Cotton grass ######", prose(1, 4),
    "###### Sundew", prose(1, 5),
    "Lichens\n-------", prose(10, 6),
])


def heading_lines_inside(passage: str, headings: set[str]) -> list[str]:
    """Lines after a passage's first that read as a heading: where it crossed one."""
    return [line for line in passage.split("\n")[1:] if " ".join(line.split()) in headings]


def assert_follows_sections(doc, spans):
    """Every passage lies inside one section and is located under that section's heading."""
    assert spans
    starts = [offset for offset, _ in doc.headings]
    titles = {heading for _, heading in doc.headings}
    sections = section_ranges(len(doc.text), starts)
    for (a, b), place in zip(spans, locate(spans, doc.page_starts, doc.headings)):
        section_start, section_end = next((s, e) for s, e in sections if s <= a < e)
        assert b <= section_end, f"passage {doc.text[a:b]!r} runs past its section"
        own = dict(doc.headings).get(section_start)
        assert place.heading == own, (doc.text[a:b], place.heading, own)
        assert heading_lines_inside(doc.text[a:b], titles) == []


@pytest.fixture(scope="module")
def window(encoder) -> int:
    return text_window(encoder)


def test_html_passages_keep_to_their_h1_to_h6_sections(encoder, window):
    doc = load_bytes("handbook.html", handbook_html().encode())[0]
    assert [h for _, h in doc.headings] == [h for _, h, _ in SECTIONS]  # every level, not the nav's
    for budget in (48, 96, window):
        spans = passage_spans(doc, encoder.tokenizer, window, budget, overlap=16)
        assert_follows_sections(doc, spans)
        texts = [" ".join(doc.text[a:b].split()) for a, b in spans]
        assert "Harbour handbook" not in texts  # the title alone is no passage
        for heading, body in [(h, body) for _, h, body in SECTIONS if body and len(body) < 200]:
            # a short section is one passage of its own, not glued to the next
            assert [t for t in texts if t.startswith(f"{heading} ")] == [" ".join(f"{heading} {body}".split())]
        if budget < window:  # the long sections take several passages, only the first under its heading line
            assert sum(t.startswith("Moorings") for t in texts) == 1 and len(texts) > len(SECTIONS)


def test_markdown_passages_keep_to_their_sections(encoder, window):
    doc = load_bytes("guide.md", MARKDOWN.encode())[0]
    assert [h for _, h in doc.headings] == ["Field guide", "Mosses", "Peat", "Bog", "Cotton grass", "Sundew",
                                            "Lichens"]
    assert markdown_headings("#### Four\n\n####### seven is no heading") == [(0, "Four")]
    for budget in (40, 80, window):
        spans = passage_spans(doc, encoder.tokenizer, window, budget, overlap=16)
        assert_follows_sections(doc, spans)
        sundew = [doc.text[a:b] for a, b in spans if "Sundew" in doc.text[a:b]]
        assert sundew == [f"###### Sundew\n\n{prose(1, 5)}"]


def write_outlined_pdf(path: Path) -> None:
    """A real PDF with an outline (fpdf2): chapters and nested sections, one starting mid-page, one
    whose title is in the outline only (not printed on its page)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title("Field notes")
    pdf.set_font("Helvetica", size=11)

    def write(text: str) -> None:
        pdf.multi_cell(0, 6, text, new_x="LMARGIN", new_y="NEXT")
        pdf.ln(3)

    pdf.add_page()
    pdf.start_section("Bees")
    write("Bees")
    write(prose(6, 0))
    pdf.start_section("Hives", level=1)  # mid-page
    write("Hives")
    write(prose(2, 3))
    pdf.add_page()
    pdf.start_section("Honey harvest", level=1)  # no printed title: the outline names the page
    write(prose(7, 4))
    pdf.add_page()
    pdf.start_section("Glaciers")
    write("Glaciers")
    write(prose(5, 6))
    pdf.output(str(path))


def test_pdf_outline_entries_start_sections(tmp_path, encoder, window):
    path = tmp_path / "notes.pdf"
    write_outlined_pdf(path)
    doc = load_bytes(str(path), path.read_bytes())[0]
    assert [h for _, h in doc.headings] == ["Bees", "Hives", "Honey harvest", "Glaciers"]
    offsets = dict((h, o) for o, h in doc.headings)
    assert doc.text[offsets["Hives"]:].startswith("Hives\n") and doc.page_starts[0] < offsets["Hives"] < doc.page_starts[1]
    assert offsets["Honey harvest"] == doc.page_starts[1]  # the page's start, where the title is not printed
    assert doc.text[offsets["Glaciers"]:].startswith("Glaciers\n") and offsets["Glaciers"] == doc.page_starts[2]
    for budget in (40, 90, window):
        spans = passage_spans(doc, encoder.tokenizer, window, budget, overlap=16)
        assert_follows_sections(doc, spans)
        places = locate(spans, doc.page_starts, doc.headings)
        assert all(p.page == p.last_page for p in places)
    hives = next(p for (a, b), p in zip(spans, places) if "Hives" in doc.text[a:b])
    assert (hives.heading, hives.page) == ("Hives", 1)


def test_outline_titles_are_found_on_their_page_in_order():
    text = "Intro\nA\n\nPart one\nx\nPart two\ny\n\nlast page"
    starts = [0, text.index("Part one"), text.index("last page")]
    found = outline_headings([(1, "Part  two"), (1, "Part one"), (2, "Missing"), (5, "Beyond"), (0, "")], text, starts)
    assert found == [(starts[1], "Part one"), (text.index("Part two"), "Part two"), (starts[2], "Missing")]


# --- sentence ends -------------------------------------------------------------------------------

def wrapped_page() -> str:
    """Paragraphs on lines of their own whose sentences the source wrapped mid-sentence (as
    trafilatura keeps a Sphinx page's lines), such as the tutorial's note on empty sets."""
    sets = ("Curly braces or the set() function can be used to create sets.  Note: to\n"
            "create an empty set you have to use set(), not {}; the latter creates an\n"
            "empty dictionary, a data structure that we discuss in the next section.")
    paragraphs = [prose(5, i, 60) for i in range(6)]
    paragraphs.insert(3, sets)
    return "\n".join(paragraphs)


SENTENCE_END = re.compile(r"[.!?][\"')\]]*$")


def test_passages_end_at_sentence_ends_not_at_wrapped_lines(encoder):
    text = wrapped_page()
    for budget in range(40, 130, 6):
        spans = chunk(text, encoder.tokenizer, budget, overlap=16)
        assert [s for s in spans if not SENTENCE_END.search(text[s[0]:s[1]])] == [], budget
        # the note on empty sets is read whole by some passage
        assert any(a <= text.index("Note: to") and text.index("next section.") < b for a, b in spans), budget
        # and each starts where a sentence does (the overlap carries whole sentences)
        assert all(a == 0 or SENTENCE_END.search(text[:a].rstrip()) for a, _ in spans), budget


def test_only_a_sentence_longer_than_the_passage_is_cut_inside(encoder):
    long_sentence = "The ledger lists " + ", ".join(f"boat number {i} from port {i % 9}" for i in range(60)) + "."
    text = "\n".join([prose(3, 0, 60), long_sentence, prose(3, 3, 60)])
    spans = chunk(text, encoder.tokenizer, 64, overlap=0)
    counts = encoder.count_tokens([text[a:b] for a, b in spans])
    assert max(counts) <= 64
    inside = [(a, b) for a, b in spans if text.index(long_sentence) < b < text.index(long_sentence) + len(long_sentence)]
    assert inside  # the long sentence had to be cut ...
    assert all(SENTENCE_END.search(text[a:b]) for a, b in spans if (a, b) not in inside)  # ... and only it


# --- end to end: what the store keeps, and the measurement ---------------------------------------

def test_stored_passages_carry_their_own_sections_heading(tmp_path, encoder):
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "handbook.html").write_text(handbook_html(), encoding="utf-8")
    (folder / "guide.md").write_text(MARKDOWN, encoding="utf-8")
    write_outlined_pdf(folder / "notes.pdf")
    library = open_library(tmp_path / "data", encoder=encoder)
    try:
        assert ingest_paths(library, [str(folder)], chunk_tokens=48, overlap=16).added == 3
        for document in library.documents():
            doc = load_bytes(document.path, Path(document.path).read_bytes())[0]
            sections = dict(doc.headings)
            for passage in library.passages_of(document.id):
                own = max((o for o in sections if o <= passage.start), default=None)
                assert passage.heading == sections.get(own)
                assert heading_lines_inside(passage.text, set(sections.values())) == []
        passages = library.passages_of(next(d for d in library.documents() if d.path.endswith(".html")).id)
        assert [p.heading for p in passages if "(6)." in p.text and p.text.startswith("Discounts")] == ["Discounts"]
    finally:
        library.close()


def test_a_file_cut_by_earlier_rules_is_cut_again_on_the_next_ingest(tmp_path, encoder):
    """An unchanged file is skipped, unless the store holds it as cut by an earlier CUT_VERSION."""
    folder = tmp_path / "docs"
    folder.mkdir()
    (folder / "guide.md").write_text(MARKDOWN, encoding="utf-8")
    with open_library(tmp_path / "data", encoder=encoder) as library:
        assert ingest_paths(library, [str(folder)]).added == 1
        assert ingest_paths(library, [str(folder)]).skipped == 1
    with sqlite3.connect(tmp_path / "data" / "rag.db") as db:  # a store of the earlier rules: the bare digest
        db.execute("UPDATE documents SET source_hash = substr(source_hash, 1, 64)")
    library = open_library(tmp_path / "data", encoder=encoder)
    try:
        again = ingest_paths(library, [str(folder)])
        assert again.skipped == 0 and again.updated == 1
        assert ingest_paths(library, [str(folder)]).skipped == 1
    finally:
        library.close()


def test_eval_headings_counts_passages_that_cross_a_heading(tmp_path):
    from eval.headings import headings_inside, measure

    assert headings_inside("Fees\nBoats pay.\nFuel\nDiesel.", {"Fees", "Fuel"}) == 1  # a first line is no crossing
    (tmp_path / "handbook.html").write_text(handbook_html(), encoding="utf-8")
    (tmp_path / "guide.md").write_text(MARKDOWN, encoding="utf-8")
    report = measure(tmp_path, chunk_tokens=64)
    assert (report.files, report.crossing, report.headings_inside) == (2, 0, 0) and report.passages > len(SECTIONS)
    out = CliRunner().invoke(main, ["eval", "headings", str(tmp_path), "--json"], catch_exceptions=False)
    assert out.exit_code == 0 and '"share": 0.0' in out.output
