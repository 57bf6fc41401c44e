"""Readers turn a question and its retrieved passages into a short answer that cites its passage.

Every reader answers only with text the passages hold, so nothing unsupported reaches the user
with a citation on it:

- ``span`` (default): the trained span reader (rag.models.span_reader): start/end logits over question +
  passage from a LoRA-tuned MiniLM, each passage read whole, the best span across them weighed with
  its passage's retrieval cosine; below its calibrated no-answer margin it declines.
- ``extract``: no generator. The evidence sentences (rag.answer.evidence) are ranked by the encoder, and
  the best-scoring phrase among them that fits the question (rag.answer.spans) is the answer.
- ``prompt``: the best evidence sentences in one short few-shot prompt; the generator's decoding is
  constrained to copy a span of them (rag.answer.copying), so the generator chooses the span and the
  passage it came from is the citation.
- ``fid``: fusion-in-decoder (Izacard & Grave 2020): each passage (cut to its best evidence sentences,
  ``FID_SENTENCES``) is encoded on its own and the decoder reads all of them at once; on decoder-only
  models the passages are packed into one sequence after a shared prefix, each from the same position
  and masked from the others (parallel context windows). Decoding is constrained to copy from the
  passages, as above.

Generators that cannot be constrained (a remote OpenAI-compatible server, encoder-decoder models)
write freely; the answer is then checked against the passages, and one they do not support falls
back to the extractive answer.
"""
from __future__ import annotations

import math
import re
from dataclasses import dataclass, field
from typing import Callable

from rag.answer.copying import Copy, copy_decode, stop_tokens
from rag.answer.evidence import CALL, STOP_WORDS, WORD, Sentence, answer_type, fits_type, rank_sentences
from rag.errors import RagError
from rag.records import Hit

DEFAULT_MAX_NEW_TOKENS = 16  # answers are short phrases: SQuAD's average 3 words
FID_SENTENCES = 2  # sentences of each passage the fid reader reads (0: the whole passage)
EVIDENCE_SENTENCES = 2  # sentences the prompt reader reads (top 2 hold the answer ~88% on SQuAD dev)
TYPE_BONUS = 1.0  # log-prob added to a first token that fits the expected answer type
ECHO_PENALTY = 2.0  # log-prob taken from a first token that repeats the question or is a stop word
STOP_BONUS = 1.0  # log-prob added to ending the answer, against copying on
QUESTION_FIRST = False  # the question before the context ("Question: ...\nContext: ...\nAnswer:")
# Hand-written examples (no dataset text): short spans, one per common question form.
EXAMPLE_ITEMS = [
    ("The Eiffel Tower is a wrought-iron lattice tower in Paris, completed in 1889 for the World's Fair.",
     "When was the Eiffel Tower completed?", "1889"),
    ("Mount Kilimanjaro, a dormant volcano in Tanzania, is the highest mountain in Africa.",
     "In which country is Mount Kilimanjaro?", "Tanzania"),
    ("The novel was written by Mary Shelley, who began it during a stay near Geneva in 1816.",
     "Who wrote the novel?", "Mary Shelley"),
    ("Water boils at 100 degrees Celsius at sea level, but at lower temperatures on high mountains because the "
     "air pressure is lower.", "Why does water boil at lower temperatures on high mountains?",
     "the air pressure is lower"),
    ("The orchestra, founded in 1842, has 106 musicians and performs over 180 concerts a year.",
     "How many musicians does the orchestra have?", "106"),
]


def prompt_block(context: str, question: str, question_first: bool | None = None) -> str:
    """One reading task, ending where the answer starts."""
    question = " ".join(question.split())
    if QUESTION_FIRST if question_first is None else question_first:
        return f"Question: {question}\nContext: {context}\nAnswer:"
    return f"Context: {context}\n" + _answer_block(question)


def examples(question_first: bool | None = None) -> str:
    """The few-shot prefix (its key/value cache is computed once per generator)."""
    return "".join(f"{prompt_block(c, q, question_first)} {a}\n\n" for c, q, a in EXAMPLE_ITEMS)


@dataclass
class Reading:
    """What a reader answered, and which of its passages (1-based) the answer cites."""

    text: str
    cited: list[int] = field(default_factory=list)
    passages_used: int = 0  # how many of the given passages the reader read
    confidence: float = 0.0  # the reader's own score for the answer (reader-specific scale)
    method: str = ""  # how the answer was found: "copy", "extract", "checked", "fallback", "span"
    span: tuple[int, int] | None = None  # the answer's character offsets in the cited passage, where known


def content_words(text: str) -> set[str]:
    return {w for w in WORD.findall(text.lower()) if w not in STOP_WORDS}


