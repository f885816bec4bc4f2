"""Swap slots (mm/swapfile.c): where reclaimed anonymous pages keep their bytes.

A slot holds an immutable copy of the page. ``refs`` counts swap PTEs pointing at
it (swap_map count: >1 after fork), ``snap_refs`` counts MM snapshots holding it.
Only slots referenced by PTEs count against ``nr_pages`` (like frames, what only a
snapshot holds is outside the budget).

The device itself can be watched: after ``record_writes()`` every page written
(swap_writepage) is kept in ``writes`` with the (mm id, vaddr) mappings it came
from. A freed slot forgets its bytes here, but a real disk keeps them until the
block is overwritten, so the log is what could be read back from the device.
"""

from __future__ import annotations

from dataclasses import dataclass, field
from typing import Optional


@dataclass(frozen=True)
class SwapWrite:
    """One page written to the swap device."""
    slot: int
    data: bytes = field(repr=False)
    origin: tuple = ()                 # ((mm id, vaddr), ...) that mapped the page


@dataclass(eq=False)
class SwapSlot:
    slot: int
    data: bytes = field(repr=False)
    refs: int = 0
    snap_refs: int = 0


class SwapArea:
    """A swap device of ``nr_pages`` slots (0 = no swap configured)."""

    def __init__(self, nr_pages: int = 0) -> None:
        self.nr_pages = nr_pages
        self.slots: dict[int, SwapSlot] = {}
        self.used = 0                      # slots with refs > 0
        self._free_ids: list[int] = []
        self._next_id = 1                  # swap entry 0 is never used (like swp offset 0 = header)
        self.writes: Optional[list[SwapWrite]] = None

    def record_writes(self) -> list[SwapWrite]:
        """Start keeping every page written to the device; returns the log."""
        if self.writes is None:
            self.writes = []
        return self.writes

    @property
    def free(self) -> int:
        return max(0, self.nr_pages - self.used)

    def alloc(self, data: bytes, origin: tuple = ()) -> Optional[SwapSlot]:
        """get_swap_page() + swap_writepage(): a slot holding ``data`` with no
        references yet, or None when full. ``origin``: the mappings of the page."""
        if self.used >= self.nr_pages:
            return None
        sid = self._free_ids.pop() if self._free_ids else self._next_id
        if sid == self._next_id:
            self._next_id += 1
        s = SwapSlot(sid, bytes(data))
        self.slots[sid] = s
        if self.writes is not None:
            self.writes.append(SwapWrite(sid, s.data, origin))
        return s

    def get(self, sid: int) -> SwapSlot:
        return self.slots[sid]

    def dup(self, sid: int) -> None:
        """swap_duplicate(): one more swap PTE refers to the slot."""
        s = self.slots[sid]
        if s.refs == 0:
            self.used += 1
        s.refs += 1

    def put(self, sid: int) -> None:
        """swap_free(): a swap PTE stopped referring to the slot."""
        s = self.slots[sid]
        s.refs -= 1
        assert s.refs >= 0
        if s.refs == 0:
            self.used -= 1
            self._maybe_free(s)

    def snap_get(self, sid: int) -> None:
        self.slots[sid].snap_refs += 1

    def snap_put(self, sid: int) -> None:
        s = self.slots[sid]
        s.snap_refs -= 1
        self._maybe_free(s)

    def _maybe_free(self, s: SwapSlot) -> None:
        if s.refs == 0 and s.snap_refs == 0 and self.slots.get(s.slot) is s:
            del self.slots[s.slot]
            self._free_ids.append(s.slot)
