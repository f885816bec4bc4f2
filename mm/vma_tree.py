"""The mm's set of VMAs (the maple tree's job): ordered lookup, split and merge
(mm/vma.c: __split_vma, vma_merge). A sorted list with a parallel list of start
addresses: lookups bisect, inserts and removals are one list shift each, so every
operation is O(log n) to find plus O(n) memmove at worst, never a re-sort."""

from __future__ import annotations

import bisect
from typing import Iterator, Optional

from .flags import PAGE_SIZE, VM_STICKY
from .vma import VMA, can_merge


class VmaTree:
    def __init__(self) -> None:
        self._vmas: list[VMA] = []
        self._starts: list[int] = []

    def __iter__(self) -> Iterator[VMA]:
        return iter(list(self._vmas))

    def __len__(self) -> int:
        return len(self._vmas)

    def as_list(self) -> list[VMA]:
        return list(self._vmas)

    def find(self, addr: int) -> Optional[VMA]:
        """The VMA containing addr."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0:
            v = self._vmas[i]
            if addr < v.end:
                return v
        return None

    def find_next(self, addr: int) -> Optional[VMA]:
        """The kernel's find_vma(): first VMA with end > addr."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i >= 0 and addr < self._vmas[i].end:
            return self._vmas[i]
        return self._vmas[i + 1] if i + 1 < len(self._vmas) else None

    def prev_of(self, vma: VMA) -> Optional[VMA]:
        i = self._vmas.index(vma)
        return self._vmas[i - 1] if i > 0 else None

    def overlapping(self, start: int, end: int) -> list[VMA]:
        """VMAs intersecting [start, end), in address order."""
        i = max(0, bisect.bisect_right(self._starts, start) - 1)
        out = []
        for v in self._vmas[i:]:
            if v.start >= end:
                break
            if v.end > start:
                out.append(v)
        return out

    def insert(self, vma: VMA) -> None:
        assert not self.overlapping(vma.start, vma.end), "overlapping VMA insert"
        i = bisect.bisect_left(self._starts, vma.start)
        self._vmas.insert(i, vma)
        self._starts.insert(i, vma.start)

    def _index_of(self, vma: VMA) -> int:
        i = bisect.bisect_left(self._starts, vma.start)
        if i < len(self._vmas) and self._vmas[i] is vma:
            return i
        return self._vmas.index(vma)          # its start was edited in place: search

    def remove(self, vma: VMA) -> None:
        i = self._index_of(vma)
        del self._vmas[i]
        del self._starts[i]

    def split(self, addr: int) -> None:
        """__split_vma(): make addr a VMA boundary if it falls inside one."""
        i = bisect.bisect_right(self._starts, addr) - 1
        if i < 0:
            return
        v = self._vmas[i]
        if v.start == addr or addr >= v.end:
            return
        upper = v.copy(start=addr, vm_pgoff=v.pgoff_of(addr) if v.vm_file is not None else 0)
        v.end = addr
        self._vmas.insert(i + 1, upper)
        self._starts.insert(i + 1, addr)

    def isolate(self, start: int, end: int) -> list[VMA]:
        """Split at start and end; return the VMAs lying within [start, end)."""
        self.split(start)
        self.split(end)
        return self.overlapping(start, end)

    def merge_around(self, start: int, end: int) -> None:
        """vma_merge(): coalesce mergeable neighbours from the VMA before start to the
        one after end."""
        lo = max(0, bisect.bisect_right(self._starts, start - PAGE_SIZE) - 1)
        i = lo
        while i + 1 < len(self._vmas):
            a, b = self._vmas[i], self._vmas[i + 1]
            if a.start > end:
                break
            if can_merge(a, b):
                a.end = b.end
                a.vm_flags |= b.vm_flags & VM_STICKY   # sticky flags survive a merge
                if a.anon_vma is None:
                    a.anon_vma = b.anon_vma
                del self._vmas[i + 1]
                del self._starts[i + 1]
                continue
            i += 1

    def gaps_topdown(self, low: int, high: int) -> Iterator[tuple[int, int]]:
        """Free [gap_start, gap_end) ranges within [low, high), highest first."""
        top = high
        for v in reversed(self._vmas):
            if v.start >= top:
                continue
            if v.end < top:
                g0 = max(v.end, low)
                if g0 < top:
                    yield (g0, top)
            top = v.start
            if top <= low:
                return
        if top > low:
            yield (low, top)
