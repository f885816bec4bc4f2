"""snapshot/restore: cheap (frames shared), repeatable, budget-neutral, recorded."""

import gc

import pytest

from mm import (FAULT_FLAG_USER, FAULT_FLAG_WRITE, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_PRIVATE,
                MM, PAGE_SIZE, PROT_READ, PROT_WRITE, PhysMem)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS
UW = FAULT_FLAG_WRITE | FAULT_FLAG_USER


def new_mm(pages=64, swap=0):
    return MM(PhysMem(pages, swap_pages=swap, overcommit_memory=1))


def test_snapshot_shares_frames_and_write_protects():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm.poke(a, b"one")
    f = mm.pte(a).frame
    mm.drain_changes()
    snap = mm.snapshot()
    assert mm.pte(a).frame is f and not mm.pte(a).writable
    assert snap.ptes[a >> 12].frame is f and f.snap_refs == 1
    assert mm.drain_changes() == {a}
    assert mm.phys.charged == 1 and mm.phys.stats.allocs == 1      # nothing copied


def test_write_after_snapshot_looks_like_reuse_and_keeps_snapshot_bytes():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"one")
    f = mm.pte(a).frame
    snap = mm.snapshot()
    mm.phys.fail_allocations(persistent=True)                      # snapshots never OOM
    r = mm.handle_mm_fault(mm.find_vma(a), a, UW)
    assert r.bits == 0 and r.kinds() == ["vma_check", "reuse"]
    assert r.stages[-1].detail.get("snapshot_copy") is True
    mm.phys.fail_allocations(None)
    mm.pte(a).frame.data[0:3] = b"two"
    assert bytes(f.data[:3]) == b"one" and mm.read(a, 3) == b"two"
    assert mm.phys.charged == 1                                    # snapshot-only frame uncharged
    del snap


def test_restore_twice_with_frame_identity():
    mm = new_mm()
    a = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    d = mm.mmap(0, PAGE_SIZE, RW, DROP)
    mm.poke(a, b"A0")
    mm.poke(a + PAGE_SIZE, b"A1")
    mm.poke(d, b"D")
    frames = {x: mm.pte(x).frame for x in (a, a + PAGE_SIZE, d)}
    snap = mm.snapshot()
    locked = mm.locked_vm
    for round_ in range(2):
        mm.poke(a, b"X%d" % round_)
        mm.poke(a + 2 * PAGE_SIZE, b"new")
        mm.drop_droppable()
        mm.munmap(a + PAGE_SIZE, PAGE_SIZE)
        mm.mmap(0, 5 * PAGE_SIZE, RW, ANON)
        mm.drain_changes()
        mm.restore(snap)
        assert mm.read(a, 2) == b"A0" and mm.read(a + PAGE_SIZE, 2) == b"A1"
        assert mm.read(d, 1) == b"D" and mm.read(a + 2 * PAGE_SIZE, 3) == bytes(3)
        for x, f in frames.items():
            assert mm.pte(x).frame is f                             # shared, not copied
        assert [(v.start, v.end, v.vm_flags) for v in mm.vmas] == \
            [(v.start, v.end, v.vm_flags) for v in snap.vmas]
        assert mm.locked_vm == locked
        ch = mm.drain_changes()
        assert {a, a + PAGE_SIZE, a + 2 * PAGE_SIZE, d} <= ch
        assert mm.phys.charged == 3
    assert bytes(frames[a].data[:2]) == b"A0"


def test_restore_restores_locked_vm_def_flags_and_commit():
    mm = MM(PhysMem(64, overcommit_memory=0))
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    snap = mm.snapshot()
    committed = mm.phys.vm_committed_as
    mm.mlock(a, 2 * PAGE_SIZE)
    mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    assert mm.locked_vm == 2 and mm.phys.vm_committed_as == committed + 4
    mm.restore(snap)
    assert mm.locked_vm == 0 and mm.phys.vm_committed_as == committed
    assert mm.phys.charged == 0


def test_snapshot_only_frames_do_not_count_against_budget():
    mm = new_mm(pages=4)
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    for i in range(4):
        mm.poke(a + i * PAGE_SIZE, b"s")
    snap = mm.snapshot()
    mm.munmap(a, 4 * PAGE_SIZE)
    assert mm.phys.charged == 0
    b = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    for i in range(4):                                             # fits: no OOM, no reclaim
        assert mm.poke(b + i * PAGE_SIZE, b"n") == 1
    assert mm.phys.stats.reclaim_runs == 0
    mm.restore(snap)
    assert mm.read(a, 1) == b"s" and mm.phys.charged == 4


def test_snapshot_with_swapped_pages():
    mm = new_mm(pages=2, swap=8)
    a = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    for i in range(3):
        mm.poke(a + i * PAGE_SIZE, bytes([i + 1]))
    snap = mm.snapshot()
    for i in range(3):
        mm.poke(a + i * PAGE_SIZE, b"\xff")
    mm.restore(snap)
    assert [mm.read(a + i * PAGE_SIZE, 1) for i in range(3)] == [b"\x01", b"\x02", b"\x03"]


def test_release_and_gc_drop_snapshot_references():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"x")
    f = mm.pte(a).frame
    snap = mm.snapshot()
    assert f.snap_refs == 1
    snap.release()
    assert f.snap_refs == 0 and snap.released
    with pytest.raises(ValueError):
        mm.restore(snap)
    snap2 = mm.snapshot()
    assert f.snap_refs == 1
    del snap2
    gc.collect()
    assert f.snap_refs == 0


def test_restore_rejects_foreign_snapshot():
    phys = PhysMem(16, overcommit_memory=1)
    m1, m2 = MM(phys), MM(phys)
    with pytest.raises(ValueError):
        m2.restore(m1.snapshot())


def test_snapshot_then_fork_then_restore_keeps_child_intact():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"p")
    snap = mm.snapshot()
    child = mm.dup_mm()
    child.poke(a, b"c")
    mm.poke(a, b"q")
    mm.restore(snap)
    assert mm.read(a, 1) == b"p" and child.read(a, 1) == b"c"
