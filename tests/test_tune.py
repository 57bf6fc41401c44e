"""`rag tune reader`: training on a small hand-written fixture, resume after a kill, and bad data refused.

Real training (the packaged MiniLM, peft LoRA), real stores in tmp_path; the fixture is small enough
that a run takes seconds on two cores.
"""
from __future__ import annotations

import hashlib
import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from click.testing import CliRunner

from rag.cli import main
from rag.errors import RagError
from rag.tune.qa_data import load_qa, split_groups
from rag.tune.reader import TuneConfig, train_reader

from qa_fixture import PARAGRAPHS, QUESTIONS, write_fixture

FAST = dict(epochs=12, learning_rate=3e-3, batch_size=8, rank=8, alpha=16, negatives=0.0, max_length=96,
            stride=32, validation_share=0.0, checkpoint_steps=5)


@pytest.fixture(scope="module")
def fixture_file(tmp_path_factory) -> Path:
    return write_fixture(tmp_path_factory.mktemp("qa") / "fixture.json")


def test_the_fixture_loads_with_every_answer_where_it_says(fixture_file):
    data = load_qa(fixture_file)
    assert len(data.examples) == len(QUESTIONS) and data.groups() == list(PARAGRAPHS)
    for e in data.examples:
        text, start = e.answers[0]
        assert e.context[start:start + len(text)] == text


def test_the_split_keeps_each_article_on_one_side(fixture_file):
    data = load_qa(fixture_file)
    train, validation = split_groups(data, 0.3, seed=1)
    assert validation and train and not set(train) & set(validation)
    assert set(train) | set(validation) == set(PARAGRAPHS)
    assert split_groups(data, 0.3, seed=1) == (train, validation)  # the same split on every run


def test_tuning_on_the_fixture_answers_its_questions_through_the_library(fixture_file, tmp_path, encoder):
    """The CLI trains, installs the reader in the data directory and records it; `rag ask` then uses it."""
    from rag.ingest.pipeline import ingest_documents
    from rag.library import open_library
    from rag.records import SourceDocument

    data_dir = tmp_path / "data"
    library = open_library(data_dir, encoder=encoder)
    ingest_documents(library, [SourceDocument(uri=f"notes/{t}.md", title=t, text=x) for t, x in PARAGRAPHS.items()])
    library.close()
    args = ["tune", "reader", str(fixture_file), "--data", str(data_dir), "--validation-share", "0", "--epochs", "12",
            "--learning-rate", "3e-3", "--batch-size", "8", "--rank", "8", "--negatives", "0", "--name", "fixture",
            "--json"]
    result = CliRunner().invoke(main, args)
    assert result.exit_code == 0, result.output
    assert result.stdout.lstrip().startswith("{"), result.stdout[:500]
    done = json.loads(result.stdout)
    manifest = done["manifest"]
    assert manifest["name"] == "fixture" and manifest["train_groups"] == list(PARAGRAPHS)
    assert manifest["data"]["sha256"] == hashlib.sha256(fixture_file.read_bytes()).hexdigest()
    assert manifest["recipe"]["epochs"] == 12 and manifest["recipe"]["rank"] == 8
    assert Path(done["loss_plot"]).stat().st_size > 0
    losses = [loss for _, loss in manifest.get("losses") or json.loads(
        (data_dir / "models" / "span-reader" / "manifest.json").read_text())["losses"]]
    assert losses[-1] < losses[0] / 2  # it learned

    stats = CliRunner().invoke(main, ["stats", "--json", "--data", str(data_dir)])
    reader = json.loads(stats.output)["reader"]
    assert reader["source"] == "tuned" and reader["name"] == "fixture"

    asked = CliRunner().invoke(main, ["ask", "Who designed the lighthouse?", "--json", "--data", str(data_dir)])
    assert asked.exit_code == 0, asked.output
    answer = json.loads(asked.output)
    assert "Tomas Brandt" in answer["answer"]
    sentence = answer["sentence"]
    assert sentence["text"][sentence["answer_start"]:sentence["answer_end"]] in answer["answer"]
    assert sentence["text"].startswith("Its lighthouse")


def _state(checkpoint: Path) -> int:
    import torch

    return torch.load(checkpoint / "state.pt", weights_only=False)["step"] if (checkpoint / "state.pt").is_file() else 0


