"""mlock family: RLIMIT_MEMLOCK accounting, population, and droppable exemptions."""

import pytest

from mm import (EAGAIN, EINVAL, ENOMEM, EPERM, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_LOCKED,
                MAP_PRIVATE, MCL_CURRENT, MCL_FUTURE, MCL_ONFAULT, MLOCK_ONFAULT, MM,
                PAGE_SIZE, PROT_READ, PROT_WRITE, VM_LOCKED, VM_LOCKONFAULT, PhysMem)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS


def new_mm(limit_pages=16, pages=1024, **kw):
    return MM(PhysMem(pages, overcommit_memory=1), rlimit_memlock=limit_pages * PAGE_SIZE, **kw)


def test_mlock_charges_locked_vm_and_populates():
    mm = new_mm()
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    assert mm.mlock(a + PAGE_SIZE, 2 * PAGE_SIZE) == 0
    assert mm.locked_vm == 2
    assert [v.vm_flags & VM_LOCKED != 0 for v in mm.vmas] == [False, True, False]
    assert mm.pte(a + PAGE_SIZE).writable and mm.pte(a + 2 * PAGE_SIZE).writable
    assert mm.pte(a) is None
    assert mm.mlock(a + PAGE_SIZE, 2 * PAGE_SIZE) == 0       # again: no double count
    assert mm.locked_vm == 2
    assert mm.munlock(a, 4 * PAGE_SIZE) == 0
    assert mm.locked_vm == 0 and len(mm.vmas) == 1


def test_mlock_over_rlimit_is_enomem_and_rlimit_zero_is_eperm():
    mm = new_mm(limit_pages=2)
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    assert mm.mlock(a, 3 * PAGE_SIZE) == -ENOMEM
    assert mm.locked_vm == 0
    assert mm.mlock(a, 2 * PAGE_SIZE) == 0
    assert mm.mlock(a + 2 * PAGE_SIZE, PAGE_SIZE) == -ENOMEM
    assert new_mm(limit_pages=0).mlock(a, PAGE_SIZE) == -EPERM
    cap = new_mm(limit_pages=0, cap_ipc_lock=True)
    b = cap.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    assert cap.mlock(b, 4 * PAGE_SIZE) == 0 and cap.locked_vm == 4


def test_mlock_hole_is_enomem():
    mm = new_mm()
    a = mm.mmap(0x40000000, PAGE_SIZE, RW, ANON)
    assert mm.mlock(a, 2 * PAGE_SIZE) == -ENOMEM


def test_map_locked_over_rlimit_is_eagain():
    mm = new_mm(limit_pages=2)
    assert mm.mmap(0, 3 * PAGE_SIZE, RW, ANON | MAP_LOCKED) == -EAGAIN
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON | MAP_LOCKED)
    assert a > 0 and mm.locked_vm == 2 and mm.pte(a).writable      # populated
    assert new_mm(limit_pages=0).mmap(0, PAGE_SIZE, RW, ANON | MAP_LOCKED) == -EPERM


def test_mlock_on_droppable_succeeds_but_neither_locks_nor_charges():
    mm = new_mm()
    d = mm.mmap(0, 4 * PAGE_SIZE, RW, DROP)
    assert mm.mlock(d, 4 * PAGE_SIZE) == 0
    assert mm.locked_vm == 0
    assert not mm.find_vma(d).vm_flags & (VM_LOCKED | VM_LOCKONFAULT)
    assert mm.pte(d).writable                                   # populated nonetheless
    assert mm.drop_droppable() == 4                             # and still droppable
    assert mm.munlock(d, 4 * PAGE_SIZE) == 0


def test_mlock_estimate_counts_droppable_length_like_linux():
    mm = new_mm(limit_pages=2)
    d = mm.mmap(0, 4 * PAGE_SIZE, RW, DROP)
    assert mm.mlock(d, 4 * PAGE_SIZE) == -ENOMEM


def test_mlockall_current_skips_droppable():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    d = mm.mmap(0, 3 * PAGE_SIZE, RW, DROP)
    assert mm.mlockall(MCL_CURRENT) == 0
    assert mm.locked_vm == 2
    assert mm.find_vma(a).vm_flags & VM_LOCKED
    assert not mm.find_vma(d).vm_flags & VM_LOCKED
    assert mm.munlockall() == 0 and mm.locked_vm == 0


@pytest.mark.parametrize("mcl", [MCL_FUTURE, MCL_FUTURE | MCL_ONFAULT])
def test_mcl_future_droppable_follows_the_kernels_order(mcl):
    """do_mmap builds vm_flags with def_flags: VM_LOCKED is there for the
    RLIMIT_MEMLOCK check and the populate decision; only the last step of
    mmap_region drops it from the droppable VMA (tests/test_mm_probes.py
    mcl_* and unpriv_* check the same against the host)."""
    mm = new_mm(limit_pages=4)
    assert mm.mlockall(mcl) == 0
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    assert mm.find_vma(a).vm_flags & VM_LOCKED and mm.locked_vm == 2
    assert (mm.pte(a) is not None) == (not mcl & MCL_ONFAULT)   # populated unless on-fault
    assert mm.mmap(0, 8 * PAGE_SIZE, RW, DROP) == -EAGAIN       # 2 + 8 > 4: refused
    d = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)                     # 2 + 2 <= 4: fine
    assert d > 0
    v = mm.find_vma(d)
    assert not v.vm_flags & (VM_LOCKED | VM_LOCKONFAULT) and mm.locked_vm == 2
    assert mm.pte(d).writable and mm.pte(d + PAGE_SIZE).writable   # populated, even ONFAULT
    d2 = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)                    # droppable ones never count
    assert d2 > 0 and mm.locked_vm == 2
    assert mm.mmap(0, 3 * PAGE_SIZE, RW, ANON) == -EAGAIN       # plain ones still limited


def test_mcl_onfault_and_mlock2_onfault_do_not_populate():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    assert mm.mlock2(a, 2 * PAGE_SIZE, MLOCK_ONFAULT) == 0
    v = mm.find_vma(a)
    assert v.vm_flags & VM_LOCKONFAULT and mm.pte(a) is None and mm.locked_vm == 2
    assert mm.mlock2(a, PAGE_SIZE, 0x2) == -EINVAL
    assert mm.mlockall(MCL_CURRENT | MCL_ONFAULT) == 0
    assert mm.pte(a) is None


@pytest.mark.parametrize("flags", [0, MCL_ONFAULT, 0x8])
def test_mlockall_invalid_flags(flags):
    assert new_mm().mlockall(flags) == -EINVAL


def test_mlockall_current_over_limit_is_enomem():
    mm = new_mm(limit_pages=2)
    mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    assert mm.mlockall(MCL_CURRENT) == -ENOMEM


def test_munmap_of_locked_range_uncharges():
    mm = new_mm()
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON | MAP_LOCKED)
    assert mm.locked_vm == 4
    mm.munmap(a, 2 * PAGE_SIZE)
    assert mm.locked_vm == 2


def test_mlock_populate_oom_is_eagain():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm.phys.fail_allocations(persistent=True)
    assert mm.mlock(a, 2 * PAGE_SIZE) == -EAGAIN
