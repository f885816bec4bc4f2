"""An mm's page table: vpn -> PTE, for the pages that have an entry.

Only touched pages have entries (none PTEs are simply absent), so memory is
proportional to what was touched, whatever size the VMAs are. The entries are
grouped like x86-64's last level: one dict per "PTE table" of 512 pages (2 MiB),
plus a sorted list of the tables that exist. Point lookups (the fault path) are
two dict probes; a range walk (munmap, mprotect, fork, madvise, smaps, ...)
bisects the sorted list and visits only the tables in range that hold entries,
as the kernel's page-table walkers skip empty tables. So a range operation costs
O(log tables + entries in range), not O(pages in range).

Why this and not a sorted container of every vpn: the table list changes only
when a 2 MiB region gets its first entry or loses its last, so insertion stays
O(1) amortised on the fault path, and sorting happens per table (512 entries at
most) only when a walk needs order.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from typing import Iterator, Optional

from .page import PTE

PTRS_PER_PTE = 512
_TABLE_SHIFT = 9                 # log2(PTRS_PER_PTE)


class PageTable:
    __slots__ = ("_tables", "_index", "_len")

    def __init__(self) -> None:
        self._tables: dict[int, dict[int, PTE]] = {}    # table number -> {vpn: PTE}
        self._index: list[int] = []                     # sorted table numbers
        self._len = 0

    # --- point access (the fault path) ---------------------------------------------
    def get(self, vpn: int, default: Optional[PTE] = None) -> Optional[PTE]:
        t = self._tables.get(vpn >> _TABLE_SHIFT)
        return default if t is None else t.get(vpn, default)

    def __getitem__(self, vpn: int) -> PTE:
        t = self._tables.get(vpn >> _TABLE_SHIFT)
        if t is None:
            raise KeyError(vpn)
        return t[vpn]

    def __contains__(self, vpn: object) -> bool:
        if not isinstance(vpn, int):
            return False
        t = self._tables.get(vpn >> _TABLE_SHIFT)
        return t is not None and vpn in t

    def __setitem__(self, vpn: int, pte: PTE) -> None:
        n = vpn >> _TABLE_SHIFT
        t = self._tables.get(n)
        if t is None:
            t = self._tables[n] = {}                    # pte_alloc()
            insort(self._index, n)
        if vpn not in t:
            self._len += 1
        t[vpn] = pte

    def __delitem__(self, vpn: int) -> None:
        n = vpn >> _TABLE_SHIFT
        t = self._tables[n]
        del t[vpn]
        self._len -= 1
        if not t:                                       # free_pte_range()
            del self._tables[n]
            del self._index[bisect_left(self._index, n)]

    def pop(self, vpn: int, default: Optional[PTE] = None) -> Optional[PTE]:
        pte = self.get(vpn)
        if pte is None:
            return default
        del self[vpn]
        return pte

    # --- whole-table views (O(entries)) ------------------------------------------------
    def __len__(self) -> int:
        return self._len

    @property
    def nr_tables(self) -> int:
        """How many 512-entry PTE tables exist (a 'page-table pages' count)."""
        return len(self._index)

    def __iter__(self) -> Iterator[int]:
        for n in list(self._index):
            yield from sorted(self._tables[n])

    def keys(self) -> Iterator[int]:
        return iter(self)

    def items(self) -> list[tuple[int, PTE]]:
        """(vpn, PTE) in address order (a list: safe to modify the table meanwhile)."""
        out: list[tuple[int, PTE]] = []
        for n in self._index:
            t = self._tables[n]
            out.extend((v, t[v]) for v in sorted(t))
        return out

    def values(self) -> list[PTE]:
        return [p for _, p in self.items()]

    def copy(self) -> dict[int, PTE]:
        """A plain dict snapshot of every entry."""
        out: dict[int, PTE] = {}
        for t in self._tables.values():
            out.update(t)
        return out

    # --- range walks (O(tables in range + entries in them)) -------------------------------
    def _tables_in(self, lo: int, hi: int) -> list[int]:
        idx = self._index
        return idx[bisect_left(idx, lo >> _TABLE_SHIFT):bisect_right(idx, (hi - 1) >> _TABLE_SHIFT)]

    def vpns_in(self, lo: int, hi: int) -> list[int]:
        """Sorted vpns in [lo, hi) that have an entry."""
        if hi <= lo:
            return []
        out: list[int] = []
        for n in self._tables_in(lo, hi):
            t = self._tables[n]
            base = n << _TABLE_SHIFT
            if lo <= base and base + PTRS_PER_PTE <= hi:
                out.extend(sorted(t))
            else:
                out.extend(v for v in sorted(t) if lo <= v < hi)
        return out

    def items_in(self, lo: int, hi: int) -> list[tuple[int, PTE]]:
        """Sorted (vpn, PTE) in [lo, hi)."""
        out: list[tuple[int, PTE]] = []
        for n in self._tables_in(lo, hi) if hi > lo else ():
            t = self._tables[n]
            out.extend((v, t[v]) for v in sorted(t) if lo <= v < hi)
        return out

    def __repr__(self) -> str:
        return f"PageTable(entries={self._len}, tables={len(self._index)})"


__all__ = ["PTRS_PER_PTE", "PageTable"]
