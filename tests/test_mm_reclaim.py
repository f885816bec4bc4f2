"""Reclaim: droppable pages are dropped (never swapped), anonymous pages swapped,
mlocked pages kept; plus the mm/droppable selftest idea."""

import time

from mm import (FAULT_FLAG_USER, FAULT_FLAG_WRITE, MAP_ANONYMOUS, MAP_DROPPABLE,
                MAP_NORESERVE, MAP_PRIVATE, MM, PAGE_SIZE, PROT_READ, PROT_WRITE, PhysMem)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS
UW = FAULT_FLAG_WRITE | FAULT_FLAG_USER
UR = FAULT_FLAG_USER


def fault(mm, addr, flags):
    return mm.handle_mm_fault(mm.find_vma(addr), addr, flags)


def new_mm(pages, swap=0):
    return MM(PhysMem(pages, swap_pages=swap, overcommit_memory=1))


def fill(mm, addr, npages, tag=0xA5):
    for i in range(npages):
        assert mm.poke(addr + i * PAGE_SIZE, bytes([tag, i & 0xFF])) == 2


def test_drop_makes_droppable_page_read_zero():
    mm = new_mm(16)
    a = mm.mmap(0, PAGE_SIZE, RW, DROP)
    fill(mm, a, 1)
    assert mm.read(a, 2) == b"\xa5\x00"
    assert mm.drop_droppable() == 1
    pte = mm.pte(a)
    assert pte.frame is None and pte.swap_slot is None and pte.dropped
    assert mm.read(a, 2) == b"\x00\x00"
    r = fault(mm, a, UR)                             # a read maps the zero page
    assert r.kinds()[-1] == "map_zero_page" and mm.pte(a).frame is mm.phys.zero_frame
    assert mm.stats.drops == 1 and mm.phys.charged == 0


def test_write_after_drop_gets_fresh_zeroed_frame():
    mm = new_mm(16)
    a = mm.mmap(0, PAGE_SIZE, RW, DROP)
    fill(mm, a, 1)
    old = mm.pte(a).frame
    mm.drop_droppable()
    mm.drain_changes()                               # the emulator unmapped it
    r = fault(mm, a, UW)
    assert r.kinds() == ["vma_check", "alloc", "zero_fill"]
    new = mm.pte(a).frame
    assert new is not mm.phys.zero_frame and mm.pte(a).writable and not mm.pte(a).dropped
    assert bytes(new.data) == bytes(PAGE_SIZE)
    assert new.droppable
    del old


def test_droppable_dirty_pages_dropped_never_swapped_even_with_swap():
    mm = new_mm(8, swap=64)
    d = mm.mmap(0, 8 * PAGE_SIZE, RW, DROP)
    fill(mm, d, 8)                                   # all dirty
    a = mm.mmap(0, 8 * PAGE_SIZE, RW, ANON)
    fill(mm, a, 8)                                   # pressure
    for i in range(8):
        pte = mm.pte(d + i * PAGE_SIZE)
        assert pte.swap_slot is None
    assert mm.stats.drops == 8 and mm.stats.swapouts == 0
    assert all(mm.pte(d + i * PAGE_SIZE).dropped for i in range(8))
    assert mm.read(d, 2 * PAGE_SIZE) == bytes(2 * PAGE_SIZE)


def test_swap_out_and_in_roundtrip_of_plain_anonymous_pages():
    mm = new_mm(4, swap=16)
    a = mm.mmap(0, 12 * PAGE_SIZE, RW, ANON)
    for i in range(12):
        mm.poke(a + i * PAGE_SIZE, bytes([i]) * PAGE_SIZE)
    swapped = [i for i in range(12) if mm.pte(a + i * PAGE_SIZE).swapped]
    assert len(swapped) >= 8 and mm.phys.charged <= 4
    assert mm.stats.swapouts >= 8
    # swapped pages are readable without faulting (peek) ...
    for i in range(12):
        assert mm.read(a + i * PAGE_SIZE, PAGE_SIZE) == bytes([i]) * PAGE_SIZE
    # ... and a fault brings them back with their contents
    for i in swapped:
        r = fault(mm, a + i * PAGE_SIZE, UR)
        assert "swap_in" in r.kinds()
        assert bytes(mm.pte(a + i * PAGE_SIZE).frame.data) == bytes([i]) * PAGE_SIZE
    assert mm.stats.swapins == len(swapped)
    # read swap-in maps read-only; the following write reuses the exclusive frame
    i = swapped[-1]
    assert mm.pte(a + i * PAGE_SIZE).present
    r = fault(mm, a + i * PAGE_SIZE, UW)
    assert r.kinds() in (["vma_check", "reuse"], ["vma_check", "swap_in"])


