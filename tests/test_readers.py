"""Readers on hand-made hits: the real encoder and the real default generator, and a tiny randomly
initialised T5 built here (a generator whose free-written answers the passages do not support)."""
from __future__ import annotations

import re

import pytest

from rag.answer.copying import CopyConstraint
from rag.answer.evidence import answer_type, rank_sentences, split_sentences
from rag.errors import RagError
from rag.answer.readers import (
    READERS, _answer_block, evidence_windows, examples, fid_start, get_reader, passage_block, read_extractive,
    read_with_fid, read_with_prompt, supported,
)
from rag.records import Document, Hit, Passage

FACT = ("The Zorbanian capital city Quillport was founded in 1742 by the cartographer Ilsa Marrow. "
        "It is known for its blue salt mines. About 48,000 people live there.")
DISTRACTORS = [
    ("Lists", "Python lists are mutable sequences, typically used to store collections of homogeneous items."),
    ("Tea", "Green tea is made from leaves that have not undergone withering and oxidation. It originated in China."),
]
QUESTIONS = [("Who founded Quillport?", "Ilsa Marrow"), ("When was Quillport founded?", "1742"),
             ("How many people live in Quillport?", "48,000")]


def make_hits(texts: list[tuple[str, str]]) -> list[Hit]:
    return [Hit(passage=Passage(id=10 + i, document_id=i, order=0, text=text, start=0, end=len(text)),
                document=Document(id=i, path=f"/docs/{title.lower()}.txt", title=title), score=1.0, rank=i + 1)
            for i, (title, text) in enumerate(texts)]


def test_sentences_keep_abbreviations_and_decimals_together():
    text = 'He said "Go." Then 3.5 kg, e.g. the box. (Really!) Yes?'
    assert [text[a:b] for a, b in split_sentences(text)] == ['He said "Go."', "Then 3.5 kg, e.g. the box.",
                                                             "(Really!)", "Yes?"]


@pytest.mark.parametrize("question, kind", [
    ("When was it built?", "date"), ("The church was built when?", "date"), ("In what year did it end?", "date"),
    ("How many people live there?", "number"), ("Who founded it?", "person"), ("In which city is it?", "place"),
    ("What does it sell?", "other"),
])
def test_answer_types(question, kind):
    assert answer_type(question) == kind


def test_evidence_ranks_the_sentence_that_answers_first(encoder):
    hits = make_hits(DISTRACTORS + [("Quillport", FACT)])
    best = rank_sentences("Who founded Quillport?", hits, encoder)[0]
    assert best.n == 3 and "Ilsa Marrow" in best.text
    assert hits[2].passage.text[best.start:best.end] == best.text


def test_evidence_counts_the_passages_own_score(encoder):
    hits = make_hits([("Quillport", "Quillport is known for its blue salt mines."),
                      ("Harbours", "Many harbours are known for their salt trade.")])
    question = "What is Quillport known for?"
    assert rank_sentences(question, hits, encoder)[0].n == 1
    # A passage far from the question (its cosine, from rag.answer.pipeline.relevance) pulls its sentences down.
    assert rank_sentences(question, hits, encoder, passage_scores=[-1.0, 0.9])[0].n == 2


def test_copy_constraint_only_continues_a_source():
    constraint = CopyConstraint([[5, 6, 7], [6, 8]])
    assert set(constraint.allowed()) == {5, 6, 7, 8}
    constraint.advance(constraint.allowed()[6])
    assert set(constraint.allowed()) == {7, 8}  # 6 is followed by 7 in the first source, 8 in the second
    constraint.advance(constraint.allowed()[8])
    assert constraint.allowed() == {} and constraint.source() == 1


@pytest.mark.parametrize("question, expected", QUESTIONS)
def test_extract_reader_answers_with_a_short_span_without_a_generator(encoder, question, expected):
    hits = make_hits([DISTRACTORS[0], ("Quillport", FACT), DISTRACTORS[1]])
    streamed: list[str] = []
    reading = read_extractive(question, hits, None, encoder=encoder, on_token=streamed.append)
    assert reading.text == expected and reading.cited == [2]
    assert "".join(streamed) == expected and supported(reading.text, FACT)


@pytest.mark.parametrize("reader", ["prompt", "fid"])
@pytest.mark.parametrize("position", [0, 2])
def test_generator_readers_copy_the_answer_from_the_passage_that_holds_it(generator, encoder, reader, position):
    texts = list(DISTRACTORS)
    texts.insert(position, ("Quillport", FACT))
    hits = make_hits(texts)
    streamed: list[str] = []
    reading = get_reader(reader)("Who founded Quillport?", hits, generator, encoder=encoder,
                                 on_token=streamed.append)
    assert "Marrow" in reading.text and reading.cited == [position + 1]
    assert reading.text in " ".join(FACT.split()) and reading.method == "copy"
    assert "Marrow" in "".join(streamed)