def supported(answer: str, passage: str) -> bool:
    """Every content word of the answer occurs in the passage (the groundedness test)."""
    words = content_words(answer)
    return bool(words) and words <= content_words(passage)


def short_title(title: str) -> str:
    """A page title without its site suffix ("Data Structures — Python 3.11 documentation")."""
    return re.split(r"\s+[—|]\s+", title.strip())[0]


# --- the extractive reader ------------------------------------------------------------------------

def read_extractive(question: str, hits: list[Hit], generator=None, encoder=None,
                    on_token: Callable[[str], None] | None = None, sentences: int = 3, question_vector=None,
                    passage_scores: list[float] | None = None, **_) -> Reading:
    """The best phrase of the best evidence sentences; no generator needed."""
    if encoder is None:
        raise RagError("the extract reader needs the encoder")
    ranked = rank_sentences(question, hits, encoder, question_vector, passage_scores)
    return extract_from(question, hits, ranked[:sentences], on_token)


def extract_from(question: str, hits: list[Hit], evidence: list[Sentence],
                 on_token: Callable[[str], None] | None = None) -> Reading:
    from rag.answer.spans import candidate_spans

    spans = candidate_spans(question, evidence, lambda s: hits[s.n - 1].passage.text)
    if not spans:
        return Reading(text="", passages_used=len(hits), method="extract")
    best = spans[0]
    if on_token:
        on_token(best.text)
    return Reading(text=best.text, cited=[best.sentence.n], passages_used=len(hits), confidence=best.score,
                   method="extract", span=(best.start, best.end))


# --- the trained span reader ---------------------------------------------------------------------

def read_with_span(question: str, hits: list[Hit], generator=None, encoder=None,
                   on_token: Callable[[str], None] | None = None, passage_scores: list[float] | None = None,
                   data_dir=None, **_) -> Reading:
    """The best span across the passages by the trained reader (the data directory's tuned one, if any)."""
    from rag.models.generators import model_cache_dir
    from rag.models.span_reader import load_span_reader, reader_directory

    reader = load_span_reader(reader_directory(data_dir), model_cache_dir(data_dir))
    span, score = reader.choose(question, [h.passage.text for h in hits], passage_scores)
    if span is None:
        return Reading(text="", passages_used=len(hits), confidence=float(score), method="span")
    if on_token:
        on_token(span.text)
    return Reading(text=span.text, cited=[span.passage + 1], passages_used=len(hits), confidence=score,
                   method="span", span=(span.start, span.end))


# --- constrained generation -----------------------------------------------------------------------

NEAR_WEIGHT = 0.15  # log-prob taken per word between an answer's first word and the question's words
NEAR_CAP = 8


def _inside_number(text: str, i: int) -> bool:
    """``text[i]`` is the "," of "1,500" or the "." of "3.5" (Gemma writes a number a digit a token)."""
    return i > 0 and text[i:i + 1] in (",", ".") and text[i - 1].isdigit() and text[i + 1:i + 2].isdigit()


