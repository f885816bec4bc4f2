"""What a native run's process holds besides the call's own memory, for the
oracle's Memory-discipline invariant.

The tracee is small (tracee_image.py): everything a getrandom call could
write by mistake is its one data page (the call slot, the params), the
callers' buffers, the stack around the calls' frames and the state's
droppable mapping.  Those pages are read whole, once when a walker stands at
the swept call's entry (the reference) and again when a run's swept call
has finished; the oracle diffs them with the same allowed ranges as the
emulator (oracle.memory_diff).

A state page with no PTE is zeros by definition and is never read: reading
it through process_vm_readv would map the shared zero page, and the run
would no longer be the run of a reclaimed page.
"""
from __future__ import annotations

from emulator.twin.process import STACK_RESIDENT, Layout
from emulator.twin.tracee import Tracee
from emulator.twin.tracee_image import DATA_BASE
from vdso.image import PAGE_SIZE

PAGE_MASK = ~(PAGE_SIZE - 1)


def watched_pages(layout: Layout) -> list[int]:
    """The pages whose bytes a call may change only inside its allowed ranges."""
    pages = {DATA_BASE}
    span = layout.hbuffer - layout.buffer
    for lo, hi in ((layout.buffer, layout.hbuffer + span),
                   (layout.rsp - STACK_RESIDENT, layout.rsp + 64)):
        pages.update(range(lo & PAGE_MASK, hi, PAGE_SIZE))
    pages.update(range(layout.state_map, layout.state_map + layout.state_map_len, PAGE_SIZE))
    return sorted(pages)


def image(t: Tracee, layout: Layout, pages: list[int]) -> dict[int, bytes]:
    """page -> its 4096 bytes in t (an absent droppable page: zeros, unread)."""
    droppable = range(layout.state_map, layout.state_map + layout.state_map_len)
    out = {}
    for va in pages:
        if va in droppable and not t.page_present(va):
            out[va] = bytes(PAGE_SIZE)
        else:
            out[va] = t.read(va, PAGE_SIZE)
    return out
