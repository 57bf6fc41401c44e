"""Readers turn a question and its retrieved passages into an answer that cites passages by number.

- ``prompt``: the passages, numbered, fitted into a token budget, and an instruction to answer only
  from them; the answer opens with the passage it used, ``(passage [n])``, which is parsed back.
- ``fid``: fusion-in-decoder (Izacard & Grave 2020). Each passage is encoded on its own and the
  decoder attends over all of them at once, so cost grows linearly with the number of passages.
  Encoder-decoder models (T5 family): the encoder runs per passage, the outputs are concatenated and
  passed to generation as ``encoder_outputs``. Decoder-only models (the default): each passage's
  key/value cache is computed on its own after a shared prefix, all from the same position (parallel
  context windows), the caches are concatenated, and the question and answer attend over all of them.
"""
from __future__ import annotations

import re
from dataclasses import dataclass, field
from typing import Callable, Iterator

from rag.errors import RagError
from rag.generators import cut_at_stop, pick_tokens, stream_until_stop
from rag.stopwords import STOP_WORDS
from rag.records import Hit

INSTRUCTION = ("Answer the question using only the numbered passages. "
               "Start with the number of the passage that contains the answer.")
EXAMPLE = (
    "Passages:\n"
    "[1] Eiffel Tower: The Eiffel Tower is a wrought-iron lattice tower in Paris. "
    "It is 330 metres tall and was completed in 1889.\n\n"
    "[2] Kilimanjaro: Mount Kilimanjaro is a dormant volcano in Tanzania and the highest mountain in Africa.\n\n"
    "Question: When was the Eiffel Tower completed?\n"
    "Answer (passage [1]): In 1889.\n\n"
    "Question: Which is the highest mountain in Africa?\n"
    "Answer (passage [2]): Mount Kilimanjaro.\n\n"
)
ANSWER_OPENING = "Answer (passage ["
STOP = ["\n"]  # an answer is one line; a base model would go on with more questions
DEFAULT_MAX_NEW_TOKENS = 48
HEADER = re.compile(r"\s*(\d+(?:\s*(?:,|\]\s*\[)\s*\d+)*)\s*\]\)?\s*:?\s*")
INLINE_CITATION = re.compile(r"\[(\d+(?:\s*,\s*\d+)*)\]")


@dataclass
class Reading:
    """What a reader wrote, and which of its passages (1-based) the answer cites."""

    text: str
    cited: list[int] = field(default_factory=list)
    passages_used: int = 0  # how many of the given passages fitted into the reader's context


def short_title(title: str) -> str:
    """A page title without its site suffix ("Data Structures — Python 3.11 documentation")."""
    return re.split(r"\s+[—|]\s+", title.strip())[0]


def passage_block(n: int, hit: Hit, text: str | None = None) -> str:
    title = short_title(hit.document.title or hit.document.path or "")
    body = " ".join((hit.passage.text if text is None else text).split())
    return f"[{n}] {title}: {body}\n\n" if title else f"[{n}] {body}\n\n"


def question_block(question: str) -> str:
    return f"Question: {' '.join(question.split())}\n{ANSWER_OPENING}"


def parse_answer(raw: str, n_passages: int) -> Reading:
    """Split "2]): text [3]" into the answer text and the valid passage numbers it cites."""
    cited: list[int] = []
    match = HEADER.match(raw)
    text = raw[match.end():] if match else raw
    numbers = re.findall(r"\d+", match.group(1)) if match else []
    for group in INLINE_CITATION.findall(text):
        numbers += re.findall(r"\d+", group)
    for number in numbers:
        n = int(number)
        if 1 <= n <= n_passages and n not in cited:
            cited.append(n)
    text = INLINE_CITATION.sub("", text).strip()
    text = re.sub(r"\s+([.,;:])", r"\1", text)
    return Reading(text=text, cited=cited, passages_used=n_passages)


WORD = re.compile(r"\w+")
STOPWORDS = STOP_WORDS


def content_words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOPWORDS}


def support(answer: str, passage: str) -> float:
    """The share of the answer's content words that the passage contains (0..1)."""
    words = content_words(answer)
    return len(words & content_words(passage)) / len(words) if words else 0.0


def ground(reading: Reading, hits: list[Hit], min_support: float = 0.5) -> Reading:
    """Keep only citations whose passage supports the answer; else cite the passage that supports it best.

    A small model names passages unreliably (it tends to copy the example's number), while its answers
    are mostly lifted from a passage, so word overlap checks and repairs the citation.
    An answer that no passage supports cites nothing.
    """
    hits = hits[: reading.passages_used]
    scores = {n: support(reading.text, hit.passage.text + " " + hit.document.title) for n, hit in enumerate(hits, 1)}
    kept = [n for n in reading.cited if scores.get(n, 0.0) >= min_support]
    if not kept and scores:
        best = max(scores, key=scores.get)  # the first (best-ranked) among equals
        if scores[best] >= min_support:
            kept = [best]
    return Reading(text=reading.text, cited=kept, passages_used=reading.passages_used)


