"""Tombstones for backends whose structure cannot delete: caller ids map to dense slots."""
from __future__ import annotations

from pathlib import Path

import numpy as np

from indexes.storage import IndexFileError


class SlotTable:
    """Caller ids <-> dense slot numbers, with tombstones for removed or replaced slots.

    Backends that cannot delete natively store vectors by slot; a removed slot keeps its place
    (``ids[slot] == -1``) until ``compact`` renumbers the live ones. Lookups go through sorted
    numpy arrays (24 bytes a vector), not a Python dict (about 100).
    """

    def __init__(self) -> None:
        self.ids = np.empty(0, dtype=np.int64)  # (capacity,) caller id per slot, -1 if dead
        self.size = 0  # slots in use (live + dead)
        self._sorted_ids = np.empty(0, dtype=np.int64)  # live ids, ascending
        self._sorted_slots = np.empty(0, dtype=np.int64)  # their slots

    @property
    def live(self) -> int:
        return len(self._sorted_ids)

    @property
    def dead(self) -> int:
        return self.size - self.live

    def slots_of(self, ids: np.ndarray) -> np.ndarray:
        """Slot of each id, -1 where the id is not live."""
        pos = np.searchsorted(self._sorted_ids, ids)
        pos_clipped = np.minimum(pos, max(0, len(self._sorted_ids) - 1))
        found = (pos < len(self._sorted_ids)) & (self._sorted_ids[pos_clipped] == ids) if self.live else \
            np.zeros(len(ids), dtype=bool)
        return np.where(found, self._sorted_slots[pos_clipped] if self.live else -1, -1)

    def add(self, ids: np.ndarray) -> np.ndarray:
        """New slots for ids (already validated); an id added before loses its old slot."""
        self.remove(ids)
        start = self.size
        if start + len(ids) > len(self.ids):
            grown = np.full(max(2 * len(self.ids), start + len(ids), 1024), -1, dtype=np.int64)
            grown[:start] = self.ids[:start]
            self.ids = grown
        slots = np.arange(start, start + len(ids), dtype=np.int64)
        self.ids[start : start + len(ids)] = ids
        self.size = start + len(ids)
        merged_ids = np.concatenate([self._sorted_ids, ids])
        order = np.argsort(merged_ids, kind="stable")
        self._sorted_ids = merged_ids[order]
        self._sorted_slots = np.concatenate([self._sorted_slots, slots])[order]
        return slots

    def remove(self, ids: np.ndarray) -> int:
        """Tombstone the slots of ids that are live; returns how many were."""
        slots = self.slots_of(ids)
        slots = slots[slots >= 0]
        if len(slots):
            self.ids[slots] = -1
            keep = self.ids[self._sorted_slots] >= 0
            self._sorted_ids, self._sorted_slots = self._sorted_ids[keep], self._sorted_slots[keep]
        return len(slots)

    def live_ids(self) -> np.ndarray:
        """Live ids, ascending (a copy)."""
        return self._sorted_ids.copy()

    def live_slots(self) -> np.ndarray:
        return np.flatnonzero(self.ids[: self.size] >= 0)

    def needs_compaction(self) -> bool:
        """Compact when a quarter of the slots are dead (and enough to be worth a rebuild)."""
        return self.dead > max(256, self.size // 4)

    def compact(self) -> np.ndarray:
        """Renumber live slots 0..live-1 in order; returns the old slot of each new slot."""
        keep = self.live_slots()
        table = SlotTable.from_state(self.ids[keep])
        self.ids, self.size = table.ids, table.size
        self._sorted_ids, self._sorted_slots = table._sorted_ids, table._sorted_slots
        return keep

    def state(self) -> np.ndarray:
        return self.ids[: self.size].copy()

    def memory_bytes(self) -> int:
        return int(self.ids.nbytes + self._sorted_ids.nbytes + self._sorted_slots.nbytes)

    @classmethod
    def from_state(cls, ids: np.ndarray) -> "SlotTable":
        table = cls()
        table.ids = np.asarray(ids, dtype=np.int64).copy()
        table.size = len(table.ids)
        live = np.flatnonzero(table.ids >= 0)
        order = np.argsort(table.ids[live], kind="stable")
        table._sorted_ids = table.ids[live][order]
        table._sorted_slots = live[order].astype(np.int64)
        if len(np.unique(table._sorted_ids)) != len(table._sorted_ids):
            raise ValueError("slot table holds duplicate ids")
        return table

    @classmethod
    def load(cls, path: Path) -> "SlotTable":
        """The table saved with ``np.save(path, table.state())``; a bad file is an IndexFileError naming it."""
        try:
            return cls.from_state(np.load(path, allow_pickle=False))
        except (OSError, ValueError) as exc:
            raise IndexFileError(f"index file is corrupt: {path}: {exc}") from exc
