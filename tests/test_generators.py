"""Generators: stop sequences, max tokens, seeds and streaming on the real local model, and the
OpenAI-compatible engine against a real HTTP server on loopback."""
from __future__ import annotations

import json
import socket
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer

import pytest

from rag.errors import RagError
from rag.models.generators import (GeneratorError, OpenAIGenerator, cut_at_stop, load_generator, pick_tokens,
                            stream_until_stop)


# --- pure helpers ---------------------------------------------------------------------------------

def test_cut_at_stop_takes_the_earliest_stop_sequence():
    assert cut_at_stop("Paris.\n\nQuestion: next", ["Question:", "\n\n"]) == ("Paris.", True)
    assert cut_at_stop("no stop here", ["\n\n"]) == ("no stop here", False)
    assert cut_at_stop("text", None) == ("text", False)


def test_streaming_never_shows_a_stop_sequence_split_across_pieces():
    pieces = ["Par", "is.\n", "\nQues", "tion: more"]
    assert "".join(stream_until_stop(iter(pieces), ["\n\n"])) == "Paris."
    assert "".join(stream_until_stop(iter(["a\n", "b"]), ["\n\n"])) == "a\nb"


# --- the real local model -------------------------------------------------------------------------

COUNTING = "Count: 1, 2, 3, 4, 5,"


@pytest.mark.parametrize("spread", [0.5, 3.0])  # too flat for the shortlist, and peaked
def test_nucleus_sampling_only_draws_from_the_nucleus(spread):
    import torch

    logits = torch.randn(3, 50_000, generator=torch.Generator().manual_seed(0)) * spread
    probs = torch.softmax(logits / 0.7, dim=-1)
    ranked, order = torch.sort(probs, dim=-1, descending=True)
    sizes = ((ranked.cumsum(-1) - ranked) <= 0.95).sum(-1)  # the nucleus of each row, by a full sort
    nucleus = [set(order[r, :sizes[r]].tolist()) for r in range(3)]
    assert all((size > 1024) == (spread < 1) for size in sizes.tolist())  # both paths are taken
    sampler = torch.Generator().manual_seed(1)
    draws = [pick_tokens(logits, 0.7, sampler).tolist() for _ in range(200)]
    for r in range(3):
        seen = {d[r] for d in draws}
        assert seen <= nucleus[r] and len(seen) > 1
    assert pick_tokens(logits, 0.0).tolist() == logits.argmax(-1).tolist()


def test_local_greedy_is_deterministic_and_stops_before_the_stop_sequence(generator):
    free = generator.generate([COUNTING], max_new_tokens=12)[0]
    assert "8" in free  # the base model keeps counting
    again = generator.generate([COUNTING], max_new_tokens=12)[0]
    assert again == free
    stopped = generator.generate([COUNTING], max_new_tokens=12, stop=[" 8"])[0]
    assert stopped == free[: free.index(" 8")]
    assert "8" not in stopped


def test_local_max_new_tokens_bounds_the_output(generator):
    out = generator.generate([COUNTING], max_new_tokens=3)[0]
    assert 0 < generator.count_tokens(out) <= 3


def test_local_batch_matches_single_prompts(generator):
    prompts = [COUNTING, "The capital of France is"]
    batch = generator.generate(prompts, max_new_tokens=6)
    assert batch == [generator.generate([p], max_new_tokens=6)[0] for p in prompts]


def test_local_sampling_follows_the_seed(generator):
    prompt = "Once upon a time"
    first = generator.generate([prompt], max_new_tokens=8, temperature=1.0, seed=7)
    assert generator.generate([prompt], max_new_tokens=8, temperature=1.0, seed=7) == first
    others = {generator.generate([prompt], max_new_tokens=8, temperature=1.0, seed=s)[0] for s in (1, 2, 3)}
    assert len(others | {first[0]}) > 1


def test_sampling_head_scores_the_nucleus_as_float32_does(generator):
    """Sampled steps score the vocabulary with int8 weights and the shortlist again in float32: the
    distribution sampling reads is float32's (the int8 scores alone are not: they move the argmax)."""
    import torch

    head = generator.sampling_head()
    assert head is not None and generator.sampling_head() is head  # made once
    batch = generator.tokenizer([COUNTING, "The keeper of the lighthouse trimmed the"], return_tensors="pt",
                                padding=True)
    with torch.inference_mode():
        hidden = generator.model.base_model(**batch).last_hidden_state[:, -1]
        exact = generator.model.get_output_embeddings()(hidden)
        fast = head(hidden)
    assert fast.shape == exact.shape
    top = torch.topk(exact, 50, dim=-1)
    assert torch.equal(torch.topk(fast, 50, dim=-1).indices, top.indices)
    assert torch.allclose(fast.gather(-1, top.indices), top.values, atol=1e-3)
    p, q = torch.log_softmax(exact / 0.7, -1), torch.log_softmax(fast / 0.7, -1)
    assert float((p.exp() * (p - q)).sum(-1).max()) < 1e-3  # KL in nats


def test_local_stream_yields_the_same_text_in_pieces(generator):
    pieces = list(generator.stream(COUNTING, max_new_tokens=12, stop=[" 8"]))
    assert len(pieces) > 1
    assert "".join(pieces) == generator.generate([COUNTING], max_new_tokens=12, stop=[" 8"])[0]


def test_load_generator_is_cached_per_process(generator):
    assert load_generator("local") is generator


def test_a_missing_model_directory_or_unknown_engine_is_a_clear_error(tmp_path):
    with pytest.raises(RagError, match="not found"):
        load_generator(str(tmp_path / "no-such-model"))
    with pytest.raises(RagError, match="unknown generator"):
        load_generator("gpt-17")
    (tmp_path / "empty").mkdir()
    with pytest.raises(RagError, match="cannot load"):
        load_generator(str(tmp_path / "empty"))