SETS = ("Sets", "Curly braces or the set() function can be used to create sets. Note: to create an empty "
        "set you have to use set(), not {}; the latter creates an empty dictionary.")


def test_code_words_may_repeat_the_question():
    from rag.answer.evidence import code_end, is_code

    text = "use set(), not {}; call os.path or max_size or set"
    at = {w: text.index(w) for w in ("set", "path", "max_size")}
    assert code_end(text, at["set"] + 3) == at["set"] + 5
    assert is_code(text, at["set"], at["set"] + 3) and is_code(text, at["path"], at["path"] + 4)
    assert is_code(text, at["max_size"], at["max_size"] + 8) and not is_code(text, len(text) - 3, len(text))


@pytest.mark.parametrize("reader", ["extract", "prompt", "fid"])
def test_an_answer_written_as_code_keeps_its_parentheses(generator, encoder, reader):
    """"How do you create an empty set?": "set()" repeats the question's word, but as code it is the answer."""
    hits = make_hits([SETS] + DISTRACTORS)
    reading = get_reader(reader)("How do you create an empty set?", hits, generator, encoder=encoder)
    assert "set()" in reading.text and reading.cited == [1], reading


@pytest.mark.parametrize("reader", ["prompt", "fid"])
def test_every_generated_answer_is_a_span_of_a_passage(generator, encoder, reader):
    """Constrained decoding: whatever the question, the answer is text of the passage it cites."""
    hits = make_hits([("Quillport", FACT)] + DISTRACTORS)
    for question in ["What is Quillport known for?", "Where did green tea originate?", "What colour is the sky?",
                     "Who invented the telephone?"]:
        reading = get_reader(reader)(question, hits, generator, encoder=encoder)
        if reading.text:
            cited = hits[reading.cited[0] - 1].passage.text
            assert reading.text in " ".join(cited.split()), (question, reading)


def test_decoder_fid_with_one_passage_equals_plain_decoding(generator):
    """With one window, parallel context windows must reduce to ordinary left-to-right reading."""
    import torch

    hits = make_hits([("Quillport", FACT)])
    question = "What is Quillport known for?"
    tok = generator.tokenizer
    ids = (tok(examples(question_first=False))["input_ids"] + tok(passage_block(1, hits[0]), add_special_tokens=False)["input_ids"]
           + tok(_answer_block(question), add_special_tokens=False)["input_ids"])
    with generator.session():
        hidden, step = fid_start(question, hits, generator)
        plain = generator.model.model(input_ids=torch.tensor([ids]), use_cache=True)
        assert torch.allclose(hidden, plain.last_hidden_state[:, -1], atol=1e-3)
        token = tok(" blue", add_special_tokens=False)["input_ids"][0]
        after = generator.model.model(input_ids=torch.tensor([[token]]), cache=plain.cache)
        assert torch.allclose(step(token), after.last_hidden_state[:, -1], atol=1e-3)


def test_decoder_fid_passages_do_not_see_each_other(generator):
    """Packed in one sequence, each passage is still read alone: their order cannot change the reading."""
    import torch

    hits = make_hits([("Quillport", FACT)] + DISTRACTORS)
    question = "What is Quillport known for?"
    with generator.session():
        forward, _ = fid_start(question, hits, generator)
        backward, _ = fid_start(question, hits[::-1], generator)
    assert torch.allclose(forward, backward, atol=1e-3)


def test_decoder_fid_caps_long_passages_to_the_sliding_window(generator, encoder):
    long_fact = FACT + " " + " ".join(["The harbour trades in wool, tin and timber."] * 120)
    hits = make_hits([("Quillport", long_fact)] + [(t, x + " " + x * 40) for t, x in DISTRACTORS])
    reading = read_with_fid("Who founded Quillport?", hits, generator, encoder=encoder, window_sentences=0)
    assert "Marrow" in reading.text and reading.cited == [1]


