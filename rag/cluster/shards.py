"""What a shard is and where a document goes: the manifest of a cluster library and its global ids.

- a cluster library is a data directory holding ``cluster.json`` (shard count, encoder and its back
  end, vector backend, each shard's directory) and, by default, the shard directories under ``shards/``;
- a document goes to shard ``shard_of(source key, n)``, a stable hash of its path/uri;
- ids handed out are global: ``local id * n + shard``, so every id names its shard.

No Ray here: these are plain functions over keys, ids and one JSON file.
"""
from __future__ import annotations

import hashlib
import json
import os
import uuid
from dataclasses import asdict, dataclass, field
from pathlib import Path

from rag.errors import RagError
from rag.library import CLUSTER_MANIFEST as MANIFEST_FILE

SHARDS_DIR = "shards"
DEFAULT_SHARDS = 4


def shard_of(key: str, shards: int) -> int:
    """The shard a source (file path or record uri) lives on: blake2b of the key, the same in every
    process and on every machine (Python's hash() is salted per process)."""
    digest = hashlib.blake2b(str(key).encode("utf-8", "surrogatepass"), digest_size=8).digest()
    return int.from_bytes(digest, "big") % shards


def global_id(local: int, shard: int, shards: int) -> int:
    return int(local) * shards + shard


def split_id(gid: int, shards: int) -> tuple[int, int]:
    """A global id as (shard, local id)."""
    return int(gid) % shards, int(gid) // shards


# --- the manifest ----------------------------------------------------------------------------------


@dataclass
class Manifest:
    """What a cluster library is, so it can be stopped and reopened (``<data>/cluster.json``)."""

    shards: int
    encoder: str  # the encoder's name, as stores record it
    encoder_path: str | None  # its directory; None for the packaged default model
    encoder_backend: str
    dim: int
    backend: str  # vector index backend of every shard
    shard_dirs: list[str] = field(default_factory=list)  # relative to the data directory, or absolute
    id: str = field(default_factory=lambda: uuid.uuid4().hex)
    version: int = 1

    def shard_dir(self, data: Path, shard: int) -> Path:
        return (data / self.shard_dirs[shard]).resolve()


def read_manifest(data: Path) -> Manifest | None:
    path = data / MANIFEST_FILE
    if not path.exists():
        return None
    try:
        raw = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, ValueError) as exc:
        raise RagError(f"{path}: cannot read the cluster manifest: {exc}") from exc
    if not isinstance(raw, dict):
        raise RagError(f"{path}: the cluster manifest must be a JSON object")
    for name, kind in (("shards", int), ("encoder", str), ("encoder_backend", str), ("dim", int),
                       ("backend", str), ("shard_dirs", list)):
        if not isinstance(raw.get(name), kind):
            raise RagError(f"{path}: field {name!r} is missing or not a {kind.__name__}")
    if raw["shards"] < 1 or len(raw["shard_dirs"]) != raw["shards"]:
        raise RagError(f"{path}: field 'shard_dirs' must list one directory per shard ({raw['shards']})")
    known = {f for f in Manifest.__dataclass_fields__}
    return Manifest(**{k: v for k, v in raw.items() if k in known})


def write_manifest(data: Path, manifest: Manifest) -> None:
    """Written to a temporary name and renamed: a crash leaves the old manifest or the new one."""
    data.mkdir(parents=True, exist_ok=True)
    path = data / MANIFEST_FILE
    tmp = path.with_name(f".{MANIFEST_FILE}.{uuid.uuid4().hex}.tmp")
    tmp.write_text(json.dumps(asdict(manifest), indent=2), encoding="utf-8")
    os.replace(tmp, path)
