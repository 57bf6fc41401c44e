"""The query-side retriever adapter: a LoRA adapter that changes how questions are encoded, not passages.

`rag tune retriever` trains it (rag.tune.retriever) against the vectors already in the store, so
every stored passage vector stays valid and nothing is re-encoded: only the question's vector moves
towards the passages that hold its answer. The seeds' RAG fine-tuning does the same, updating the
question encoder and leaving the document index fixed.

At run time the adapter is merged into a copy of the store's encoder, saved once into the model cache
(<cache>/encoders/query-<adapter hash>/), and loaded on the store's encoder back end, so dense search
costs what it did. The adapter changes which passages are found; how much a found passage counts
for the answer (its cosine with the question, rag.answer.pipeline.relevance) stays the plain encoder's, which
the reader's retrieval weight and the relevance check were calibrated on.
"""
from __future__ import annotations

import os
import shutil
import threading
import uuid
from pathlib import Path

from rag.errors import RagError

ADAPTER_DIR = ("models", "query-adapter")  # under a data directory
MANIFEST = "manifest.json"
ADAPTER_FILES = ("adapter_config.json", "adapter_model.safetensors", MANIFEST)


def adapter_directory(data_dir: str | Path) -> Path:
    return Path(data_dir).joinpath(*ADAPTER_DIR)


def read_manifest(directory: Path) -> dict:
    from rag.models.span_reader import read_manifest as read

    return read(directory, "query adapter")


def adapter_status(data_dir: str | Path, encoder_name: str | None) -> dict | None:
    """The installed adapter (name, scores), or None; ``usable`` is False, with a message, when it was
    trained on another encoder than the store's (its vectors would not match the stored ones)."""
    directory = adapter_directory(data_dir)
    if not (directory / MANIFEST).is_file():
        return None
    try:
        manifest = read_manifest(directory)
    except RagError as exc:
        return {"usable": False, "message": str(exc)}
    status = {"name": manifest.get("name", ""), "created": manifest.get("created", ""),
              "scores": manifest.get("scores", {}), "directory": str(directory), "usable": True}
    if encoder_name is not None and manifest.get("encoder") != encoder_name:
        status.update(usable=False, message=f"trained for the encoder {manifest.get('encoder')!r}, "
                                            f"this store holds {encoder_name!r} vectors: not used")
    return status


def new_query_model(model_path: str, rank: int, alpha: int, dropout: float, seed: int):
    """The sentence-transformers model with trainable LoRA adapters on its transformer (torch, float32)."""
    import torch
    from peft import LoraConfig, get_peft_model
    from sentence_transformers import SentenceTransformer

    from rag.models.span_reader import TARGET_MODULES, quiet_transformers

    quiet_transformers()
    torch.manual_seed(seed)
    model = SentenceTransformer(model_path, device="cpu")
    config = LoraConfig(r=rank, lora_alpha=alpha, lora_dropout=dropout, target_modules=TARGET_MODULES, bias="none")
    model[0].model = get_peft_model(model[0].model, config)  # the transformer that Transformer.forward calls
    return model


def save_adapter(model, directory: Path, base_name: str) -> None:
    """Only the adapter's weights (a few MB), as peft writes them, in place of ``directory``."""
    from rag.models.span_reader import save_adapter as save

    save(model[0].model, directory, base_name)


def merged_model_dir(directory: Path, digest: str, model_path: str, cache_dir: str | Path) -> Path:
    """<cache>/encoders/query-<hash>/: the encoder with the adapter merged in, a plain sentence-transformers
    directory named by the adapter's ``digest`` (made once, under a temporary name and renamed, so a torn
    copy is never loaded)."""
    from peft import PeftModel
    from sentence_transformers import SentenceTransformer

    from rag.models.span_reader import quiet_transformers

    target = Path(cache_dir) / "encoders" / f"query-{digest}"
    if (target / "modules.json").is_file():
        return target
    quiet_transformers()
    model = SentenceTransformer(model_path, device="cpu")
    model[0].model = PeftModel.from_pretrained(model[0].model, str(directory)).merge_and_unload()
    temporary = target.with_name(f".{target.name}.{uuid.uuid4().hex}.tmp")
    try:
        model.save(str(temporary))
        target.parent.mkdir(parents=True, exist_ok=True)
        try:
            os.replace(temporary, target)
        except OSError:  # another process made it first
            if not (target / "modules.json").is_file():
                raise
    finally:
        shutil.rmtree(temporary, ignore_errors=True)
    return target


_LOADED: dict[tuple, object] = {}
_LOCK = threading.Lock()


def load_query_encoder(directory: Path, model_path: str, backend: str, cache_dir: str | Path):
    """The question encoder for a store with this adapter: merged once, then loaded like any encoder."""
    from rag.models.encoders import load_encoder
    from rag.models.span_reader import adapter_digest

    digest = adapter_digest(directory)
    key = (str(Path(directory).resolve()), digest, backend, str(cache_dir))
    with _LOCK:
        if key not in _LOADED:
            path = merged_model_dir(directory, digest, model_path, cache_dir)
            _LOADED[key] = load_encoder(str(path), backend, cache_dir=cache_dir)
        return _LOADED[key]
