"""Real text corpora for benchmarks and tests, found on the machine itself (nothing downloaded).

The main source is the Python documentation HTML (Debian ``python3-doc``, under
/usr/share/doc/python3/html): its paragraphs, list items and definitions, plus each of their
sentences as a passage of its own. Where that package is missing, the docstrings of the
installed Python modules (standard library and site-packages) fill in: real English prose
present wherever this project runs.
"""
from __future__ import annotations

import ast
import os
import re
import sys
import sysconfig
from html.parser import HTMLParser
from pathlib import Path
from typing import Iterator

import numpy as np

PYTHON_DOCS = Path("/usr/share/doc/python3/html")
SKIP_PAGES = ("genindex", "py-modindex", "search.html", "contents.html")
TEXT_TAGS = {"p", "li", "dd", "dt", "td", "th", "h1", "h2", "h3", "h4"}
SENTENCE_END = re.compile(r"(?<=[.!?])\s+(?=[A-Z(\"'])")
MIN_CHARS = 30
MAX_CHARS = 600


class _BlockText(HTMLParser):
    """Collects the text of block elements, skipping code listings, scripts and navigation."""

    def __init__(self) -> None:
        super().__init__(convert_charrefs=True)
        self.blocks: list[str] = []
        self._parts: list[str] = []
        self._depth = 0
        self._skip = 0

    def handle_starttag(self, tag: str, attrs) -> None:
        if tag in ("script", "style", "pre", "nav"):
            self._skip += 1
        elif tag in TEXT_TAGS:
            self._flush()
            self._depth += 1

    def handle_endtag(self, tag: str) -> None:
        if tag in ("script", "style", "pre", "nav"):
            self._skip = max(0, self._skip - 1)
        elif tag in TEXT_TAGS:
            self._flush()
            self._depth = max(0, self._depth - 1)

    def handle_data(self, data: str) -> None:
        if self._depth and not self._skip:
            self._parts.append(data)

    def _flush(self) -> None:
        text = " ".join("".join(self._parts).split()).replace("¶", "").strip()
        self._parts = []
        if text:
            self.blocks.append(text)


def _split_long(text: str) -> Iterator[str]:
    """Sentences; a run-on sentence is cut at word boundaries to MAX_CHARS."""
    for sentence in SENTENCE_END.split(text):
        while len(sentence) > MAX_CHARS:
            cut = sentence.rfind(" ", 0, MAX_CHARS)
            cut = cut if cut > MIN_CHARS else MAX_CHARS
            yield sentence[:cut]
            sentence = sentence[cut:].strip()
        yield sentence


def passages_from_text_blocks(blocks: list[str]) -> Iterator[str]:
    """Each block (paragraph) that fits, then each of its sentences when it has several."""
    for block in blocks:
        if MIN_CHARS <= len(block) <= MAX_CHARS:
            yield block
        sentences = list(_split_long(block))
        if len(sentences) > 1 or len(block) > MAX_CHARS:
            for sentence in sentences:
                if len(sentence) >= MIN_CHARS:
                    yield sentence


def python_docs_passages(root: Path = PYTHON_DOCS) -> Iterator[str]:
    """Paragraphs and sentences of the Python HTML documentation, in a stable file order."""
    for path in sorted(root.rglob("*.html")):
        relative = str(path.relative_to(root))
        if relative.startswith(("_", "whatsnew/changelog")) or any(skip in relative for skip in SKIP_PAGES):
            continue
        parser = _BlockText()
        try:
            parser.feed(path.read_text(encoding="utf-8", errors="replace"))
        except OSError:
            continue
        yield from passages_from_text_blocks(parser.blocks)


