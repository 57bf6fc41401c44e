"""Shared fixtures: the real default encoder and generator, loaded once per test session."""
from __future__ import annotations

import os

import pytest

from rag.models.encoders import load_encoder


@pytest.fixture(scope="session")
def model_cache(tmp_path_factory):
    """Converted models (generator, ONNX encoder exports): RAG_MODEL_CACHE if set (reuse a developer's
    cache), else one per session.

    The variable is then set for the whole session, so every default-model load converts at most once.
    """
    cache = os.environ.get("RAG_MODEL_CACHE") or str(tmp_path_factory.mktemp("models"))
    os.environ["RAG_MODEL_CACHE"] = cache
    return cache


@pytest.fixture(scope="session")
def encoder(model_cache):
    """The default encoder back end (its ONNX export made once into the model cache)."""
    return load_encoder()


@pytest.fixture(scope="session")
def encoders(model_cache, encoder):
    """Every encoder back end, loaded once: name -> encoder."""
    from rag.models.encoders import ENCODER_BACKENDS

    return {name: encoder if name == encoder.backend else load_encoder(backend=name) for name in ENCODER_BACKENDS}


@pytest.fixture(scope="session")
def generator(model_cache):
    """The real default generator (Gemma 3 270M); the first session on a machine converts it (~100 s)."""
    from rag.models.generators import load_generator

    return load_generator("local")


@pytest.fixture(scope="session")
def notes_data_dir(tmp_path_factory, encoder):
    """Builds a data directory holding small text files (name -> text), ingested through the CLI's path."""
    from rag.ingest.pipeline import ingest_paths
    from rag.library import open_library

    def build(name: str, notes: dict[str, str]):
        root = tmp_path_factory.mktemp(name)
        docs = root / "docs"
        docs.mkdir()
        for filename, text in notes.items():
            (docs / filename).write_text(text, encoding="utf-8")
        library = open_library(root / "data", encoder=encoder)
        try:
            assert ingest_paths(library, [str(docs)]).added == len(notes)
        finally:
            library.close()
        return root / "data"

    return build


# A four-page PDF whose pages each hold their own subject (page 2 is blank, as a scanned report's
# back side may be); each page is longer than a passage, so the passage holding a page's last
# sentence starts on that page.
PAGED_PDF_FACT = "The Marrowfield apiary keeps exactly forty-two hives of black bees on the moor."
PAGED_PDF_QUERY = "How many hives does the Marrowfield apiary keep?"


def _page_text(subject: str, places: list[str], fact: str | None = None) -> list[str]:
    sentences = [f"The {subject} survey of {place} in {1950 + 7 * i} counted {12 + 5 * i} sites, and the "
                 f"volunteers wrote down the weather, the season and what the {subject} notes of {place} "
                 f"said about the years before." for i, place in enumerate(places)]
    return sentences + ([fact] if fact else [])


PAGED_PDF_PAGES = [
    _page_text("lighthouse", ["Skerryvore", "Bell Rock", "Fastnet", "Eddystone", "Longships", "Muckle Flugga",
                              "Dubh Artach", "Chicken Rock"]),
    [],
    _page_text("beekeeping", ["Dartmoor", "Exmoor", "Bodmin", "the Mendips", "the Quantocks", "Purbeck",
                              "the Cotswolds", "the Chilterns"], PAGED_PDF_FACT),
    _page_text("glacier", ["Aletsch", "Rhone", "Gorner", "Morteratsch", "Pasterze", "Hintereis",
                           "Vernagt", "Mer de Glace"]),
]


def write_paged_pdf(path, title: str = "Field survey report", pages: list[list[str]] = PAGED_PDF_PAGES) -> None:
    """A real PDF (fpdf2), one page per list of paragraphs (an empty list: a blank page)."""
    from fpdf import FPDF

    pdf = FPDF()
    pdf.set_title(title)
    pdf.set_font("Helvetica", size=11)
    for paragraphs in pages:
        pdf.add_page()
        for paragraph in paragraphs:
            pdf.multi_cell(0, 6, paragraph)
            pdf.ln(3)
    pdf.output(str(path))