def copy_sources(question: str, texts: list[str], tokenizer):
    """Token sequences of ``texts`` and the cues that steer copying from them.

    Returns (sources, prior, stop_prior) for rag.answer.copying.copy_decode: an answer should start at a
    word that fits the expected type, sits near the question's words in its sentence (the classic
    SQuAD cue) and does not repeat the question; it should stop before running into the question's
    words or punctuation.
    """
    from rag.answer.evidence import is_code, question_stems, stem

    kind = answer_type(question)
    asked = question_stems(question)
    sources, tables = [], []
    for text in texts:
        padded = " " + text  # token offsets refer to this: the first word gets the leading space it has mid-text
        encoded = tokenizer(padded, add_special_tokens=False, return_offsets_mapping=True)
        words = [(m.group(0), m.start(), m.end()) for m in WORD.finditer(padded)]
        # where words start; "500" of "1,500" and "5" of "3.5" continue a number and start nothing
        starts = {start: w for w, (_, start, _) in enumerate(words) if not _inside_number(padded, start - 1)}
        echo = [stem(word) in asked and not is_code(padded, start, end) for word, start, end in words]
        anchors = [w for w, (word, _, _) in enumerate(words) if echo[w] and word.lower() not in STOP_WORDS]
        table = []  # per token: (word index, starts a word, is punctuation that may end an answer)
        for start, end in encoded["offset_mapping"]:
            piece = padded[start:end]
            lead = start + len(piece) - len(piece.lstrip())
            word = starts.get(lead)
            call = lead == start and CALL.match(padded, start)  # "()" right after a word: part of it
            inside = piece in (",", ".") and _inside_number(padded, start)  # an answer does not end there
            table.append((word, word is not None,
                          not call and not inside and (not piece.strip() or not piece.strip()[0].isalnum())))
        sources.append(encoded["input_ids"])
        tables.append((words, echo, anchors, table))

    def position_score(i: int, j: int, first: bool) -> float:
        words, echo, anchors, table = tables[i]
        word, starts_word, punctuation = table[j]
        if not first:
            return -ECHO_PENALTY if starts_word and echo[word] else 0.0
        if not starts_word:
            return -math.inf  # an answer starts at a word: never the tail of "1930" or "Panthers"
        text = words[word][0]
        value = 0.0
        if echo[word] or text.lower() in STOP_WORDS:
            value -= ECHO_PENALTY
        if kind != "other" and fits_type(kind, text):
            value += TYPE_BONUS
        # far from the question's words, or in a sentence that has none of them: the full penalty
        value -= NEAR_WEIGHT * min(min((abs(word - a) for a in anchors), default=NEAR_CAP), NEAR_CAP)
        return value

    def prior(token: int, states: list[tuple[int, int]], first: bool) -> float:
        return max(position_score(i, j - 1, first) for i, j in states)

    def stop_prior(states: list[tuple[int, int]]) -> float:
        best = -math.inf  # an answer ends at a word's end: never "19" out of "1930"
        for i, j in states:
            table = tables[i][3]
            if j >= len(table):
                return STOP_BONUS + 1.0
            word, starts_word, punctuation = table[j]
            if punctuation:
                best = max(best, 0.5)
            elif starts_word:
                best = max(best, 1.0 if tables[i][1][word] else 0.0)
        return STOP_BONUS + best

    return sources, prior, stop_prior


def cached_prefix(generator, prefix: str):
    """The key/value cache of a fixed prompt prefix, computed once per generator and copied per use."""
    from transformers import DynamicCache

    store = generator.__dict__.setdefault("_prefix_caches", {})
    if prefix not in store:
        ids = generator.tokenizer(prefix, return_tensors="pt")["input_ids"]  # with BOS
        cache = generator.model.model(input_ids=ids, cache=DynamicCache(), use_cache=True).cache
        store[prefix] = (ids.shape[1], [(layer.keys, layer.values) for layer in cache.layers])
    length, layers = store[prefix]
    return length, DynamicCache(ddp_cache_data=[(k.clone(), v.clone()) for k, v in layers])


def _can_copy(generator) -> bool:
    return getattr(generator, "model", None) is not None and not generator.is_encoder_decoder


def _answer_block(question: str) -> str:
    return f"Question: {' '.join(question.split())}\nAnswer:"


def _reading_from_copy(copy: Copy | None, cite: Callable[[int], int], used: int) -> Reading:
    if copy is None or not content_words(copy.text):
        return Reading(text="", passages_used=used, method="copy")
    return Reading(text=copy.text, cited=[cite(copy.source)], passages_used=used, confidence=copy.logprob,
                   method="copy")


def checked(raw: str, hits: list[Hit], question: str, evidence: list[Sentence],
            on_token: Callable[[str], None] | None) -> Reading:
    """A freely written answer, kept only when a passage supports it; else the extractive answer."""
    text = raw.strip().split("\n")[0].strip().rstrip(".")
    for n, hit in enumerate(hits, 1):
        if text and supported(text, hit.passage.text):
            if on_token:
                on_token(text)
            return Reading(text=text, cited=[n], passages_used=len(hits), method="checked")
    reading = extract_from(question, hits, evidence, on_token)
    reading.method = "fallback"
    return reading


# --- the prompt reader ----------------------------------------------------------------------------