def test_a_killed_run_resumes_from_its_checkpoint(fixture_file, tmp_path):
    out = tmp_path / "run"
    script = (f"import sys; from pathlib import Path; from rag.tune.qa_data import load_qa; "
              f"from rag.tune.reader import TuneConfig, train_reader; d = load_qa({str(fixture_file)!r}); "
              f"train_reader(d, Path({str(out)!r}), TuneConfig(**{dict(FAST, epochs=30)!r}), d.groups(), [], bar=False)")
    process = subprocess.Popen([sys.executable, "-c", script], env={**os.environ, "OMP_NUM_THREADS": "1"})
    try:
        deadline = time.monotonic() + 600
        while _state(out / "checkpoint") < 10 and process.poll() is None and time.monotonic() < deadline:
            time.sleep(0.5)
        assert process.poll() is None, "the run ended before it could be killed"
        process.send_signal(signal.SIGKILL)
        process.wait()
    finally:
        if process.poll() is None:
            process.kill()
    stopped_at = _state(out / "checkpoint")
    assert stopped_at >= 10 and not (out / "manifest.json").exists()

    data = load_qa(fixture_file)
    config = TuneConfig(**dict(FAST, epochs=30))
    result = train_reader(data, out, config, data.groups(), [], bar=False)
    total = 30 * 4  # 25 questions -> 25 windows -> 4 batches of 8 per epoch
    assert result.resumed_from == stopped_at
    assert result.losses[-1][0] == total
    assert [s for s, _ in result.losses] == sorted({s for s, _ in result.losses})  # one history, no restart
    assert (out / "manifest.json").is_file()


def test_a_checkpoint_of_another_recipe_is_not_resumed(fixture_file, tmp_path):
    data = load_qa(fixture_file)
    out = tmp_path / "run"
    train_reader(data, out, TuneConfig(**dict(FAST, epochs=1)), data.groups(), [], bar=False)
    again = train_reader(data, out, TuneConfig(**dict(FAST, epochs=1, seed=5)), data.groups(), [], bar=False)
    assert again.resumed_from == 0


BAD = [
    ("missing.jsonl", '{"question": "Who?", "answers": ["Nobody"], "context": "Somebody was here."}\n',
     "missing.jsonl:1: answers[0]: the answer 'Nobody' is not in its context"),
    ("empty.jsonl", '{"question": "Who?", "answers": ["Ilsa"], "context": "Ilsa was here."}\n'
                    '{"question": "  ", "answers": ["Ilsa"], "context": "Ilsa was here."}\n',
     "empty.jsonl:2: an empty question"),
    ("moved.json", json.dumps({"data": [{"title": "T", "paragraphs": [{"context": "Ilsa was here.", "qas": [
        {"id": "a", "question": "Who was here?", "answers": [{"text": "Ilsa", "answer_start": 3}]}]}]}]}),
     "data[0].paragraphs[0].qas[0].answers[0]: the answer 'Ilsa' is not at answer_start 3 of its context (it is at 0)"),
    ("table.csv", "question,answer\nWho?,Ilsa\n", "unknown format"),
    ("nodata.json", json.dumps({"version": "1.1", "articles": []}), "unknown format: SQuAD JSON needs a top-level"),
    ("nocontext.jsonl", '{"question": "Who?", "answers": ["Ilsa"]}\n',
     "nocontext.jsonl:1: a record needs \"context\" text or a \"passage_id\" of the store"),
    ("nopassage.jsonl", '{"question": "Who?", "answers": ["Ilsa"], "passage_id": 99999}\n',
     "nopassage.jsonl:1: passage 99999 is not in the store"),
]


@pytest.mark.parametrize("name,content,message", BAD, ids=[b[0] for b in BAD])
def test_bad_data_is_named_and_leaves_the_store_untouched(name, content, message, tmp_path, notes_data_dir):
    data_dir = notes_data_dir(f"tune-bad-{name.replace('.', '-')}", {"a.txt": "Ilsa Marrow founded Quillport."})
    before = hashlib.sha256((data_dir / "rag.db").read_bytes()).hexdigest()
    bad = tmp_path / name
    bad.write_text(content, encoding="utf-8")
    result = CliRunner().invoke(main, ["tune", "reader", str(bad), "--data", str(data_dir)])
    assert result.exit_code == 1
    assert message in result.output and "Traceback" not in result.output
    assert hashlib.sha256((data_dir / "rag.db").read_bytes()).hexdigest() == before
    assert not (data_dir / "models" / "span-reader").exists() and not (data_dir / "tune").exists()


def test_bad_data_does_not_create_a_store(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "", "answers": ["x"], "context": "x"}\n', encoding="utf-8")
    result = CliRunner().invoke(main, ["tune", "reader", str(bad), "--data", str(tmp_path / "data")])
    assert result.exit_code == 1 and "an empty question" in result.output
    assert not (tmp_path / "data").exists()


def test_a_single_article_cannot_be_split(tmp_path):
    bad = tmp_path / "q.jsonl"
    bad.write_text('{"question": "Who?", "answers": ["x"], "context": "x y", "document": "one"}\n', encoding="utf-8")
    with pytest.raises(RagError, match="one article/document only"):
        split_groups(load_qa(bad), 0.2)