# --- an OpenAI-compatible server on loopback -------------------------------------------------------

class FakeCompletionServer(ThreadingHTTPServer):
    """A small real HTTP server speaking the OpenAI completions API with deterministic text."""

    daemon_threads = True

    def __init__(self):
        super().__init__(("127.0.0.1", 0), CompletionHandler)
        self.requests: list[dict] = []
        self.failures_before_success = 0
        self.models = ["tiny-model"]

    @property
    def url(self) -> str:
        return f"http://127.0.0.1:{self.server_address[1]}/v1"


class CompletionHandler(BaseHTTPRequestHandler):
    def log_message(self, *args):
        pass

    def _json(self, status: int, body: dict) -> None:
        data = json.dumps(body).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(data)))
        self.end_headers()
        self.wfile.write(data)

    def do_GET(self):
        if self.path == "/v1/models":
            self._json(200, {"object": "list", "data": [{"id": m, "object": "model"} for m in self.server.models]})
        else:
            self._json(404, {"error": {"message": "no such route"}})

    def do_POST(self):
        body = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        body["_path"] = self.path
        body["_auth"] = self.headers.get("Authorization")
        self.server.requests.append(body)
        if self.server.failures_before_success > 0:
            self.server.failures_before_success -= 1
            self._json(503, {"error": {"message": "busy"}})
            return
        if body.get("model") not in self.server.models:
            self._json(404, {"error": {"message": f"model {body.get('model')} not found"}})
            return
        chat = self.path == "/v1/chat/completions"
        prompt = body["messages"][-1]["content"] if chat else body["prompt"]
        # Deterministic: depends on the prompt and the seed; runs on past the answer like a base model.
        words = f"Echo {prompt.split()[-1]} seed {body.get('seed')} done.\n\nQuestion: and more text".split(" ")
        words = words[: body.get("max_tokens", 16)]
        if body.get("stream"):
            self.send_response(200)
            self.send_header("Content-Type", "text/event-stream")
            self.end_headers()
            for i, word in enumerate(words):
                piece = word if i == 0 else " " + word
                choice = {"delta": {"content": piece}} if chat else {"text": piece}
                self.wfile.write(f"data: {json.dumps({'choices': [choice]})}\n\n".encode())
                self.wfile.flush()
            self.wfile.write(b"data: [DONE]\n\n")
            return
        text = " ".join(words)
        choice = {"message": {"role": "assistant", "content": text}} if chat else {"text": text}
        self._json(200, {"choices": [choice]})


@pytest.fixture
def server():
    srv = FakeCompletionServer()
    thread = threading.Thread(target=srv.serve_forever, daemon=True)
    thread.start()
    yield srv
    srv.shutdown()
    srv.server_close()


def test_openai_completions_honour_stop_max_tokens_and_seed(server, monkeypatch):
    monkeypatch.setenv("RAG_OPENAI_API_KEY", "secret-key")
    gen = OpenAIGenerator(base_url=server.url, model="tiny-model", retries=0)
    out = gen.generate(["Who wrote it? Marrow"], max_new_tokens=32, stop=["\n\n"], seed=3, temperature=0.0)
    assert out == ["Echo Marrow seed 3 done."]
    sent = server.requests[-1]
    assert sent["_path"] == "/v1/completions" and sent["max_tokens"] == 32 and sent["seed"] == 3
    assert sent["stop"] == ["\n\n"] and sent["temperature"] == 0.0 and sent["_auth"] == "Bearer secret-key"
    assert gen.generate(["x"], max_new_tokens=2) == ["Echo x"]


def test_openai_streaming_and_chat(server):
    gen = OpenAIGenerator(base_url=server.url, retries=0)  # the first served model
    assert gen.model == "tiny-model"
    pieces = list(gen.stream("say Marrow", max_new_tokens=32, stop=["\n\n"], seed=1))
    assert len(pieces) > 1 and "".join(pieces) == "Echo Marrow seed 1 done."
    chat = OpenAIGenerator(base_url=server.url, model="tiny-model", chat=True, retries=0)
    assert chat.generate(["hello Marrow"], stop=["\n\n"]) == ["Echo Marrow seed None done."]
    assert server.requests[-1]["_path"] == "/v1/chat/completions"
    assert "".join(chat.stream("hello Marrow", stop=["\n\n"])) == "Echo Marrow seed None done."


def test_openai_retries_a_busy_server(server):
    gen = OpenAIGenerator(base_url=server.url, model="tiny-model", retries=2)
    server.failures_before_success = 2
    assert gen.generate(["ok"], max_new_tokens=2) == ["Echo ok"]
    server.failures_before_success = 5
    with pytest.raises(GeneratorError, match="503"):
        gen.generate(["ok"], max_new_tokens=2)


def test_openai_unknown_model_is_a_clear_error(server):
    with pytest.raises(GeneratorError, match="'other-model' is not served.*tiny-model"):
        OpenAIGenerator(base_url=server.url, model="other-model", retries=0)


def test_openai_server_down_is_a_clear_error():
    with socket.socket() as sock:  # a port nothing listens on
        sock.bind(("127.0.0.1", 0))
        port = sock.getsockname()[1]
    with pytest.raises(GeneratorError, match="cannot reach .* is it running"):
        OpenAIGenerator(base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=1, timeout=2)
    with pytest.raises(RagError, match="cannot reach"):
        load_generator("openai", base_url=f"http://127.0.0.1:{port}/v1", model="m", retries=0, timeout=2)
