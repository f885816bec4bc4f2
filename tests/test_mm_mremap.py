"""mremap and guard regions beyond what the host probes can observe: what moves
with a mapping (frames, swap entries, COW sharing, guard markers), the books
(commit charge, locked_vm, rmap), the change log, and guard markers as the
emulator sees them. tests/test_mm_probes.py compares the visible behaviour with
the running kernel."""

from mm import (EFAULT, EINVAL, ENOMEM, FAULT_FLAG_USER, FAULT_FLAG_WRITE,
                MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_GUARD_REMOVE, MAP_ANONYMOUS,
                MAP_DROPPABLE, MAP_FIXED, MAP_LOCKED, MAP_PRIVATE, MM, MREMAP_DONTUNMAP,
                MREMAP_FIXED, MREMAP_MAYMOVE, OVERCOMMIT_NEVER, PAGE_SIZE, PROT_READ,
                PROT_WRITE, VM_DROPPABLE, VM_FAULT_SIGSEGV, VM_LOCKED, VM_MAYBE_GUARD,
                PhysMem)

P = PAGE_SIZE
RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS
BASE = 0x200000000


def new_mm(pages=256, swap=0, **kw):
    return MM(PhysMem(pages, swap_pages=swap, overcommit_memory=1), cap_ipc_lock=True, **kw)


def fill(mm, addr, n, byte):
    for i in range(n):
        assert mm.poke(addr + i * P, bytes([byte + i])) == 1


def test_move_carries_frames_not_copies():
    mm = new_mm()
    a = mm.mmap(BASE, 4 * P, RW, ANON | MAP_FIXED)
    fill(mm, a, 4, 10)
    frames = [mm.pte(a + i * P).frame for i in range(4)]
    allocs = mm.phys.stats.allocs
    mm.mmap(a + 4 * P, P, PROT_READ, ANON | MAP_FIXED)          # blocks growth in place
    n = mm.mremap(a, 4 * P, 8 * P, MREMAP_MAYMOVE)
    assert n > 0 and n != a
    assert [mm.pte(n + i * P).frame for i in range(4)] == frames
    assert all(f.rmap == {(mm, n + i * P)} for i, f in enumerate(frames))
    assert mm.phys.stats.allocs == allocs                       # nothing copied or faulted
    assert mm.read(n, 1) == bytes([10]) and mm.read(n + 3 * P, 1) == bytes([13])
    assert mm.find_vma(a) is None and mm.pte(a) is None


def test_move_of_cow_shared_and_swapped_pages():
    mm = new_mm(pages=6, swap=16)
    a = mm.mmap(BASE, 8 * P, RW, ANON | MAP_FIXED)
    fill(mm, a, 8, 1)                                            # some get swapped out
    swapped = [i for i in range(8) if mm.pte(a + i * P).swapped]
    assert swapped
    child = mm.dup_mm()
    n = mm.mremap(a, 8 * P, 8 * P, MREMAP_MAYMOVE | MREMAP_FIXED, BASE + 0x100000)
    assert n == BASE + 0x100000
    for i in swapped:
        assert mm.pte(n + i * P).swap_slot == child.pte(a + i * P).swap_slot
    assert mm.read(n, 8 * P)[::P] == bytes(range(1, 9))
    assert child.read(a, 8 * P)[::P] == bytes(range(1, 9))
    # A write in the parent at the new address still breaks COW, the child keeps its byte.
    mm.poke(n + 7 * P, b"\xff")
    assert child.read(a + 7 * P, 1) == b"\x08"


def test_change_log_names_both_ranges():
    mm = new_mm()
    a = mm.mmap(BASE, 2 * P, RW, ANON | MAP_FIXED)
    fill(mm, a, 2, 1)
    mm.drain_changes()
    n = mm.mremap(a, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, BASE + 0x10000)
    assert mm.drain_changes() == {a, a + P, n, n + P}


def test_grow_in_place_charges_and_shrink_uncharges():
    phys = PhysMem(64, overcommit_memory=OVERCOMMIT_NEVER, overcommit_ratio=100)
    mm = MM(phys)
    a = mm.mmap(BASE, 4 * P, RW, ANON | MAP_FIXED)
    assert phys.vm_committed_as == 4
    assert mm.mremap(a, 4 * P, 16 * P, 0) == a and phys.vm_committed_as == 16
    assert mm.mremap(a, 16 * P, 2 * P, 0) == a and phys.vm_committed_as == 2
    assert mm.mremap(a, 2 * P, 1000 * P, 0) == -ENOMEM and phys.vm_committed_as == 2


def test_locked_grow_populates_and_dontunmap_keeps_locked_vm_high():
    mm = new_mm()
    a = mm.mmap(BASE, 2 * P, RW, ANON | MAP_LOCKED | MAP_FIXED)
    assert mm.locked_vm == 2
    assert mm.mremap(a, 2 * P, 4 * P, 0) == a
    assert mm.locked_vm == 4 and all(mm.pte(a + i * P).writable for i in range(4))
    n = mm.mremap(a, 4 * P, 4 * P, MREMAP_MAYMOVE | MREMAP_FIXED | MREMAP_DONTUNMAP, BASE + 0x100000)
    assert n == BASE + 0x100000
    assert not mm.find_vma(a).vm_flags & VM_LOCKED and mm.find_vma(n).vm_flags & VM_LOCKED
    assert mm.locked_vm == 8                    # 4 for the copy + 4 never given back (6.18)
    assert all(mm.pte(a + i * P) is None for i in range(4))


