"""Identical vectors held once: a backend's structure stores one of them, searches hand out every id.

Thousands of copies of one vector wreck approximate search: in an HNSW graph every copy links only
to other copies (none is nearer to a copy than another copy), so a beam that walks in never walks out
and nearer vectors elsewhere are lost; product quantizers train on the copies; KD-tree and LSH
candidate lists fill with them. So a backend's structure holds each distinct vector once, under the
first id that brought it (its *holder*), and the other ids with the same vector are its *copies*: a
search returns the holder and then its copies, with the same score. Removing a holder hands its place
to its first copy. Exact search loses nothing either way; approximate search then behaves as if the
copies were not there.

Vectors are compared by a 16-byte BLAKE2b digest of their stored float32 bytes (after cosine
normalisation), kept in sorted numpy arrays (24 bytes a distinct vector, like indexes.slots); only
vectors that do have copies cost a Python dict entry and a kept vector.
"""
from __future__ import annotations

import hashlib
from pathlib import Path

import numpy as np

from indexes.storage import IndexFileError, require_file

COPIES_FILE = "copies.npz"
DIGEST = np.dtype("S16")


def digests(vectors: np.ndarray) -> np.ndarray:
    """(n,) 16-byte digests of the rows' float32 bytes: equal digests, equal vectors."""
    rows = np.ascontiguousarray(vectors, dtype=np.float32)
    return np.array([hashlib.blake2b(row.tobytes(), digest_size=16).digest() for row in rows], dtype=DIGEST)


