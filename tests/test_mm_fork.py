"""dup_mm (fork): COW sharing, wipe-on-fork, don't-copy, droppable inheritance, locks."""

from mm import (ENOMEM, FAULT_FLAG_USER, FAULT_FLAG_WRITE, MADV_DONTFORK, MADV_WIPEONFORK,
                MAP_ANONYMOUS, MAP_DROPPABLE, MAP_PRIVATE, MCL_CURRENT, MCL_FUTURE, MM,
                PAGE_SIZE, PROT_READ, PROT_WRITE, VM_DONTDUMP, VM_DROPPABLE, VM_LOCKED,
                VM_NORESERVE, VM_WIPEONFORK, PhysMem)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS
UW = FAULT_FLAG_WRITE | FAULT_FLAG_USER
UR = FAULT_FLAG_USER


def new_mm(pages=256, **kw):
    return MM(PhysMem(pages, overcommit_memory=kw.pop("overcommit", 1)), **kw)


def test_fork_shares_frames_cow_and_write_protects_both():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm.poke(a, b"hello")
    mm.handle_mm_fault(mm.find_vma(a), a + PAGE_SIZE, UR)       # zero page
    mm.drain_changes()
    child = mm.dup_mm()
    assert isinstance(child, MM) and child.phys is mm.phys
    f = mm.pte(a).frame
    assert child.pte(a).frame is f and f.mapcount == 2
    assert not mm.pte(a).writable and not child.pte(a).writable
    assert child.pte(a + PAGE_SIZE).frame is mm.phys.zero_frame
    assert a in mm.drain_changes()                              # parent was write-protected
    assert {a, a + PAGE_SIZE} <= child.drain_changes()
    assert mm.phys.charged == 1                                 # shared, not copied
    child.poke(a, b"HELLO")
    assert mm.read(a, 5) == b"hello" and child.read(a, 5) == b"HELLO"


def test_wipeonfork_child_reads_zeros():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"secret")
    assert mm.madvise(a, PAGE_SIZE, MADV_WIPEONFORK) == 0
    child = mm.dup_mm()
    v = child.find_vma(a)
    assert v is not None and v.vm_flags & VM_WIPEONFORK
    assert child.pte(a) is None and child.read(a, 6) == bytes(6)
    r = child.handle_mm_fault(v, a, UR)
    assert r.kinds()[-1] == "map_zero_page"
    assert mm.read(a, 6) == b"secret" and mm.pte(a).writable      # parent untouched


def test_droppable_inherited_and_child_mapping_empty():
    mm = new_mm()
    d = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    mm.poke(d, b"state")
    child = mm.dup_mm()
    v = child.find_vma(d)
    want = VM_DROPPABLE | VM_WIPEONFORK | VM_DONTDUMP | VM_NORESERVE
    assert v.vm_flags & want == want
    assert child.read(d, 5) == bytes(5) and child.pte(d) is None
    child.poke(d, b"x")
    assert child.pte(d).frame.droppable
    assert child.drop_droppable() == 1 and child.read(d, 1) == b"\x00"
    assert mm.read(d, 5) == b"state"


def test_dontcopy_vma_absent_in_child():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    b = mm.mmap(0, PAGE_SIZE, PROT_READ, ANON)
    mm.poke(a, b"x")
    assert mm.madvise(a, PAGE_SIZE, MADV_DONTFORK) == 0
    child = mm.dup_mm()
    assert child.find_vma(a) is None and child.pte(a) is None
    assert child.find_vma(b) is not None
    assert mm.pte(a).writable                                   # not shared, not protected


def test_locks_not_inherited():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    assert mm.mlock(a, 2 * PAGE_SIZE) == 0
    assert mm.mlockall(MCL_CURRENT | MCL_FUTURE) == 0
    assert mm.locked_vm == 2
    child = mm.dup_mm()
    assert child.locked_vm == 0 and child.def_flags == 0
    assert not child.find_vma(a).vm_flags & VM_LOCKED
    assert mm.find_vma(a).vm_flags & VM_LOCKED
    b = child.mmap(0, PAGE_SIZE, RW, ANON)
    assert not child.find_vma(b).vm_flags & VM_LOCKED


def test_fork_inherits_policy_and_rlimit():
    mm = new_mm(droppable_oom="retry", rlimit_memlock=1 << 20)
    child = mm.dup_mm()
    assert child.droppable_oom == "retry" and child.rlimit_memlock == 1 << 20
    child.droppable_oom = "skip"
    assert mm.droppable_oom == "retry"


def test_swap_entries_shared_on_fork():
    mm = MM(PhysMem(2, swap_pages=8, overcommit_memory=1))
    a = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    for i in range(3):
        mm.poke(a + i * PAGE_SIZE, bytes([i + 1]))
    swapped = [i for i in range(3) if mm.pte(a + i * PAGE_SIZE).swapped]
    assert swapped
    child = mm.dup_mm()
    for i in swapped:
        x = a + i * PAGE_SIZE
        assert child.pte(x).swap_slot == mm.pte(x).swap_slot
        assert child.read(x, 1) == bytes([i + 1])


def test_fork_fails_with_enomem_under_strict_overcommit():
    phys = PhysMem(100, overcommit_memory=2, overcommit_ratio=100)
    phys.admin_reserve_pages = phys.user_reserve_pages = 0
    mm = MM(phys)
    assert mm.mmap(0, 60 * PAGE_SIZE, RW, ANON) > 0
    assert phys.vm_committed_as == 60
    assert mm.dup_mm() == -ENOMEM
    assert phys.vm_committed_as == 60
    d = mm.mmap(0, 60 * PAGE_SIZE, RW, DROP)                    # droppable costs nothing
    assert d > 0 and phys.vm_committed_as == 60


def test_exit_mmap_frees_everything():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm.poke(a, b"x")
    child = mm.dup_mm()
    child.exit_mmap()
    assert mm.pte(a).frame.mapcount == 1 and mm.phys.charged == 1
    assert mm.phys.vm_committed_as == 2
