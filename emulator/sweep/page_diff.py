"""Which bytes of a process changed since a snapshot of its mm, for the
Memory-discipline invariant of `sweep --exec`.

Pages are compared by frame first: a frame a snapshot holds is never
written (a write to it copies the page, mm/snapshot.py), so a page that
still maps the snapshot's frame is unchanged.  Only the other pages are
read, and only those whose bytes differ are returned.  A page absent from
the snapshot reads as what a read would have seen then: its file's bytes in
a file mapping, zeros elsewhere.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from mm.filemap import file_page_bytes
from mm.flags import PAGE_SHIFT, PAGE_SIZE

if TYPE_CHECKING:
    from mm.mm_struct import MM
    from mm.snapshot import MMSnapshot


def changed_pages(mm: "MM", ref: "MMSnapshot") -> tuple[dict[int, bytes], dict[int, bytes]]:
    """(before, after): the images of every page whose bytes changed since ref."""
    pre: dict[int, bytes] = {}
    post: dict[int, bytes] = {}
    now = mm.pt.copy()
    for vpn in ref.ptes.keys() | now.keys():
        r, c = ref.ptes.get(vpn), now.get(vpn)
        if r is c:
            continue
        rf = r.frame if r is not None else None
        if rf is not None and c is not None and c.frame is rf:
            continue
        va = vpn << PAGE_SHIFT
        before = bytes(rf.data) if rf is not None else _unmapped_page(mm, ref, va)
        after = mm.read(va, PAGE_SIZE)
        if before != after:
            pre[va], post[va] = before, after
    return pre, post


def _unmapped_page(mm: "MM", ref: "MMSnapshot", va: int) -> bytes:
    vma = next((v for v in ref.vmas if v.start <= va < v.end), None)
    if vma is not None and vma.vm_file is not None:
        return file_page_bytes(mm.phys, vma.vm_file, vma.pgoff_of(va))
    return bytes(PAGE_SIZE)


def changed_ranges(pre: dict[int, bytes], post: dict[int, bytes]) -> list[tuple[int, int]]:
    """[lo, hi) of every run of changed bytes."""
    out: list[tuple[int, int]] = []
    for va in sorted(post):
        a, b = pre[va], post[va]
        i = 0
        while i < PAGE_SIZE:
            if a[i] == b[i]:
                i += 1
                continue
            j = i
            while j < PAGE_SIZE and a[j] != b[j]:
                j += 1
            if out and out[-1][1] == va + i:
                out[-1] = (out[-1][0], va + j)
            else:
                out.append((va + i, va + j))
            i = j
    return out