def docstring_passages() -> Iterator[str]:
    """Paragraphs and sentences of the docstrings of installed Python modules."""
    roots = sorted({sysconfig.get_paths()["stdlib"], sysconfig.get_paths()["purelib"]})
    for root in roots:
        for dirpath, dirnames, filenames in os.walk(root):
            dirnames.sort()
            for filename in sorted(filenames):
                if not filename.endswith(".py"):
                    continue
                try:
                    tree = ast.parse(Path(dirpath, filename).read_text(encoding="utf-8"))
                except (OSError, SyntaxError, UnicodeDecodeError, ValueError):
                    continue
                for node in ast.walk(tree):
                    if isinstance(node, (ast.Module, ast.ClassDef, ast.FunctionDef, ast.AsyncFunctionDef)):
                        doc = ast.get_docstring(node)
                        if doc:
                            blocks = [" ".join(part.split()) for part in doc.split("\n\n")]
                            yield from passages_from_text_blocks([b for b in blocks if not b.startswith(">>>")])


def real_passages(limit: int | None = None) -> list[str]:
    """Distinct real passages: the Python docs first, then module docstrings; stable order."""
    seen: set[str] = set()
    out: list[str] = []
    sources = [python_docs_passages()] if PYTHON_DOCS.is_dir() else []
    sources.append(docstring_passages())
    for source in sources:
        for text in source:
            if text not in seen:
                seen.add(text)
                out.append(text)
                if limit is not None and len(out) >= limit:
                    return out
    return out


if __name__ == "__main__":  # quick look: python -m eval.corpora [N]
    passages = real_passages(int(sys.argv[1]) if len(sys.argv) > 1 else None)
    print(len(passages), "passages")
    for text in passages[:: max(1, len(passages) // 10)]:
        print("-", text[:120])


def _cached_part(parts_dir: Path, start: int, stop: int) -> np.ndarray | None:
    """Rows start..stop from any cached part that begins at ``start`` and reaches ``stop``
    (passages come in a stable order, so a longer run's parts serve a shorter one)."""
    for path in parts_dir.glob(f"python-docs-minilm-{start}-*.npy"):
        try:
            end = int(path.stem.rsplit("-", 1)[1])
        except ValueError:
            continue
        if end >= stop:
            return np.load(path)[: stop - start]
    return None


def encoded_passages(count: int, cache_dir: Path, encoder=None, chunk: int = 5000,
                     progress: bool = True) -> np.ndarray:
    """(count, dim) float32 embeddings of the first ``count`` real passages, cached as .npy.

    Encoding is slow (tens of passages per second per core), so work is saved every ``chunk``
    passages under ``cache_dir`` and an interrupted run picks up where it stopped.
    """
    cache_dir = Path(cache_dir)
    final = cache_dir / f"python-docs-minilm-{count}.npy"
    if final.is_file():
        return np.load(final, mmap_mode="r")
    parts_dir = cache_dir / "parts"
    parts_dir.mkdir(parents=True, exist_ok=True)
    texts: list[str] | None = None
    parts = []
    for start in range(0, count, chunk):
        stop = min(start + chunk, count)
        part = _cached_part(parts_dir, start, stop)
        if part is None:
            if progress:
                print(f"encoding passages {start}..{stop} of {count}", file=sys.stderr, flush=True)
            if texts is None:
                texts = real_passages(count)
                if len(texts) < count:
                    raise ValueError(f"only {len(texts)} real passages found on this machine, {count} asked for")
            if encoder is None:
                from rag.models.encoders import load_encoder

                encoder = load_encoder(backend="torch")  # the cache holds float32 vectors, whatever the default
            vectors = encoder.encode(texts[start:stop])
            path = parts_dir / f"python-docs-minilm-{start}-{stop}.npy"
            tmp = path.with_suffix(".tmp.npy")
            np.save(tmp, vectors)
            os.replace(tmp, path)
            part = vectors
        parts.append(part)
    vectors = np.concatenate(parts).astype(np.float32, copy=False)
    tmp = final.with_suffix(".tmp.npy")
    np.save(tmp, vectors)
    os.replace(tmp, final)
    return vectors