def test_no_swap_means_anonymous_oom():
    mm = new_mm(2)
    a = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    fill(mm, a, 2)
    assert fault(mm, a + 2 * PAGE_SIZE, UW).oom
    assert mm.stats.swapouts == 0


def test_reclaim_order_droppable_first_then_swap_oldest_first():
    mm = new_mm(6, swap=16)
    mm.phys.reclaim_batch = 1                        # one page per pass: order is visible
    a = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    fill(mm, a, 3)                                   # oldest
    d = mm.mmap(0, 3 * PAGE_SIZE, RW, DROP)
    fill(mm, d, 3)                                   # newer, but droppable
    b = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    fill(mm, b, 3)                                   # 3 allocations need 3 reclaims
    assert all(mm.pte(d + i * PAGE_SIZE).dropped for i in range(3))
    assert all(mm.pte(a + i * PAGE_SIZE).present for i in range(3))
    assert mm.stats.swapouts == 0
    c = mm.mmap(0, PAGE_SIZE, RW, ANON)
    fill(mm, c, 1)                                   # no droppable left: swap the oldest
    assert mm.pte(a).swapped
    assert all(mm.pte(x).present for x in (a + PAGE_SIZE, a + 2 * PAGE_SIZE, b))
    assert mm.read(a, 2) == b"\xa5\x00"


def test_default_reclaim_batch_is_swap_cluster_max():
    mm = new_mm(40)
    assert mm.phys.reclaim_batch == 32
    d = mm.mmap(0, 40 * PAGE_SIZE, RW, DROP)
    fill(mm, d, 40)
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    r = fault(mm, a, UW)
    assert r.stages[1].kind == "reclaim" and r.stages[1].detail["dropped"] == 32


def test_mlocked_pages_are_never_reclaimed():
    mm = new_mm(4, swap=16)
    locked = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    assert mm.mlock(locked, 2 * PAGE_SIZE) == 0      # populates
    assert all(mm.pte(locked + i * PAGE_SIZE).present for i in range(2))
    a = mm.mmap(0, 6 * PAGE_SIZE, RW, ANON)
    fill(mm, a, 6)
    assert all(mm.pte(locked + i * PAGE_SIZE).present for i in range(2))
    assert mm.phys.charged <= 4
    # without swap, a budget full of locked memory just fails
    mm2 = new_mm(2)
    l2 = mm2.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm2.mlock(l2, 2 * PAGE_SIZE)
    b = mm2.mmap(0, PAGE_SIZE, RW, DROP)
    r = fault(mm2, b, UW)
    assert r.kinds()[-1] == "droppable_oom"
    assert r.stages[1].kind == "reclaim" and r.stages[1].detail["dropped"] == 0


def test_swap_full_then_oom():
    mm = new_mm(2, swap=2)
    a = mm.mmap(0, 5 * PAGE_SIZE, RW, ANON)
    fill(mm, a, 4)
    assert mm.phys.swap.used == 2
    r = fault(mm, a + 4 * PAGE_SIZE, UW)
    assert r.oom and r.stages[1].detail["swap_full"]


def test_reclaim_from_another_mm_records_changes_in_that_mm():
    phys = PhysMem(4, swap_pages=8, overcommit_memory=1)
    mm1, mm2 = MM(phys), MM(phys)
    d = mm1.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    fill(mm1, d, 2)
    a = mm1.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    fill(mm1, a, 2)
    mm1.drain_changes()
    b = mm2.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    fill(mm2, b, 3)                                  # mm2's pressure reclaims mm1's pages
    ch = mm1.drain_changes()
    assert {d, d + PAGE_SIZE} <= ch
    assert mm1.pte(d).dropped
    assert mm2.stats.drops == 0 and mm1.stats.drops == 2
    # swap-out of mm1's plain pages (by mm2's pressure) shows up in mm1's changes
    c = mm2.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    fill(mm2, c, 4)
    ch |= mm1.drain_changes()
    assert mm1.pte(a).swapped and mm1.pte(a + PAGE_SIZE).swapped
    assert {a, a + PAGE_SIZE} <= ch
    assert mm1.stats.swapouts == 2 and mm1.read(a, 1) == b"\xa5"


def test_shared_cow_frame_swapped_out_from_both_mms():
    mm = new_mm(3, swap=8)
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"shared")
    child = mm.dup_mm()
    x = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    fill(mm, x, 3)
    assert mm.pte(a).swapped and child.pte(a).swapped
    assert mm.pte(a).swap_slot == child.pte(a).swap_slot
    assert mm.phys.swap.get(mm.pte(a).swap_slot).refs == 2
    assert child.read(a, 6) == b"shared"
    fault(child, a, UR)
    assert child.read(a, 6) == b"shared" and mm.pte(a).swapped