def test_fid_reads_each_passages_best_sentences_in_their_order(encoder):
    hits = make_hits([("Quillport", FACT)] + DISTRACTORS)
    ranked = rank_sentences("Who founded Quillport, and when?", hits, encoder)
    windows = evidence_windows(ranked, hits, 2)
    assert len(windows) == len(hits)
    for n, (hit, window) in enumerate(zip(hits, windows), 1):
        best = [s for s in ranked if s.n == n][:2]
        assert window == " ".join(" ".join(s.text.split()) for s in sorted(best, key=lambda s: s.start))
    assert "founded in 1742" in windows[0]
    assert evidence_windows([], hits, 1) == [" ".join(h.passage.text.split()) for h in hits]  # nothing ranked


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A 2-layer T5 with random weights and a word-level tokenizer over the test passages."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from rag.models.generators import load_generator

    words = sorted({w for _, text in DISTRACTORS + [("Quillport", FACT)] for w in (text + " " + _).split()}
                   | {"question:", "context:", "Context:", "Question:", "Answer:", "Who", "founded", "Quillport?"})
    vocab = {"<pad>": 0, "</s>": 1, "<unk>": 2, **{w: i + 3 for i, w in enumerate(words)}}
    core = Tokenizer(models.WordLevel(vocab=vocab, unk_token="<unk>"))
    core.pre_tokenizer = pre_tokenizers.WhitespaceSplit()
    tokenizer = PreTrainedTokenizerFast(tokenizer_object=core, pad_token="<pad>", eos_token="</s>", unk_token="<unk>")
    config = T5Config(vocab_size=len(vocab), d_model=32, d_ff=64, d_kv=8, num_layers=2, num_decoder_layers=2,
                      num_heads=4, pad_token_id=0, eos_token_id=1, decoder_start_token_id=0)
    import torch

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("tiny-t5")
    T5ForConditionalGeneration(config).save_pretrained(str(path))
    tokenizer.save_pretrained(str(path))
    return load_generator(str(path))


@pytest.mark.parametrize("read", [read_with_prompt, read_with_fid])
def test_free_written_answers_are_checked_and_fall_back_to_the_extract_reader(tiny_t5, encoder, read):
    """A model that cannot be constrained (seq2seq here; remote servers alike) writes what it likes:
    an answer no passage supports never reaches the user; the extractive answer does."""
    assert tiny_t5.is_encoder_decoder
    hits = make_hits([DISTRACTORS[0], ("Quillport", FACT), DISTRACTORS[1]])
    reading = read("Who founded Quillport?", hits, tiny_t5, encoder=encoder, max_new_tokens=8)
    assert reading.method in ("checked", "fallback")
    assert reading.text and supported(reading.text, hits[reading.cited[0] - 1].passage.text)
    if reading.method == "fallback":
        assert reading.text == "Ilsa Marrow" and reading.cited == [2]


def test_reader_registry_and_errors(encoder):
    assert set(READERS) == {"span", "extract", "prompt", "fid"}
    with pytest.raises(RagError, match="unknown reader"):
        get_reader("telepathy")

    class Remote:
        name = "openai:m"

    with pytest.raises(RagError, match="needs a local model"):
        read_with_fid("q", make_hits([("Quillport", FACT)]), Remote(), encoder=encoder)


@pytest.mark.parametrize("reader", [read_with_prompt, read_with_fid])
def test_an_answer_cut_by_the_token_limit_ends_at_a_whole_word(generator, encoder, reader):
    # Gemma writes numbers a digit a token: "2", "5", " May", " ", "1", "8", "9", "5".
    text = "The Tamar suspension bridge opened to traffic on 25 May 1895 after 12,000 workers finished it."
    hits = make_hits([("Tamar bridge", text)])
    words = set(re.findall(r"\w+", text))
    for limit in range(1, 8):
        reading = reader("When did the Tamar bridge open?", hits, generator, encoder, max_new_tokens=limit)
        assert set(re.findall(r"\w+", reading.text)) <= words, (limit, reading.text)  # never "2" of "25"


def test_streamed_pieces_are_the_answer(generator, encoder):
    hits = make_hits([("Tamar bridge", "The Tamar suspension bridge opened to traffic on 25 May 1895.")])
    for limit in (2, 4, 16):
        pieces: list[str] = []
        reading = read_with_prompt("When did the Tamar bridge open?", hits, generator, encoder, max_new_tokens=limit,
                                   on_token=pieces.append)
        assert "".join(pieces).strip() == reading.text, limit


def test_an_answer_may_not_end_inside_a_number(generator):
    from rag.answer.readers import copy_sources

    tokenizer = generator.tokenizer
    text = "It cost 1,500 dollars in 3.5 days."
    [source], _, stop_prior = copy_sources("How much did it cost?", [text], tokenizer)
    pieces = [tokenizer.decode(source[:j]) for j in range(len(source) + 1)]
    may_end = {piece.strip() for j, piece in enumerate(pieces) if stop_prior([(0, j)]) > float("-inf")}
    assert {"It cost 1,500", "It cost 1,500 dollars in 3.5", "It cost 1,500 dollars in 3.5 days."} <= may_end
    assert not {"It cost 1", "It cost 1,", "It cost 1,5", "It cost 1,500 dollars in 3"} & may_end
