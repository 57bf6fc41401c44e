"""On disk: a directory of backend files plus manifest.json, swapped in atomically."""
from __future__ import annotations

import json
import os
import shutil
import tempfile
import uuid
from contextlib import contextmanager
from pathlib import Path
from typing import Iterator

from indexes.checks import METRICS

FORMAT_VERSION = 2  # 2: copies.npz (indexes.copies) beside the backend files
MANIFEST = "manifest.json"


class IndexFileError(ValueError):
    """An index directory that cannot be read: missing, corrupt or mismatched files."""


def write_manifest(directory: Path, manifest: dict) -> None:
    path = Path(directory) / MANIFEST
    tmp = path.with_name(f".{MANIFEST}.{uuid.uuid4().hex}.tmp")
    with open(tmp, "w", encoding="utf-8") as fh:
        json.dump(manifest, fh, indent=2, sort_keys=True)
        fh.flush()
        os.fsync(fh.fileno())
    os.replace(tmp, path)


def read_manifest(directory: str | os.PathLike) -> dict:
    """The manifest, checked for the fields every backend relies on; errors name the file."""
    path = Path(directory) / MANIFEST
    if not Path(directory).is_dir():
        raise IndexFileError(f"index directory not found: {directory}")
    if not path.is_file():
        raise IndexFileError(f"index manifest missing: {path}")
    try:
        manifest = json.loads(path.read_text(encoding="utf-8"))
    except (OSError, UnicodeDecodeError, json.JSONDecodeError) as exc:
        raise IndexFileError(f"index manifest is corrupt: {path}: {exc}") from exc
    if not isinstance(manifest, dict):
        raise IndexFileError(f"index manifest is corrupt: {path}: expected a JSON object")
    for key, kind in (("backend", str), ("dim", int), ("metric", str), ("count", int),
                      ("format_version", int), ("params", dict)):
        if not isinstance(manifest.get(key), kind) or isinstance(manifest.get(key), bool):
            raise IndexFileError(f"index manifest {path}: field {key!r} missing or not {kind.__name__}")
    if manifest["format_version"] != FORMAT_VERSION:
        raise IndexFileError(
            f"index manifest {path}: format version {manifest['format_version']} is not supported "
            f"(this code reads version {FORMAT_VERSION}); rebuild the index"
        )
    if manifest["metric"] not in METRICS or manifest["dim"] <= 0:
        raise IndexFileError(f"index manifest {path}: bad dim/metric {manifest['dim']!r}/{manifest['metric']!r}")
    return manifest


@contextmanager
def atomic_directory(directory: str | os.PathLike) -> Iterator[Path]:
    """Yield a temporary sibling directory; on success it replaces ``directory`` by rename.

    Refuses to replace a non-empty directory that is not an index (no manifest), so a
    mistyped path cannot wipe unrelated files.
    """
    target = Path(directory).absolute()
    if target.exists() and not target.is_dir():
        raise ValueError(f"cannot save index: {target} exists and is not a directory")
    if target.is_dir() and any(target.iterdir()) and not (target / MANIFEST).exists():
        raise ValueError(f"cannot save index into {target}: it holds other files and no {MANIFEST}")
    target.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f".{target.name}.tmp-", dir=target.parent))
    try:
        yield tmp
        for entry in tmp.iterdir():
            with open(entry, "rb") as fh:
                os.fsync(fh.fileno())
        old = None
        if target.exists():
            old = target.parent / f".{target.name}.old-{uuid.uuid4().hex}"
            os.rename(target, old)
        os.rename(tmp, target)
        if old is not None:
            shutil.rmtree(old, ignore_errors=True)
    except BaseException:
        shutil.rmtree(tmp, ignore_errors=True)
        raise


def require_file(directory: Path, name: str) -> Path:
    path = Path(directory) / name
    if not path.is_file():
        raise IndexFileError(f"index file missing: {path}")
    return path
