"""mmap/munmap/mprotect: MAP_DROPPABLE's flags and errors, VMA split and merge."""

import pytest

from mm import (EBADF, EEXIST, EINVAL, ENODEV, ENOMEM, EPERM, FAULT_FLAG_USER,
                FAULT_FLAG_WRITE, MAP_ANONYMOUS, MAP_DROPPABLE, MAP_FIXED,
                MAP_FIXED_NOREPLACE, MAP_GROWSDOWN, MAP_HUGETLB, MAP_LOCKED, MAP_NORESERVE,
                MAP_POPULATE, MAP_PRIVATE, MAP_SHARED, MAP_SHARED_VALIDATE, MAP_TYPE, MM,
                PAGE_SIZE, PROT_EXEC, PROT_NONE, PROT_READ, PROT_WRITE, VM_ACCOUNT,
                VM_DONTDUMP, VM_DROPPABLE, VM_EXEC, VM_GROWSDOWN, VM_MAYEXEC, VM_MAYREAD,
                VM_MAYWRITE, VM_NORESERVE, VM_READ, VM_WIPEONFORK, VM_WRITE, PhysMem)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS
UW = FAULT_FLAG_WRITE | FAULT_FLAG_USER


@pytest.fixture
def mm():
    return MM(PhysMem(1024, overcommit_memory=1))


def test_map_droppable_is_a_type_inside_map_type():
    assert MAP_DROPPABLE == 0x08 and MAP_TYPE == 0x0F and MAP_DROPPABLE & MAP_TYPE == MAP_DROPPABLE
    assert VM_DROPPABLE == 1 << 40


def test_map_droppable_sets_the_four_flags_and_is_private_anon(mm):
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP)
    assert a > 0 and a % PAGE_SIZE == 0
    v = mm.find_vma(a)
    want = VM_DROPPABLE | VM_NORESERVE | VM_WIPEONFORK | VM_DONTDUMP
    assert v.vm_flags & want == want
    assert v.vm_flags & (VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC) == \
        VM_READ | VM_WRITE | VM_MAYREAD | VM_MAYWRITE | VM_MAYEXEC
    assert not v.vm_flags & VM_ACCOUNT
    assert v.is_droppable and v.is_cow_mapping


@pytest.mark.parametrize("extra", [MAP_LOCKED, MAP_HUGETLB, MAP_GROWSDOWN],
                         ids=["locked", "hugetlb", "growsdown"])
def test_map_droppable_rejects_locked_hugetlb_growsdown(mm, extra):
    assert mm.mmap(0, PAGE_SIZE, RW, DROP | extra) == -EINVAL
    assert mm.vmas == []


@pytest.mark.parametrize("typ", [MAP_SHARED, MAP_PRIVATE, MAP_SHARED_VALIDATE],
                         ids=["shared", "private", "shared_validate"])
def test_map_droppable_combined_with_shared_or_private_is_einval(mm, typ):
    assert mm.mmap(0, PAGE_SIZE, RW, MAP_DROPPABLE | typ | MAP_ANONYMOUS) == -EINVAL


def test_map_droppable_file_backed_is_einval(mm):
    assert mm.mmap(0, PAGE_SIZE, RW, MAP_DROPPABLE, fd=3) == -EINVAL
    assert mm.mmap(0, PAGE_SIZE, RW, MAP_DROPPABLE, fd=-1) == -EBADF   # no fd at all
    assert mm.mmap(0, PAGE_SIZE, RW, MAP_PRIVATE, fd=3) == -ENODEV    # files not modelled


def test_other_mmap_errors(mm):
    assert mm.mmap(0, 0, RW, ANON) == -EINVAL
    assert mm.mmap(0, PAGE_SIZE, RW, ANON, offset=1) == -EINVAL
    assert mm.mmap(0, PAGE_SIZE, RW, MAP_ANONYMOUS) == -EINVAL        # no type
    assert mm.mmap(0, PAGE_SIZE, RW, MAP_SHARED | MAP_ANONYMOUS) == -ENODEV
    assert mm.mmap(0x1001, PAGE_SIZE, RW, ANON | MAP_FIXED) == -EINVAL
    assert mm.mmap(0x1000, PAGE_SIZE, RW, ANON | MAP_FIXED) == -EPERM  # below mmap_min_addr
    assert mm.mmap(0, PAGE_SIZE, RW, ANON | MAP_HUGETLB) == -ENOMEM    # no huge pages
    assert mm.mmap(0, 1 << 48, RW, ANON) == -ENOMEM


def test_mmap_hint_fixed_and_noreplace(mm):
    a = mm.mmap(0x40000000, PAGE_SIZE, RW, ANON)
    assert a == 0x40000000
    b = mm.mmap(0x40000000, PAGE_SIZE, RW, ANON)          # hint taken: placed elsewhere
    assert b > 0 and b != a
    assert mm.mmap(a, PAGE_SIZE, RW, ANON | MAP_FIXED_NOREPLACE) == -EEXIST
    mm.poke(a, b"old")
    assert mm.mmap(a, PAGE_SIZE, PROT_READ, ANON | MAP_FIXED) == a
    assert mm.read(a, 3) == bytes(3) and mm.find_vma(a).prot == PROT_READ


def test_mmap_lengths_are_page_rounded_and_top_down(mm):
    a = mm.mmap(0, 1, RW, ANON)
    b = mm.mmap(0, 5000, PROT_READ, ANON)              # different flags: no merge
    assert mm.find_vma(a).size == PAGE_SIZE and b == a - 2 * PAGE_SIZE
    assert mm.find_vma(b).size == 2 * PAGE_SIZE
    c = mm.mmap(0, 5000, PROT_READ, ANON)              # same flags, adjacent: merged
    assert c == b - 2 * PAGE_SIZE and mm.find_vma(c).end == a


