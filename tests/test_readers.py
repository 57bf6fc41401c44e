"""Readers on hand-made hits: the real default model for both readers, and a tiny randomly
initialised T5 built here for the encoder-decoder form of fusion-in-decoder."""
from __future__ import annotations

import pytest

from rag.errors import RagError
from rag.generators import cut_at_stop
from rag.readers import (
    EXAMPLE, INSTRUCTION, STOP, answer_pieces, get_reader, ground, parse_answer, passage_block, question_block,
    read_with_fid, read_with_prompt,
)
from rag.records import Document, Hit, Passage

FACT = ("The Zorbanian capital city Quillport was founded in 1742 by the cartographer Ilsa Marrow. "
        "It is known for its blue salt mines.")
DISTRACTORS = [
    ("Lists", "Python lists are mutable sequences, typically used to store collections of homogeneous items."),
    ("Tea", "Green tea is made from leaves that have not undergone withering and oxidation. It originated in China."),
]


def make_hits(texts: list[tuple[str, str]]) -> list[Hit]:
    return [Hit(passage=Passage(id=10 + i, document_id=i, order=0, text=text, start=0, end=len(text)),
                document=Document(id=i, path=f"/docs/{title.lower()}.txt", title=title), score=1.0, rank=i + 1)
            for i, (title, text) in enumerate(texts)]


def test_parse_answer_reads_the_opening_and_inline_citations():
    reading = parse_answer("2]): Ilsa Marrow founded it [3].", 3)
    assert reading.text == "Ilsa Marrow founded it." and reading.cited == [2, 3]
    assert parse_answer("9]): out of range", 3).cited == []
    assert "".join(answer_pieces(iter(["2", "]): Ilsa", " Marrow"]))) == "Ilsa Marrow"


def test_ground_repairs_a_wrong_citation_and_drops_unsupported_ones():
    hits = make_hits([DISTRACTORS[0], ("Quillport", FACT), DISTRACTORS[1]])
    assert ground(parse_answer("1]): The cartographer Ilsa Marrow.", 3), hits).cited == [2]
    assert ground(parse_answer("2]): Ilsa Marrow.", 3), hits).cited == [2]
    assert ground(parse_answer("1]): Napoleon Bonaparte in Corsica.", 3), hits).cited == []


def test_unknown_reader_is_a_clear_error():
    with pytest.raises(RagError, match="unknown reader"):
        get_reader("telepathy")


@pytest.mark.parametrize("reader", ["prompt", "fid"])
@pytest.mark.parametrize("position", [0, 2])
def test_reader_answers_from_the_passage_holding_the_fact(generator, reader, position):
    texts = list(DISTRACTORS)
    texts.insert(position, ("Quillport", FACT))
    hits = make_hits(texts)
    streamed: list[str] = []
    reading = get_reader(reader)("Who founded Quillport?", hits, generator, on_token=streamed.append)
    assert "Marrow" in reading.text
    assert reading.cited == [position + 1]
    assert "Marrow" in "".join(streamed)


def test_decoder_fid_with_one_passage_equals_plain_decoding(generator):
    """With one window, parallel context windows must reduce to ordinary left-to-right decoding."""
    import torch

    hits = make_hits([("Quillport", FACT)])
    question = "What is Quillport known for?"
    reading = read_with_fid(question, hits, generator, max_new_tokens=16)
    tok = generator.tokenizer
    ids = (tok(f"{INSTRUCTION}\n\n{EXAMPLE}Passages:\n")["input_ids"]
           + tok(passage_block(1, hits[0]), add_special_tokens=False)["input_ids"]
           + tok(question_block(question), add_special_tokens=False)["input_ids"])
    with torch.inference_mode():
        out = generator.model.generate(torch.tensor([ids]), max_new_tokens=16, do_sample=False,
                                       pad_token_id=tok.pad_token_id)
    reference = tok.decode(out[0, len(ids):], skip_special_tokens=True)
    assert reading.text == parse_answer(cut_at_stop(reference, STOP)[0], 1).text
    assert "salt" in reading.text


def test_decoder_fid_caps_long_passages_to_the_sliding_window(generator):
    long_fact = FACT + " " + " ".join(["The harbour trades in wool, tin and timber."] * 120)
    hits = make_hits([("Quillport", long_fact)] + [(t, x + " " + x * 40) for t, x in DISTRACTORS])
    reading = read_with_fid("Who founded Quillport?", hits, generator, max_new_tokens=32)
    assert "Marrow" in reading.text and reading.cited == [1]


@pytest.fixture(scope="module")
def tiny_t5(tmp_path_factory):
    """A 2-layer T5 with random weights and a word-level tokenizer over the test passages."""
    from tokenizers import Tokenizer, models, pre_tokenizers
    from transformers import PreTrainedTokenizerFast, T5Config, T5ForConditionalGeneration

    from rag.generators import load_generator

    words = sorted({w for _, text in DISTRACTORS + [("Quillport", FACT)] for w in (text + " " + _).split()}
                   | {"question:", "context:", "Who", "founded", "Quillport?", "[1]", "[2]", "[3]"})
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


def test_encoder_decoder_fid_with_one_passage_equals_plain_seq2seq(tiny_t5):
    assert tiny_t5.is_encoder_decoder
    hits = make_hits([("Quillport", FACT)])
    reading = read_with_fid("Who founded Quillport?", hits, tiny_t5, max_new_tokens=8)
    plain = tiny_t5.generate([f"question: Who founded Quillport? context: {passage_block(1, hits[0]).strip()}"],
                             max_new_tokens=8, stop=STOP)[0]
    assert reading.text == parse_answer(plain, 1).text
    assert reading.passages_used == 1


def test_encoder_decoder_fid_reads_all_passages_together(tiny_t5):
    hits = make_hits([DISTRACTORS[0], ("Quillport", FACT), DISTRACTORS[1]])
    first = read_with_fid("Who founded Quillport?", hits, tiny_t5, max_new_tokens=8)
    assert first.passages_used == 3
    assert read_with_fid("Who founded Quillport?", hits, tiny_t5, max_new_tokens=8) == first
    # The prompt reader runs on a seq2seq model too.
    assert read_with_prompt("Who founded Quillport?", hits, tiny_t5, max_new_tokens=8).passages_used == 3


def test_fid_needs_a_local_model():
    class Remote:
        name = "openai:m"

    with pytest.raises(RagError, match="needs a local model"):
        read_with_fid("q", make_hits([("Quillport", FACT)]), Remote())