def read_with_prompt(question: str, hits: list[Hit], generator, encoder=None,
                     max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, on_token: Callable[[str], None] | None = None,
                     seed: int | None = 0, sentences: int = EVIDENCE_SENTENCES, question_vector=None,
                     passage_scores: list[float] | None = None, **_) -> Reading:
    """The best evidence sentences in a few-shot prompt; the generator copies the answer from them."""
    if encoder is None:
        raise RagError("the prompt reader needs the encoder to choose evidence sentences")
    if not hits:
        return Reading(text="")
    ranked = rank_sentences(question, hits, encoder, question_vector, passage_scores)
    evidence = ranked[:sentences]
    task = prompt_block(" ".join(s.text for s in evidence), question)
    if not _can_copy(generator):
        raw = generator.generate([examples() + task], max_new_tokens=max_new_tokens,
                                 stop=["\n"], seed=seed)[0]
        return checked(raw, hits, question, ranked[:3], on_token)
    import torch

    tokenizer, body = generator.tokenizer, generator.model.model
    sources, prior, stop_prior = copy_sources(question, [s.text for s in evidence], tokenizer)
    with generator.session():
        _, cache = cached_prefix(generator, examples())
        rest = tokenizer(task, add_special_tokens=False, return_tensors="pt")
        out = body(input_ids=rest["input_ids"], cache=cache, use_cache=True)

        def step(token: int):
            nonlocal out
            out = body(input_ids=torch.tensor([[token]]), cache=out.cache, use_cache=True)
            return out.last_hidden_state[:, -1]

        copy = copy_decode(out.last_hidden_state[:, -1], step, generator.model, tokenizer, sources,
                           stop_tokens(tokenizer, generator._eos_ids()), max_tokens=max_new_tokens,
                           prior=prior, stop_prior=stop_prior, on_token=on_token)
    return _reading_from_copy(copy, lambda i: evidence[i].n, len(hits))


# --- the fusion-in-decoder reader -----------------------------------------------------------------

def passage_block(n: int, hit: Hit, text: str | None = None) -> str:
    title = short_title(hit.document.title or hit.document.path or "")
    body = " ".join((hit.passage.text if text is None else text).split())
    return f"Context: {title}: {body}\n" if title else f"Context: {body}\n"


def read_with_fid(question: str, hits: list[Hit], generator, encoder=None,
                  max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS, on_token: Callable[[str], None] | None = None,
                  seed: int | None = 0, passage_tokens: int | None = None,
                  window_sentences: int | None = None, question_vector=None,
                  passage_scores: list[float] | None = None, **_) -> Reading:
    """Each passage encoded on its own, the decoder reading all of them together."""
    if getattr(generator, "model", None) is None:
        raise RagError(f"the fid reader needs a local model (the generator {generator.name!r} is remote); "
                       "use --reader prompt, or a local generator")
    if not hits:
        return Reading(text="")
    if generator.is_encoder_decoder:
        raw = _fid_encoder_decoder(question, hits, generator, max_new_tokens, seed, passage_tokens or 256)
        evidence = rank_sentences(question, hits, encoder, question_vector, passage_scores)[:3] \
            if encoder is not None else []
        return checked(raw, hits, question, evidence, on_token) if evidence else \
            Reading(text=raw.strip(), cited=[n for n, h in enumerate(hits, 1) if supported(raw, h.passage.text)][:1],
                    passages_used=len(hits), method="checked")
    window_sentences = FID_SENTENCES if window_sentences is None else window_sentences
    if window_sentences and encoder is not None:
        texts = evidence_windows(rank_sentences(question, hits, encoder, question_vector, passage_scores), hits,
                                 window_sentences)
    else:
        texts = [" ".join(h.passage.text.split()) for h in hits]
    return _fid_decoder_only(question, hits, texts, generator, max_new_tokens, passage_tokens, on_token)


def evidence_windows(ranked: list[Sentence], hits: list[Hit], per_passage: int) -> list[str]:
    """Each passage cut to its ``per_passage`` best sentences, kept in their order in the passage."""
    chosen: dict[int, list[Sentence]] = {}
    for sentence in ranked:
        if len(chosen.setdefault(sentence.n, [])) < per_passage:
            chosen[sentence.n].append(sentence)
    return [" ".join(" ".join(s.text.split()) for s in sorted(chosen.get(n, []), key=lambda s: s.start))
            or " ".join(hit.passage.text.split()) for n, hit in enumerate(hits, 1)]


def _fid_encoder_decoder(question: str, hits: list[Hit], generator, max_new_tokens: int, seed: int | None,
                         passage_tokens: int) -> str:
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
        kwargs = generator._generate_kwargs(max_new_tokens, 0.0, ["\n"], seed)
        out = model.generate(encoder_outputs=fused, attention_mask=mask, **kwargs)
    return tokenizer.decode(out[0], skip_special_tokens=True)


def fid_window(model) -> int:
    """Tokens one parallel window may span: Gemma 3's sliding-window layers see 512 back."""
    config = model.config
    window = getattr(config, "sliding_window", None)
    return int(window) if window else int(getattr(config, "max_position_embeddings", 2048))


