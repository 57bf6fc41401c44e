"""Copy-constrained decoding: a generator may only write a contiguous span of its source texts.

At every step the allowed next tokens are those that continue the span written so far in some
source's token sequence (at the first step: any token of any source), plus the end of the answer
once something is written. The answer is therefore always text of a passage, the citation is the
passage it was copied from, and nothing the passages do not say can reach the user. Only the
logits of the allowed tokens are computed (a few dozen rows of the output matrix instead of the
262k-token vocabulary), which makes a decoding step about as cheap as the model body alone.
"""
from __future__ import annotations

import math
from dataclasses import dataclass
from typing import Callable

NEWLINE = "\n"


@dataclass
class Copy:
    """A copied span: its text, the index of the source it came from and its mean log-probability."""

    text: str
    source: int
    logprob: float  # mean per token, over the allowed choices at each step (<= 0)
    tokens: int


class CopyConstraint:
    """Which tokens keep the output a contiguous span of one of ``sources`` (lists of token ids)."""

    def __init__(self, sources: list[list[int]]):
        self.sources = sources
        self.states: list[tuple[int, int]] = [(i, j) for i, s in enumerate(sources) for j in range(len(s))]

    def allowed(self) -> dict[int, list[tuple[int, int]]]:
        """Next token -> the (source, position after it) states it leads to."""
        following: dict[int, list[tuple[int, int]]] = {}
        for i, j in self.states:
            if j < len(self.sources[i]):
                following.setdefault(self.sources[i][j], []).append((i, j + 1))
        return following

    def advance(self, states: list[tuple[int, int]]) -> None:
        self.states = states

    def source(self) -> int:
        """The first (best-ranked) source that holds the span written so far."""
        return min(i for i, _ in self.states)


def restricted_logits(model, hidden, token_ids: list[int]):
    """Logits of ``token_ids`` only, from the last hidden state (1, d): the output matrix's rows for them."""
    import torch

    weight = model.get_output_embeddings().weight
    logits = hidden.reshape(1, -1) @ weight[torch.tensor(token_ids)].T
    cap = getattr(model.config, "final_logit_softcapping", None)
    if cap:
        logits = torch.tanh(logits / cap) * cap
    return logits[0].float()


Prior = Callable[[int, list[tuple[int, int]], bool], float]


def copy_decode(first_hidden, step: Callable[[int], object], model, tokenizer, sources: list[list[int]],
                stop_ids: set[int], max_tokens: int = 16, prior: Prior | None = None,
                stop_prior: Callable[[list[tuple[int, int]]], float] | None = None,
                on_token: Callable[[str], None] | None = None) -> Copy | None:
    """Greedy decoding constrained to copy from ``sources``.

    ``first_hidden``: the model's last hidden state (1, d) after the prompt; ``step(token)`` feeds one
    token and returns the next hidden state. ``prior(token, states, first)`` adds to a token's
    log-probability given the source positions it would copy (the reader's answer-type and proximity
    cues); ``stop_prior(states)`` adds to ending the answer where the copy stands.
    """
    import torch

    constraint = CopyConstraint(sources)
    stops = sorted(stop_ids)
    hidden, generated, logprob, shown = first_hidden, [], 0.0, ""
    ended = (0, 0.0, constraint.states)  # the longest answer so far that may end where it stands
    stop_bonus = 0.0  # stop_prior where the copy stands: -inf mid-word
    for _ in range(max_tokens):
        following = constraint.allowed()
        if not following and not generated:
            return None
        candidates = list(following) + (stops if generated else [])
        logits = restricted_logits(model, hidden, candidates)
        scores = torch.log_softmax(logits, -1)
        adjusted = scores.clone()
        if prior:
            for row, token in enumerate(candidates[:len(following)]):
                adjusted[row] += prior(token, following[token], not generated)
        if generated:
            adjusted[len(following):] += stop_bonus
        best = int(torch.argmax(adjusted))
        token = candidates[best]
        if token in stop_ids and generated:
            break
        logprob += float(scores[best])
        generated.append(token)
        constraint.advance(following[token])
        stop_bonus = stop_prior(constraint.states) if stop_prior else 0.0
        if stop_bonus > -math.inf:  # mid-word is neither a place to end nor to show yet
            ended = (len(generated), logprob, constraint.states)
            if on_token:
                text = tokenizer.decode(generated, skip_special_tokens=True).strip()
                if not text.endswith("\ufffd") and len(text) > len(shown):
                    on_token(text[len(shown):] if shown else text)
                    shown = text
        hidden = step(token)
    else:  # out of tokens: an answer cut mid-word ("on 2" of "on 25 May") goes back to its last word's end
        length, logprob, states = ended
        generated = generated[:length]
        constraint.advance(states)
    if not generated:
        return None
    text = tokenizer.decode(generated, skip_special_tokens=True).strip()
    return Copy(text=text, source=constraint.source(), logprob=logprob / len(generated), tokens=len(generated))


def stop_tokens(tokenizer, eos: set[int]) -> set[int]:
    """End-of-answer tokens: the model's end of sequence and a bare newline."""
    ids = set(eos)
    newline = tokenizer(NEWLINE, add_special_tokens=False)["input_ids"]
    if newline:
        ids.add(newline[-1])
    return ids
