"""The answer pipeline: [HyDE] -> search -> relevance check -> reader -> Answer with citations and timings."""
from __future__ import annotations

import time
from typing import Callable

import numpy as np

from rag.answer.evidence import answer_in_context
from rag.contract import ASK_K
from rag.errors import RagError
from rag.records import Answer, Citation, Hit

NOT_FOUND = "The documents do not contain the answer."
# Cosine similarity (default encoder) between the question and its best passage below which the
# question is taken to be off-topic for this store: unrelated text scores about 0 to 0.2 here.
MIN_RELEVANCE = 0.25


def relevance(library, query: np.ndarray, hits: list[Hit]) -> list[float]:
    """Cosine similarity of the question's vector to each hit, from the stored passage embeddings (any mode)."""
    if not hits:
        return []
    ids, vectors = library.embeddings(ids=[h.passage.id for h in hits])
    by_id = dict(zip(ids.tolist(), (vectors @ query).tolist()))
    return [float(by_id.get(h.passage.id, 0.0)) for h in hits]


def resolve_generator(generator, library):
    """A loaded generator, a name or path to load, or None for the default local model."""
    if generator is None or isinstance(generator, str):
        from rag.models.generators import load_generator

        return load_generator(generator or "local", data_dir=library.data_dir)
    return generator


def ask(library, question: str, k: int = 5, mode: str = "hybrid", hyde: bool = False, reader: str | None = None,
        generator=None, where: dict[str, str] | None = None, on_token: Callable[[str], None] | None = None,
        max_new_tokens: int | None = None, min_relevance: float = MIN_RELEVANCE, seed: int | None = 0,
        hyde_n: int | None = None, **reader_options) -> Answer:
    """Answer ``question`` from the library's passages, citing them; says so when they do not hold the answer.

    ``reader_options`` go to the reader (e.g. ``sentences`` for prompt, ``passage_tokens`` for fid).
    The generator is loaded only when the reader or HyDE needs one.
    """
    from rag.answer.readers import DEFAULT_MAX_NEW_TOKENS, DEFAULT_READER, NEEDS_GENERATOR, get_reader
    from rag.search.hyde import DEFAULT_N, hyde_vector
    from rag.search.ranking import search

    started = time.perf_counter()
    if not isinstance(question, str) or not question.strip():
        raise RagError("the question is empty")
    question = " ".join(question.split())
    k = ASK_K.check(k)
    reader = reader or DEFAULT_READER
    read = get_reader(reader)
    if library.passage_count() == 0:
        raise RagError(f"no documents in {library.data_dir}: add some with `rag ingest PATH` first")
    if reader in NEEDS_GENERATOR or hyde:
        generator = resolve_generator(generator, library)
    timings = {"retrieve": 0.0, "hyde": 0.0, "generate": 0.0, "total": 0.0}

    vector, hypothetical = None, []
    if hyde:
        t = time.perf_counter()
        vector, hypothetical = hyde_vector(question, library.encoder, generator, n=hyde_n or DEFAULT_N, seed=seed)
        timings["hyde"] = time.perf_counter() - t

    t = time.perf_counter()
    question_vector = library.encoder.encode([question])[0]  # encoded once: search, relevance, evidence
    hits = search(library, question, k=int(k), mode=mode, where=where,
                  query_vector=library.query_vector(question, question_vector) if vector is None else vector)
    scores = relevance(library, question_vector, hits)
    timings["retrieve"] = time.perf_counter() - t

    text, citations, sentence = NOT_FOUND, [], None
    if hits and max(scores) >= min_relevance:
        t = time.perf_counter()
        reading = read(question, hits, generator, encoder=library.encoder,
                       max_new_tokens=max_new_tokens or DEFAULT_MAX_NEW_TOKENS, on_token=on_token, seed=seed,
                       question_vector=question_vector, passage_scores=scores,
                       data_dir=getattr(library, "data_dir", None), **reader_options)
        timings["generate"] = time.perf_counter() - t
        if reading.cited and reading.text:
            citations = [Citation(n=n, hit=hits[n - 1]) for n in reading.cited]
            text = reading.text + " " + "".join(f"[{n}]" for n in reading.cited)
            first = hits[reading.cited[0] - 1].passage
            sentence = answer_in_context(first.text, reading.text, reading.span)
            if sentence is not None:
                sentence.update(n=reading.cited[0], passage_id=first.id)
    timings["total"] = time.perf_counter() - started
    return Answer(question=question, text=text, citations=citations, passages=hits, hyde=hypothetical,
                  timings=timings, sentence=sentence)