def _fid_decoder_only(question: str, hits: list[Hit], texts: list[str], generator, max_new_tokens: int,
                      passage_tokens: int | None, on_token: Callable[[str], None] | None) -> Reading:
    """Fusion-in-decoder on a decoder-only model, decoding constrained to copy from the passages."""
    tokenizer = generator.tokenizer
    with generator.session():
        hidden, step = fid_start(question, hits, generator, max_new_tokens, passage_tokens, texts)
        # Sources: each window's text (after its "Context: title:" opening), so a copy is passage text.
        sources, prior, stop_prior = copy_sources(question, texts, tokenizer)
        copy = copy_decode(hidden, step, generator.model, tokenizer, sources,
                           stop_tokens(tokenizer, generator._eos_ids()), max_tokens=max_new_tokens,
                           prior=prior, stop_prior=stop_prior, on_token=on_token)
    return _reading_from_copy(copy, lambda i: i + 1, len(hits))


def fid_start(question: str, hits: list[Hit], generator, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
              passage_tokens: int | None = None, texts: list[str] | None = None):
    """Parallel context windows over one decoder: shared prefix, per-passage caches, one question.

    Returns the last hidden state after the question and a ``step(token) -> hidden`` that decodes on.
    The passages are packed into one sequence with a block-diagonal mask (no padding to the longest,
    no per-passage copy of the prefix) and read with all cores (``generator.prefill()``).
    Every passage starts right after the shared prefix (same positions), so no query-key distance
    exceeds prefix + longest passage + question + answer. Passages are capped to keep that within
    the model's sliding window, which makes full attention over the concatenated cache equivalent
    to what each sliding-window layer was trained to see. Call inside ``generator.session()``.
    """
    import torch

    tokenizer, model, body = generator.tokenizer, generator.model, generator.model.model
    suffix = tokenizer(_answer_block(question), add_special_tokens=False, return_tensors="pt")["input_ids"]
    p_len, shared = cached_prefix(generator, examples(question_first=False))  # FiD: passages come first
    s_len = suffix.shape[1]
    cap = fid_window(model) - p_len - s_len - max_new_tokens - 1
    if passage_tokens:
        cap = min(cap, passage_tokens)
    if cap < 16:
        raise RagError("the question is too long for the fid reader's context window; shorten it")
    newline = tokenizer("\n", add_special_tokens=False)["input_ids"]
    passages = []
    for n, hit in enumerate(hits, 1):
        ids = tokenizer(passage_block(n, hit, texts[n - 1] if texts else None), add_special_tokens=False)["input_ids"]
        passages.append(ids if len(ids) <= cap else ids[: cap - len(newline)] + newline)
    lengths = [len(ids) for ids in passages]
    longest = max(lengths)
    total = p_len + sum(lengths)
    blocked = torch.finfo(torch.float32).min
    # All passages packed in one sequence after the cached prefix, each from position p_len: a token
    # sees the prefix and the earlier tokens of its own passage only. No padding, no copies of the prefix.
    owner = torch.cat([torch.full((n,), i) for i, n in enumerate(lengths)])
    inside = torch.cat([torch.arange(n) for n in lengths])
    visible = (owner[:, None] == owner[None, :]) & (inside[:, None] >= inside[None, :])
    mask = torch.zeros(1, 1, total - p_len, total)
    mask[0, 0, :, p_len:] = torch.where(visible, 0.0, blocked)
    with generator.prefill():
        fused = body(input_ids=torch.tensor([sum(passages, [])]), position_ids=(p_len + inside)[None],
                     cache=shared, attention_mask={"full_attention": mask, "sliding_attention": mask},
                     use_cache=True).cache
    del mask, visible
    # The question sees every cached token and itself causally; same mask for both layer kinds.
    mask = torch.zeros(1, 1, s_len, total + s_len)
    mask[0, 0, :, total:] = torch.triu(torch.full((s_len, s_len), blocked), diagonal=1)
    position = p_len + longest
    out = body(input_ids=suffix, position_ids=torch.arange(position, position + s_len)[None],
               cache=fused, attention_mask={"full_attention": mask, "sliding_attention": mask},
               use_cache=True)
    position += s_len

    def step(token: int):
        nonlocal out, position
        out = body(input_ids=torch.tensor([[token]]), position_ids=torch.tensor([[position]]),
                   cache=out.cache,
                   attention_mask={"full_attention": None, "sliding_attention": None}, use_cache=True)
        position += 1
        return out.last_hidden_state[:, -1]

    return out.last_hidden_state[:, -1], step


READERS: dict[str, Callable[..., Reading]] = {"span": read_with_span, "extract": read_extractive,
                                             "prompt": read_with_prompt, "fid": read_with_fid}
NEEDS_GENERATOR = {"prompt", "fid"}
DEFAULT_READER = "span"


def get_reader(name: str) -> Callable[..., Reading]:
    if name not in READERS:
        raise RagError(f"unknown reader {name!r}: use {', '.join(READERS)}")
    return READERS[name]