def test_adjacent_compatible_mappings_merge_but_droppable_does_not_merge_with_plain(mm):
    a = mm.mmap(0x50000000, PAGE_SIZE, RW, ANON)
    b = mm.mmap(0x50001000, PAGE_SIZE, RW, ANON)
    assert b == a + PAGE_SIZE and len(mm.vmas) == 1 and mm.find_vma(a).end == a + 2 * PAGE_SIZE
    mm.mmap(0x50002000, PAGE_SIZE, RW, DROP)
    assert len(mm.vmas) == 2
    mm.mmap(0x50003000, PAGE_SIZE, RW, DROP)
    assert len(mm.vmas) == 2 and mm.find_vma(0x50003000).start == 0x50002000


def test_munmap_splits_and_frees(mm):
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    for i in range(4):
        mm.poke(a + i * PAGE_SIZE, b"z")
    assert mm.phys.charged == 4
    mm.drain_changes()
    assert mm.munmap(a + PAGE_SIZE, 2 * PAGE_SIZE) == 0
    assert [(v.start, v.end) for v in mm.vmas] == [(a, a + PAGE_SIZE), (a + 3 * PAGE_SIZE, a + 4 * PAGE_SIZE)]
    assert mm.phys.charged == 2
    assert mm.pte(a + PAGE_SIZE) is None and mm.find_vma(a + PAGE_SIZE) is None
    assert mm.drain_changes() == {a + PAGE_SIZE, a + 2 * PAGE_SIZE}
    assert mm.munmap(a + 1, PAGE_SIZE) == -EINVAL
    assert mm.munmap(a, 0) == -EINVAL
    assert mm.munmap(0x10000, PAGE_SIZE) == 0                # nothing there: fine


def test_mprotect_splits_merges_and_write_protects(mm):
    a = mm.mmap(0, 3 * PAGE_SIZE, RW, ANON)
    for i in range(3):
        mm.poke(a + i * PAGE_SIZE, b"p")
    mm.drain_changes()
    assert mm.mprotect(a + PAGE_SIZE, PAGE_SIZE, PROT_READ) == 0
    assert len(mm.vmas) == 3 and mm.find_vma(a + PAGE_SIZE).prot == PROT_READ
    assert not mm.pte(a + PAGE_SIZE).writable and mm.pte(a).writable
    assert mm.drain_changes() == {a + PAGE_SIZE}
    assert mm.mprotect(a + PAGE_SIZE, PAGE_SIZE, RW) == 0
    assert len(mm.vmas) == 1                                # merged back
    r = mm.handle_mm_fault(mm.find_vma(a + PAGE_SIZE), a + PAGE_SIZE, UW)
    assert r.kinds() == ["vma_check", "reuse"]               # lazily writable again


def test_mprotect_errors(mm):
    a = mm.mmap(0x60000000, 2 * PAGE_SIZE, RW, ANON)
    assert mm.mprotect(a + 1, PAGE_SIZE, PROT_READ) == -EINVAL
    assert mm.mprotect(a, PAGE_SIZE, 0x10) == -EINVAL
    assert mm.mprotect(a, 0, PROT_READ) == 0
    assert mm.mprotect(0x70000000, PAGE_SIZE, PROT_READ) == -ENOMEM
    # a hole: the part before it is changed, the call fails
    mm.munmap(a + PAGE_SIZE, PAGE_SIZE)
    mm.mmap(a + 2 * PAGE_SIZE, PAGE_SIZE, RW, ANON | MAP_FIXED)
    assert mm.mprotect(a, 3 * PAGE_SIZE, PROT_EXEC | PROT_READ) == -ENOMEM
    assert mm.find_vma(a).vm_flags & VM_EXEC
    assert not mm.find_vma(a + 2 * PAGE_SIZE).vm_flags & VM_EXEC


def test_mprotect_prot_none_then_fault_is_access_error(mm):
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"k")
    assert mm.mprotect(a, PAGE_SIZE, PROT_NONE) == 0
    assert mm.access_error(mm.find_vma(a), FAULT_FLAG_USER)
    assert mm.read(a, 1) == b"k"                           # contents kept


def test_growsdown_private_mapping(mm):
    a = mm.mmap(0, PAGE_SIZE, RW, ANON | MAP_GROWSDOWN)
    assert mm.find_vma(a).vm_flags & VM_GROWSDOWN


def test_map_populate_prefaults(mm):
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON | MAP_POPULATE)
    assert all(mm.pte(a + i * PAGE_SIZE).writable for i in range(4))
    b = mm.mmap(0, 2 * PAGE_SIZE, PROT_READ, ANON | MAP_POPULATE)
    assert mm.pte(b).frame is mm.phys.zero_frame


def test_map_populate_on_droppable_under_oom_is_best_effort(mm):
    mm.phys.fail_allocations(persistent=True)
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, DROP | MAP_POPULATE)
    assert a > 0 and mm.pte(a) is None


def test_map_noreserve_is_not_accounted_in_heuristic_mode():
    mm = MM(PhysMem(1024))
    a = mm.mmap(0, PAGE_SIZE, RW, ANON | MAP_NORESERVE)
    assert mm.find_vma(a).vm_flags & VM_NORESERVE and mm.phys.vm_committed_as == 0