def answer_pieces(pieces: Iterator[str]) -> Iterator[str]:
    """The streamed answer without its "n]): " opening, so a user sees only the answer text."""
    buffer, opened = "", False
    for piece in pieces:
        if opened:
            yield piece
            continue
        buffer += piece
        match = HEADER.match(buffer)
        if match and match.end() < len(buffer):
            opened = True
            yield buffer[match.end():]
        elif len(buffer) > 24:
            opened = True
            yield buffer
    if not opened and buffer and not HEADER.fullmatch(buffer):
        yield buffer


def _truncate(tokenizer, text: str, max_tokens: int) -> str:
    ids = tokenizer(text, add_special_tokens=False)["input_ids"]
    if len(ids) <= max_tokens:
        return text
    return tokenizer.decode(ids[:max_tokens], skip_special_tokens=True) + " ..."


def _count(generator, text: str) -> int:
    counter = getattr(generator, "count_tokens", None)
    return counter(text) if counter else len(text) // 4 + 1  # remote engines: about 4 characters a token


# --- the prompt reader ----------------------------------------------------------------------------

def build_prompt(question: str, hits: list[Hit], generator, context_tokens: int = 1536,
                 passage_tokens: int = 320) -> tuple[str, int]:
    """The prompt and how many passages (best first) fitted into ``context_tokens``."""
    tokenizer = getattr(generator, "tokenizer", None)
    head = f"{INSTRUCTION}\n\n{EXAMPLE}Passages:\n"
    tail = question_block(question)
    used, blocks = 0, []
    budget = context_tokens - _count(generator, head + tail)
    for n, hit in enumerate(hits, 1):
        text = _truncate(tokenizer, hit.passage.text, passage_tokens) if tokenizer else hit.passage.text[:passage_tokens * 4]
        block = passage_block(n, hit, text)
        cost = _count(generator, block)
        if blocks and cost > budget:
            break
        blocks.append(block)
        budget -= cost
        used += 1
    return head + "".join(blocks) + tail, used


def read_with_prompt(question: str, hits: list[Hit], generator, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                     on_token: Callable[[str], None] | None = None, seed: int | None = 0,
                     context_tokens: int = 1536, passage_tokens: int = 320) -> Reading:
    """Numbered passages in one prompt; the generator names the passage it answers from."""
    prompt, used = build_prompt(question, hits, generator, context_tokens=context_tokens,
                                passage_tokens=passage_tokens)
    if on_token:
        pieces: list[str] = []

        def tee() -> Iterator[str]:
            for piece in generator.stream(prompt, max_new_tokens=max_new_tokens, stop=STOP, seed=seed):
                pieces.append(piece)
                yield piece

        for shown in answer_pieces(tee()):
            on_token(shown)
        raw = "".join(pieces)
    else:
        raw = generator.generate([prompt], max_new_tokens=max_new_tokens, stop=STOP, seed=seed)[0]
    return ground(parse_answer(raw, used), hits)


# --- the fusion-in-decoder reader -----------------------------------------------------------------

def read_with_fid(question: str, hits: list[Hit], generator, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                  on_token: Callable[[str], None] | None = None, seed: int | None = 0,
                  passage_tokens: int | None = None, temperature: float = 0.0) -> Reading:
    """Each passage encoded on its own, the decoder reading all of them together."""
    if getattr(generator, "model", None) is None:
        raise RagError(f"the fid reader needs a local model (the generator {generator.name!r} is remote); "
                       "use --reader prompt, or a local generator")
    if not hits:
        return Reading(text="", cited=[], passages_used=0)
    if generator.is_encoder_decoder:
        pieces = _fid_encoder_decoder(question, hits, generator, max_new_tokens, seed, passage_tokens or 256)
    else:
        pieces = _fid_decoder_only(question, hits, generator, max_new_tokens, seed, passage_tokens, temperature)
    collected: list[str] = []

    def tee() -> Iterator[str]:
        for piece in stream_until_stop(pieces, STOP):
            collected.append(piece)
            yield piece

    if on_token:
        for shown in answer_pieces(tee()):
            on_token(shown)
    else:
        for _ in tee():
            pass
    return ground(parse_answer("".join(collected), len(hits)), hits)