class Copies:
    """Which ids share a vector: the holder the structure stores, and its copies it does not."""

    def __init__(self, dim: int) -> None:
        self.dim = dim
        self._digests = np.empty(0, dtype=DIGEST)  # every stored vector's digest, ascending
        self._holders = np.empty(0, dtype=np.int64)  # the id the structure stores it under
        self.copies: dict[int, list[int]] = {}  # holder -> its copies, ascending (only holders that have some)
        self.holder_of: dict[int, int] = {}  # copy -> its holder
        self.vectors: dict[int, np.ndarray] = {}  # holder with copies -> the vector, to hand over on removal

    def __len__(self) -> int:
        """Ids that are copies (the structure does not hold them)."""
        return len(self.holder_of)

    def _find(self, found: np.ndarray) -> np.ndarray:
        """Position of each digest in the table, -1 where it is not there."""
        pos = np.searchsorted(self._digests, found)
        inside = pos < len(self._digests)
        hit = np.zeros(len(found), dtype=bool)
        hit[inside] = self._digests[pos[inside]] == found[inside]
        return np.where(hit, pos, -1)

    def admit(self, ids: np.ndarray, vectors: np.ndarray) -> np.ndarray:
        """New ids (none live) with their vectors: a mask of the rows the structure must store; the
        other rows become copies of a vector it already holds (or of an earlier row of this call)."""
        found = digests(vectors)
        at = self._find(found)
        keep = np.zeros(len(ids), dtype=bool)
        fresh: dict[bytes, int] = {}
        touched: set[int] = set()
        for row, (digest, pos) in enumerate(zip(found.tolist(), at.tolist())):
            if pos >= 0:
                holder = int(self._holders[pos])
            elif digest in fresh:
                holder = fresh[digest]
            else:
                fresh[digest] = int(ids[row])
                keep[row] = True
                continue
            copy = int(ids[row])
            self.holder_of[copy] = holder
            self.copies.setdefault(holder, []).append(copy)
            touched.add(holder)
            self.vectors.setdefault(holder, np.array(vectors[row], dtype=np.float32))
        for holder in touched:
            self.copies[holder].sort()
        if fresh:
            new = np.array(list(fresh), dtype=DIGEST)
            order = np.argsort(new)
            pos = np.searchsorted(self._digests, new[order])
            self._digests = np.insert(self._digests, pos, new[order])
            self._holders = np.insert(self._holders, pos, np.fromiter(fresh.values(), np.int64, len(fresh))[order])
        return keep

    def release(self, ids: np.ndarray, held: np.ndarray, held_vectors: np.ndarray
                ) -> tuple[np.ndarray, np.ndarray, np.ndarray]:
        """Forget ``ids``, of which ``held`` are stored by the structure (with ``held_vectors``, as
        stored): (ids the structure must drop, copies that take their place, those copies' vectors)."""
        for copy in (int(i) for i in ids if int(i) in self.holder_of):  # copies first: a holder leaving
            holder = self.holder_of.pop(copy)                           # with all its copies hands over
            self.copies[holder].remove(copy)                            # to none of them
            if not self.copies[holder]:
                del self.copies[holder], self.vectors[holder]
        at = self._find(digests(held_vectors)) if len(held) else np.empty(0, dtype=np.int64)
        gone, heirs, vectors = [], [], []
        for holder, pos in zip(held.tolist(), at.tolist()):
            if holder not in self.copies:
                if pos >= 0 and self._holders[pos] == holder:
                    gone.append(pos)
                continue
            heir, *rest = self.copies.pop(holder)  # the first copy holds the vector from now on
            vector = self.vectors.pop(holder)
            del self.holder_of[heir]
            for copy in rest:
                self.holder_of[copy] = heir
            if rest:
                self.copies[heir], self.vectors[heir] = rest, vector
            if pos >= 0:
                self._holders[pos] = heir
            heirs.append(heir)
            vectors.append(vector)
        if gone:
            self._digests, self._holders = np.delete(self._digests, gone), np.delete(self._holders, gone)
        return (held.astype(np.int64), np.array(heirs, dtype=np.int64),
                np.stack(vectors) if vectors else np.zeros((0, self.dim), dtype=np.float32))

    def expand(self, ids: np.ndarray, scores: np.ndarray, k: int) -> tuple[np.ndarray, np.ndarray]:
        """The structure's (nq, k') results with each holder followed by its copies, cut to k."""
        if not self.copies:
            return ids[:, :k], scores[:, :k]
        out_ids = np.full((len(ids), k), -1, dtype=np.int64)
        out_scores = np.full((len(ids), k), -np.inf, dtype=np.float32)
        for row in range(len(ids)):
            at = 0
            for holder, score in zip(ids[row].tolist(), scores[row].tolist()):
                if holder < 0 or at == k:
                    break
                for member in [holder, *self.copies.get(holder, ())][: k - at]:
                    out_ids[row, at], out_scores[row, at] = member, score
                    at += 1
        return out_ids, out_scores

    def copy_ids(self) -> np.ndarray:
        return np.fromiter(self.holder_of, dtype=np.int64, count=len(self.holder_of))

    def memory_bytes(self) -> int:
        """The digest table, plus for each vector with copies: its kept vector and dict entries."""
        return int(self._digests.nbytes + self._holders.nbytes + len(self.vectors) * (4 * self.dim + 200)
                   + len(self.holder_of) * 100)

    def save(self, directory: Path) -> None:
        holders = np.fromiter(self.copies, dtype=np.int64, count=len(self.copies))
        np.savez(directory / COPIES_FILE, digests=self._digests, holders=self._holders,
                 copies=self.copy_ids(), copy_holders=np.array([self.holder_of[c] for c in self.holder_of],
                                                                dtype=np.int64),
                 vector_holders=holders,
                 vectors=np.stack([self.vectors[h] for h in holders.tolist()]) if len(holders)
                 else np.zeros((0, self.dim), dtype=np.float32))

    @classmethod
    def load(cls, directory: Path, dim: int) -> "Copies":
        path = require_file(directory, COPIES_FILE)
        table = cls(dim)
        try:
            with np.load(path, allow_pickle=False) as state:
                table._digests = state["digests"].astype(DIGEST)
                table._holders = state["holders"].astype(np.int64)
                for copy, holder in zip(state["copies"].tolist(), state["copy_holders"].tolist()):
                    table.holder_of[copy] = holder
                    table.copies.setdefault(holder, []).append(copy)
                for holder, vector in zip(state["vector_holders"].tolist(), state["vectors"]):
                    table.vectors[holder] = np.array(vector, dtype=np.float32)
        except (OSError, ValueError, KeyError) as exc:
            raise IndexFileError(f"index file is corrupt: {path}: {exc}") from exc
        for members in table.copies.values():
            members.sort()
        if len(table._digests) != len(table._holders) or set(table.copies) != set(table.vectors):
            raise IndexFileError(f"index file is corrupt: {path}: its tables disagree")
        return table
