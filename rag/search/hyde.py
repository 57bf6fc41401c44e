"""HyDE query expansion (Gao et al. 2022, "Precise Zero-Shot Dense Retrieval without Relevance Labels").

A question and its answer passage look different to a dense encoder; a passage the generator makes up
looks like the real one, even when its facts are wrong. The query vector is the mean of the question's
embedding and the N sampled hypothetical passages' embeddings, renormalised to unit length.
The keyword side of hybrid search keeps the question text: only the dense query changes.
"""
from __future__ import annotations

import numpy as np

from rag.errors import RagError

DEFAULT_PROMPT = (
    "Write a short encyclopedia passage that answers the question.\n\n"
    "Question: {question}\n"
    "Passage:"
)
DEFAULT_N = 4
DEFAULT_TEMPERATURE = 0.7
DEFAULT_MAX_NEW_TOKENS = 80
STOP = ["\n\n", "Question:"]


def hypothetical_passages(question: str, generator, n: int = DEFAULT_N, temperature: float = DEFAULT_TEMPERATURE,
                          prompt: str = DEFAULT_PROMPT, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                          seed: int | None = 0) -> list[str]:
    """N sampled passages that would answer the question (empty ones dropped)."""
    if "{question}" not in prompt:
        raise RagError("the HyDE prompt must contain {question}")
    text = prompt.format(question=question.strip())
    if n <= 0:
        return []
    passages: list[str] = []
    for attempt in range(3):  # a sample can end at once (a blank line first); draw again for those
        missing = n - len(passages)
        if missing <= 0:
            break
        outputs = generator.generate([text] * missing, max_new_tokens=max_new_tokens, temperature=temperature,
                                     stop=STOP, seed=None if seed is None else seed + attempt)
        passages += [o.strip() for o in outputs if o.strip()]
    return passages


def hyde_vector(question: str, encoder, generator, n: int = DEFAULT_N, temperature: float = DEFAULT_TEMPERATURE,
                prompt: str = DEFAULT_PROMPT, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                seed: int | None = 0) -> tuple[np.ndarray, list[str]]:
    """The HyDE query vector (dim,) float32 and the hypothetical passages behind it.

    ``encoder`` may be an encoder or a library (its ``.encoder`` is used).
    """
    if not question or not question.strip():
        raise RagError("the question is empty")
    encoder = getattr(encoder, "encoder", encoder)
    passages = hypothetical_passages(question, generator, n=n, temperature=temperature, prompt=prompt,
                                     max_new_tokens=max_new_tokens, seed=seed)
    vectors = encoder.encode([question.strip()] + passages)  # (1 + N, dim), each unit length
    mean = vectors.mean(axis=0)
    norm = float(np.linalg.norm(mean))
    vector = mean / norm if norm > 0 else vectors[0]
    return np.ascontiguousarray(vector, dtype=np.float32), passages