def test_droppable_stays_droppable_and_dontunmap_leaves_it_empty():
    mm = new_mm()
    d = mm.mmap(BASE, 2 * P, RW, DROP | MAP_FIXED)
    fill(mm, d, 2, 7)
    n = mm.mremap(d, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP)
    assert n > 0 and mm.find_vma(n).vm_flags & VM_DROPPABLE
    assert mm.find_vma(d).vm_flags == mm.find_vma(n).vm_flags
    assert mm.read(n, 1) == b"\x07" and mm.read(d, 1) == b"\x00"
    assert mm.drop_droppable() == 2 and mm.read(n, 1) == b"\x00"


def test_errors():
    mm = new_mm()
    a = mm.mmap(BASE, 2 * P, RW, ANON | MAP_FIXED)
    assert mm.mremap(a, P, P, 8) == -EINVAL
    assert mm.mremap(a, P, P, MREMAP_FIXED, BASE + 0x10000) == -EINVAL
    assert mm.mremap(a, P, 2 * P, MREMAP_MAYMOVE | MREMAP_DONTUNMAP) == -EINVAL
    assert mm.mremap(a + 1, P, P, 0) == -EINVAL
    assert mm.mremap(a, P, 0, 0) == -EINVAL
    assert mm.mremap(a, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, a + P) == -EINVAL  # overlap
    assert mm.mremap(BASE + 0x100000, P, 2 * P, MREMAP_MAYMOVE) == -EFAULT
    assert mm.mremap(a, 4 * P, 8 * P, MREMAP_MAYMOVE) == -EFAULT              # past the VMA
    assert mm.mremap(a, 0, P, MREMAP_MAYMOVE) == -EINVAL                       # private


def test_guard_marker_is_what_the_emulator_sees():
    mm = new_mm()
    a = mm.mmap(BASE, 4 * P, RW, ANON | MAP_FIXED)
    fill(mm, a, 4, 1)
    mm.drain_changes()
    assert mm.madvise(a + P, 2 * P, MADV_GUARD_INSTALL) == 0
    assert mm.drain_changes() == {a + P, a + 2 * P}
    pte = mm.pte(a + P)
    assert pte.guard and pte.frame is None and not pte.none and not pte.writable
    assert mm.find_vma(a).vm_flags & VM_MAYBE_GUARD and len(mm.vmas) == 1
    vma = mm.find_vma(a + P)
    for flags in (FAULT_FLAG_USER, FAULT_FLAG_USER | FAULT_FLAG_WRITE, 0):
        res = mm.handle_mm_fault(vma, a + P + 8, flags)
        assert res.bits == VM_FAULT_SIGSEGV
        assert res.stages[-1].kind == "sigsegv" and res.stages[-1].detail["reason"] == "guard_region"
    # Instruction fetch stops short at the guard page; FOLL_FORCE writes fail there.
    mm.poke(a + P - 4, b"\x0f\x0b\x90\x90")
    assert mm.copy_from_user(a + P - 4, 15) == b"\x0f\x0b\x90\x90"
    assert mm.copy_from_user(a + P, 15) == b""
    assert mm.poke(a + P - 1, b"xy") == 1
    assert mm.madvise(a, 4 * P, MADV_DONTNEED) == 0 and mm.pte(a + P).guard
    assert mm.madvise(a + P, P, MADV_GUARD_REMOVE) == 0
    assert mm.pte(a + P) is None and mm.pte(a + 2 * P).guard
    assert mm.find_vma(a).vm_flags & VM_MAYBE_GUARD              # "maybe": never cleared
    assert mm.munmap(a, 4 * P) == 0 and mm.pte(a + 2 * P) is None


def test_guard_markers_follow_fork_except_wipeonfork():
    mm = new_mm()
    a = mm.mmap(BASE, 2 * P, RW, ANON | MAP_FIXED)
    d = mm.mmap(BASE + 0x10000, 2 * P, RW, DROP | MAP_FIXED)
    mm.madvise(a, P, MADV_GUARD_INSTALL)
    mm.madvise(d, P, MADV_GUARD_INSTALL)
    child = mm.dup_mm()
    assert child.pte(a).guard and child.find_vma(a).vm_flags & VM_MAYBE_GUARD
    assert child.pte(d) is None                                  # wiped, markers too
    assert child.find_vma(d).vm_flags & VM_MAYBE_GUARD


def test_guard_markers_move_with_mremap():
    mm = new_mm()
    a = mm.mmap(BASE, 2 * P, RW, ANON | MAP_FIXED)
    mm.madvise(a + P, P, MADV_GUARD_INSTALL)
    n = mm.mremap(a, 2 * P, 2 * P, MREMAP_MAYMOVE | MREMAP_FIXED, BASE + 0x100000)
    assert mm.pte(n + P).guard and mm.pte(a + P) is None
