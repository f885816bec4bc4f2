"""madvise: flag advice with splitting, droppable refusals, DONTNEED, holes."""

import pytest

from mm import (EFAULT, EINVAL, ENOMEM, EPERM, MADV_DODUMP, MADV_DOFORK, MADV_DONTDUMP,
                MADV_DONTFORK, MADV_DONTNEED, MADV_GUARD_INSTALL, MADV_HWPOISON,
                MADV_KEEPONFORK, MADV_MERGEABLE, MADV_POPULATE_READ, MADV_POPULATE_WRITE,
                MADV_UNMERGEABLE, MADV_WIPEONFORK, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED,
                MAP_PRIVATE, MM, PAGE_SIZE, PROT_READ, PROT_WRITE, VM_DONTCOPY, VM_DONTDUMP,
                VM_MERGEABLE, VM_WIPEONFORK, PhysMem)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS


@pytest.fixture
def mm():
    return MM(PhysMem(256, overcommit_memory=1))


@pytest.mark.parametrize("advice", [MADV_KEEPONFORK, MADV_DODUMP], ids=["keeponfork", "dodump"])
def test_keeponfork_and_dodump_on_droppable_are_einval(mm, advice):
    d = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    before = mm.find_vma(d).vm_flags
    assert mm.madvise(d, 2 * PAGE_SIZE, advice) == -EINVAL
    assert mm.find_vma(d).vm_flags == before and len(mm.vmas) == 1


def test_other_advice_on_droppable_is_fine(mm):
    d = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    for adv in (MADV_WIPEONFORK, MADV_DONTDUMP, MADV_DONTFORK, MADV_DOFORK):
        assert mm.madvise(d, 2 * PAGE_SIZE, adv) == 0


def test_flag_advice_splits_and_merges_back(mm):
    a = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    assert mm.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_WIPEONFORK) == 0
    assert len(mm.vmas) == 3 and mm.find_vma(a + PAGE_SIZE).vm_flags & VM_WIPEONFORK
    assert mm.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_KEEPONFORK) == 0
    assert len(mm.vmas) == 1
    assert mm.madvise(a, PAGE_SIZE, MADV_DONTDUMP) == 0
    assert mm.find_vma(a).vm_flags & VM_DONTDUMP
    assert mm.madvise(a, PAGE_SIZE, MADV_DODUMP) == 0 and len(mm.vmas) == 1
    assert mm.madvise(a, PAGE_SIZE, MADV_DONTFORK) == 0
    assert mm.find_vma(a).vm_flags & VM_DONTCOPY
    assert mm.madvise(a, PAGE_SIZE, MADV_DOFORK) == 0 and len(mm.vmas) == 1


def test_dontneed_zaps_pages_and_they_read_zero(mm):
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm.poke(a, b"gone")
    mm.poke(a + PAGE_SIZE, b"kept")
    mm.drain_changes()
    assert mm.madvise(a, PAGE_SIZE, MADV_DONTNEED) == 0
    assert mm.pte(a) is None and mm.read(a, 4) == bytes(4)
    assert mm.read(a + PAGE_SIZE, 4) == b"kept"
    assert mm.drain_changes() == {a} and mm.phys.charged == 1


def test_dontneed_on_droppable(mm):
    d = mm.mmap(0, PAGE_SIZE, RW, DROP)
    mm.poke(d, b"x")
    assert mm.madvise(d, PAGE_SIZE, MADV_DONTNEED) == 0
    assert mm.read(d, 1) == b"\x00"


def test_dontneed_on_locked_is_einval(mm):
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.mlock(a, PAGE_SIZE)
    assert mm.madvise(a, PAGE_SIZE, MADV_DONTNEED) == -EINVAL


def test_hole_gives_enomem_after_applying_to_mapped_parts(mm):
    a = mm.mmap(0x40000000, PAGE_SIZE, RW, ANON)
    b = mm.mmap(0x40002000, PAGE_SIZE, RW, ANON | MAP_FIXED)
    assert mm.madvise(a, 3 * PAGE_SIZE, MADV_DONTDUMP) == -ENOMEM
    assert mm.find_vma(a).vm_flags & VM_DONTDUMP and mm.find_vma(b).vm_flags & VM_DONTDUMP


def test_argument_errors(mm):
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    assert mm.madvise(a + 1, PAGE_SIZE, MADV_DONTNEED) == -EINVAL
    assert mm.madvise(a, PAGE_SIZE, 999) == -EINVAL
    assert mm.madvise(a, 0, MADV_DONTNEED) == 0
    assert mm.madvise(a, PAGE_SIZE, MADV_HWPOISON) == -EPERM


def test_populate_advice(mm):
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    assert mm.madvise(a, 2 * PAGE_SIZE, MADV_POPULATE_READ) == 0
    assert mm.pte(a).frame is mm.phys.zero_frame
    assert mm.madvise(a, 2 * PAGE_SIZE, MADV_POPULATE_WRITE) == 0
    assert mm.pte(a).writable
    mm.phys.fail_allocations(persistent=True)
    b = mm.mmap(0, PAGE_SIZE, RW, ANON)
    assert mm.madvise(b, PAGE_SIZE, MADV_POPULATE_WRITE) == -ENOMEM


def test_populate_errnos_follow_the_kernel(mm):
    """6.18: a VMA the access is not allowed in is -EINVAL (not -EFAULT), a hole
    -ENOMEM after the mapped part before it was populated, a guard page -EFAULT."""
    r = mm.mmap(0, 2 * PAGE_SIZE, PROT_READ, DROP)
    n = mm.mmap(0, 2 * PAGE_SIZE, 0, DROP)
    assert mm.madvise(r, 2 * PAGE_SIZE, MADV_POPULATE_WRITE) == -EINVAL
    assert mm.madvise(n, 2 * PAGE_SIZE, MADV_POPULATE_READ) == -EINVAL
    assert mm.madvise(r, 2 * PAGE_SIZE, MADV_POPULATE_READ) == 0
    a = mm.mmap(0x10000000, 2 * PAGE_SIZE, RW, ANON | MAP_FIXED)
    assert mm.madvise(a, 3 * PAGE_SIZE, MADV_POPULATE_WRITE) == -ENOMEM
    assert mm.pte(a).writable and mm.pte(a + PAGE_SIZE).writable
    assert mm.madvise(a + PAGE_SIZE, PAGE_SIZE, MADV_GUARD_INSTALL) == 0
    assert mm.madvise(a, 2 * PAGE_SIZE, MADV_POPULATE_READ) == -EFAULT


def test_ksm_advice(mm):
    """MADV_MERGEABLE sets VM_MERGEABLE ("mg") where KSM may merge; on droppable
    (and special) VMAs it is accepted and ignored, as vma_ksm_compatible() says."""
    d = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    before = mm.find_vma(d).vm_flags
    assert mm.madvise(d, 2 * PAGE_SIZE, MADV_MERGEABLE) == 0
    assert mm.madvise(d, 2 * PAGE_SIZE, MADV_UNMERGEABLE) == 0
    assert mm.find_vma(d).vm_flags == before
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    assert mm.madvise(a, PAGE_SIZE, MADV_MERGEABLE) == 0
    assert mm.find_vma(a).vm_flags & VM_MERGEABLE
    assert not mm.find_vma(a + PAGE_SIZE).vm_flags & VM_MERGEABLE
    assert mm.madvise(a, PAGE_SIZE, MADV_UNMERGEABLE) == 0
    assert mm.find_vma(a).end == a + 2 * PAGE_SIZE              # merged back