def test_phys_drop_droppable_is_system_wide():
    phys = PhysMem(16, overcommit_memory=1)
    m1, m2 = MM(phys), MM(phys)
    a1 = m1.mmap(0, PAGE_SIZE, RW, DROP)
    a2 = m2.mmap(0, PAGE_SIZE, RW, DROP)
    n = m1.mmap(0, PAGE_SIZE, RW, ANON)
    m1.poke(a1, b"1"), m2.poke(a2, b"2"), m1.poke(n, b"n")
    assert phys.drop_droppable() == 2
    assert m1.pte(a1).dropped and m2.pte(a2).dropped and m1.pte(n).present


def test_freed_frames_recycled_only_after_drain():
    mm = new_mm(2)
    d = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    fill(mm, d, 2)
    old = {mm.pte(d).frame, mm.pte(d + PAGE_SIZE).frame}
    mm.drop_droppable()
    fill(mm, d, 2)                                   # no drain yet: must not reuse
    assert not ({mm.pte(d).frame, mm.pte(d + PAGE_SIZE).frame} & old)
    mm.drop_droppable()
    mm.drain_changes()
    fill(mm, d, 2)
    now = {mm.pte(d).frame, mm.pte(d + PAGE_SIZE).frame}
    assert now == old                                # recycled once drained
    assert mm.phys.stats.frames_created == 4
    for f in now:
        assert len(f.data) == PAGE_SIZE and f.data[0] == 0xA5


def test_madv_pageout_and_free():
    from mm import MADV_FREE, MADV_PAGEOUT
    mm = new_mm(8, swap=8)
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    fill(mm, a, 2)
    assert mm.madvise(a, PAGE_SIZE, MADV_PAGEOUT) == 0
    assert mm.pte(a).swapped and mm.read(a, 1) == b"\xa5"
    # MADV_FREE: reclaim may discard until the page is written again
    assert mm.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_FREE) == 0
    assert not mm.pte(a + PAGE_SIZE).writable
    mm.phys.shrink(1)
    assert mm.pte(a + PAGE_SIZE) is None             # discarded: reads zero
    assert mm.read(a + PAGE_SIZE, 1) == b"\x00"
    mm.poke(a + PAGE_SIZE, b"w")
    mm.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_FREE)
    fault(mm, a + PAGE_SIZE, UW)                     # redirtied: no longer lazyfree
    assert not mm.pte(a + PAGE_SIZE).frame.lazyfree
    mm.phys.shrink(1)
    assert mm.read(a + PAGE_SIZE, 1) == b"w"


def test_selftest_droppable_128mib_some_page_reads_zero_under_pressure():
    """mm/droppable selftest, re-derived: fill 128 MiB of droppable memory, apply
    memory pressure, some page must read back as zero."""
    t0 = time.perf_counter()
    npages = (128 << 20) // PAGE_SIZE
    phys = PhysMem(npages + 1024, swap_pages=0, overcommit_memory=0)
    mm = MM(phys)
    d = mm.mmap(0, 128 << 20, RW, DROP)
    assert d > 0
    for i in range(npages):                          # one byte per page
        mm.poke(d + i * PAGE_SIZE, b"\x01")
        if i & 1023 == 1023:
            mm.drain_changes()                       # as the emulator does after faults
    assert mm.phys.charged == npages and mm.stats.drops == 0
    # pressure: allocate 8 MiB of ordinary memory
    p = mm.mmap(0, 8 << 20, RW, ANON | MAP_NORESERVE)
    for i in range((8 << 20) // PAGE_SIZE):
        assert mm.poke(p + i * PAGE_SIZE, b"\x02") == 1
    assert mm.stats.drops > 0 and mm.stats.swapouts == 0
    zero = [i for i in range(0, npages) if mm.read(d + i * PAGE_SIZE, 1) == b"\x00"]
    assert zero, "some droppable page must read back as zero"
    assert all(mm.read(p + i * PAGE_SIZE, 1) == b"\x02" for i in range(0, 2048, 97))
    assert time.perf_counter() - t0 < 10


def test_selftest_droppable_budget_smaller_than_mapping():
    npages = (128 << 20) // PAGE_SIZE
    mm = MM(PhysMem(npages // 2, overcommit_memory=2))  # even strict mode: no commit
    d = mm.mmap(0, 128 << 20, RW, DROP)
    assert d > 0 and mm.phys.vm_committed_as == 0
    for i in range(npages):
        mm.poke(d + i * PAGE_SIZE, b"\x01")
        if i & 1023 == 1023:
            mm.drain_changes()
    assert mm.phys.charged <= npages // 2
    assert mm.read(d, 1) == b"\x00"                   # the oldest pages went first
    assert mm.read(d + (npages - 1) * PAGE_SIZE, 1) == b"\x01"