def _fid_encoder_decoder(question: str, hits: list[Hit], generator, max_new_tokens: int, seed: int | None,
                         passage_tokens: int) -> Iterator[str]:
    """Original FiD: encode (question, passage) pairs separately, decode over the concatenation."""
    from transformers.modeling_outputs import BaseModelOutput

    tokenizer, model = generator.tokenizer, generator.model
    texts = [f"question: {' '.join(question.split())} context: {passage_block(n, hit).strip()}"
             for n, hit in enumerate(hits, 1)]
    batch = tokenizer(texts, return_tensors="pt", padding=True, truncation=True, max_length=passage_tokens)
    with generator.session():
        hidden = model.get_encoder()(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"])
        k, length, dim = hidden.last_hidden_state.shape  # (k passages, L tokens, d)
        fused = BaseModelOutput(last_hidden_state=hidden.last_hidden_state.reshape(1, k * length, dim))
        mask = batch["attention_mask"].reshape(1, k * length)
        kwargs = generator._generate_kwargs(max_new_tokens, 0.0, STOP, seed)
        out = model.generate(encoder_outputs=fused, attention_mask=mask, **kwargs)
    yield tokenizer.decode(out[0], skip_special_tokens=True)


def fid_window(model) -> int:
    """Tokens one parallel window may span: Gemma 3's sliding-window layers see 512 back."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    return int(window) if window else int(getattr(config, "max_position_embeddings", 2048))


def _fid_decoder_only(question: str, hits: list[Hit], generator, max_new_tokens: int, seed: int | None,
                      passage_tokens: int | None, temperature: float) -> Iterator[str]:
    """Parallel context windows over one decoder: shared prefix, per-passage caches, one question.

    Every passage starts right after the shared prefix (same positions), so no query-key distance
    exceeds prefix + longest passage + question + answer. Passages are capped to keep that within
    the model's sliding window, which makes full attention over the concatenated cache equivalent
    to what each sliding-window layer was trained to see.
    """
    import torch
    from transformers import DynamicCache

    tokenizer, model = generator.tokenizer, generator.model
    prefix = tokenizer(f"{INSTRUCTION}\n\n{EXAMPLE}Passages:\n", return_tensors="pt")["input_ids"]  # with BOS
    suffix = tokenizer(question_block(question), add_special_tokens=False, return_tensors="pt")["input_ids"]
    p_len, s_len = prefix.shape[1], suffix.shape[1]
    cap = fid_window(model) - p_len - s_len - max_new_tokens - 1
    if passage_tokens:
        cap = min(cap, passage_tokens)
    if cap < 16:
        raise RagError("the question is too long for the fid reader's context window; shorten it or lower max tokens")
    newline = tokenizer("\n\n", add_special_tokens=False)["input_ids"]
    passages = []
    for n, hit in enumerate(hits, 1):
        ids = tokenizer(passage_block(n, hit), add_special_tokens=False)["input_ids"]
        passages.append(ids if len(ids) <= cap else ids[: cap - len(newline)] + newline)
    lengths = [len(ids) for ids in passages]
    longest = max(lengths)
    pad = tokenizer.pad_token_id or 0
    batch = torch.tensor([ids + [pad] * (longest - len(ids)) for ids in passages])  # right-padded: causal
    eos = generator._eos_ids()

    with generator.session():
        shared = model.model(input_ids=prefix, past_key_values=DynamicCache(), use_cache=True).past_key_values
        expanded = DynamicCache(ddp_cache_data=[
            (layer.keys.expand(len(passages), -1, -1, -1).contiguous(),
             layer.values.expand(len(passages), -1, -1, -1).contiguous()) for layer in shared.layers])
        windows = model.model(input_ids=batch, past_key_values=expanded, use_cache=True).past_key_values
        fused = DynamicCache(ddp_cache_data=[
            (torch.cat([layer.keys[:1, :, :p_len]] +
                       [layer.keys[i:i + 1, :, p_len:p_len + n] for i, n in enumerate(lengths)], dim=2),
             torch.cat([layer.values[:1, :, :p_len]] +
                       [layer.values[i:i + 1, :, p_len:p_len + n] for i, n in enumerate(lengths)], dim=2))
            for layer in windows.layers])
        del shared, expanded, windows
        total = p_len + sum(lengths)
        # The question sees every cached token and itself causally; same mask for both layer kinds.
        blocked = torch.finfo(torch.float32).min
        mask = torch.zeros(1, 1, s_len, total + s_len)
        mask[0, 0, :, total:] = torch.triu(torch.full((s_len, s_len), blocked), diagonal=1)
        position = p_len + longest
        out = model(input_ids=suffix, position_ids=torch.arange(position, position + s_len)[None],
                    past_key_values=fused, attention_mask={"full_attention": mask, "sliding_attention": mask},
                    use_cache=True, logits_to_keep=1)
        position += s_len
        sampler = torch.Generator().manual_seed(int(seed)) if seed is not None else None
        generated: list[int] = []
        shown = ""
        for _ in range(max_new_tokens):
            token = int(pick_tokens(out.logits[:, -1], temperature, sampler)[0])
            if token in eos:
                break
            generated.append(token)
            text = tokenizer.decode(generated, skip_special_tokens=True)
            if not text.endswith("\ufffd") and len(text) > len(shown):  # wait for whole characters
                yield text[len(shown):]
                shown = text
            if cut_at_stop(text, STOP)[1]:
                break
            out = model(input_ids=torch.tensor([[token]]), position_ids=torch.tensor([[position]]),
                        past_key_values=out.past_key_values,
                        attention_mask={"full_attention": None, "sliding_attention": None},
                        use_cache=True, logits_to_keep=1)
            position += 1


READERS: dict[str, Callable[..., Reading]] = {"prompt": read_with_prompt, "fid": read_with_fid}


def get_reader(name: str) -> Callable[..., Reading]:
    if name not in READERS:
        raise RagError(f"unknown reader {name!r}: use {' or '.join(READERS)}")
    return READERS[name]
