"""Mappings of any size: the page table and the change log grow with what is
touched, never with what is mapped (timings: python -m bench.mm_scale)."""

import random

import pytest

from mm import (FAULT_FLAG_USER, FAULT_FLAG_WRITE, MADV_DONTNEED, MAP_ANONYMOUS,
                MAP_DROPPABLE, MAP_NORESERVE, MAP_PRIVATE, MM, MREMAP_FIXED, MREMAP_MAYMOVE,
                PAGE_SIZE, PROT_READ, PROT_WRITE, PhysMem)
from mm.page import PTE
from mm.pgtable import PTRS_PER_PTE, PageTable

RW = PROT_READ | PROT_WRITE
DROP = MAP_DROPPABLE | MAP_ANONYMOUS
HUGE = 1 << 46


def test_page_table_walks_match_a_plain_dict():
    """vpns_in/items_in against a brute-force filter of an ordinary dict, over
    random inserts and deletes spread across many PTE tables."""
    rnd = random.Random(7)
    pt, ref = PageTable(), {}
    pte = PTE(None, False)
    for _ in range(4000):
        vpn = rnd.choice([rnd.randrange(1 << 35), rnd.randrange(2048), (1 << 34) + rnd.randrange(600)])
        if vpn in ref and rnd.random() < 0.4:
            del pt[vpn]
            del ref[vpn]
        else:
            pt[vpn] = pte
            ref[vpn] = pte
    assert len(pt) == len(ref) and sorted(ref) == list(pt)
    assert pt.nr_tables == len({v // PTRS_PER_PTE for v in ref})
    for _ in range(300):
        lo = rnd.choice([rnd.randrange(1 << 35), rnd.randrange(2048), 1 << 34])
        hi = lo + rnd.choice([1, 511, 512, 513, 5000, 1 << 30])
        want = sorted(v for v in ref if lo <= v < hi)
        assert pt.vpns_in(lo, hi) == want
        assert [v for v, _ in pt.items_in(lo, hi)] == want
    for vpn in list(ref):
        del pt[vpn]
    assert len(pt) == 0 and pt.nr_tables == 0


@pytest.mark.parametrize("flags", [DROP, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE],
                         ids=["droppable", "private-noreserve"])
def test_huge_mapping_keeps_page_table_and_change_log_small(flags):
    mm = MM(PhysMem(64, overcommit_memory=0))
    mm.drain_change_ranges()
    a = mm.mmap(0, HUGE, RW, flags)
    assert a > 0 and mm.find_vma(a).size == HUGE
    assert mm.pending_change_ranges() == [(a, a + HUGE)]
    assert mm.drain_change_ranges() == [(a, a + HUGE)]
    assert len(mm.pt) == 0
    # Three pages touched far apart: three entries, three PTE tables.
    vma = mm.find_vma(a)
    for off in (0, HUGE // 2, HUGE - PAGE_SIZE):
        mm.handle_mm_fault(vma, a + off, FAULT_FLAG_WRITE | FAULT_FLAG_USER)
    assert len(mm.pt) == 3 and mm.pt.nr_tables == 3
    assert mm.drain_change_ranges() == [(a + o, a + o + PAGE_SIZE) for o in (0, HUGE // 2, HUGE - PAGE_SIZE)]
    child = mm.dup_mm()
    assert len(child.pt) == (0 if flags == DROP else 3)
    assert child.drain_change_ranges() == [(a, a + HUGE)]
    assert mm.mprotect(a, HUGE, PROT_READ) == 0
    assert mm.drain_change_ranges() == [(a, a + HUGE)]
    assert mm.madvise(a, HUGE, MADV_DONTNEED) == 0 and len(mm.pt) == 0
    snap = mm.snapshot()
    assert len(snap.ptes) == 0
    text = mm.smaps()
    assert f"Size:           {HUGE // 1024:>8} kB" in text
    target = a - HUGE // 4 * 2
    assert mm.mremap(a, HUGE // 4, HUGE // 4, MREMAP_MAYMOVE | MREMAP_FIXED, target) == target
    mm.drain_change_ranges()
    assert mm.munmap(target, HUGE // 4) == 0 and mm.munmap(a, HUGE) == 0
    assert mm.drain_change_ranges() == [(target, target + HUGE // 4), (a + HUGE // 4, a + HUGE)]
    assert mm.vmas == []


def test_sparse_core_dump_of_a_huge_mapping():
    mm = MM(PhysMem(64, overcommit_memory=0))
    a = mm.mmap(0, HUGE, RW, MAP_PRIVATE | MAP_ANONYMOUS | MAP_NORESERVE)
    mm.poke(a + HUGE // 2, b"middle")
    core = mm.coredump()
    (seg,) = core.segments
    assert seg.size == HUGE and list(seg.pages) == [a + HUGE // 2]
    assert core.read(a + HUGE // 2, 6) == b"middle" and core.read(a, 4) == bytes(4)
    assert core.size == HUGE


def test_legacy_page_set_matches_the_ranges():
    mm = MM(PhysMem(64))
    a = mm.mmap(0, 5 * PAGE_SIZE, RW, DROP)
    ranges = mm.pending_change_ranges()
    assert mm.pending_changes == 5
    assert mm.drain_changes() == {va for lo, hi in ranges for va in range(lo, hi, PAGE_SIZE)}
    assert mm.drain_changes() == set() and mm.drain_change_ranges() == []
    mm.poke(a + PAGE_SIZE, b"x")
    mm.poke(a + 2 * PAGE_SIZE, b"x")
    mm.poke(a + 4 * PAGE_SIZE, b"x")
    assert mm.drain_change_ranges() == [(a + PAGE_SIZE, a + 3 * PAGE_SIZE),
                                        (a + 4 * PAGE_SIZE, a + 5 * PAGE_SIZE)]
