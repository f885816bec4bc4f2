"""Anonymous faults: zero page, zero-fill, COW copy vs reuse, OOM bits per policy."""

import pytest

from mm import (FAULT_FLAG_INSTRUCTION, FAULT_FLAG_USER, FAULT_FLAG_WRITE, MAP_ANONYMOUS,
                MAP_DROPPABLE, MAP_PRIVATE, MM, PAGE_SIZE, PROT_EXEC, PROT_READ, PROT_WRITE,
                STAGE_KINDS, VM_FAULT_MAJOR, VM_FAULT_OOM, VM_FAULT_SIGSEGV,
                VM_FAULT_SKIP_INSN, PhysMem, access_error)

RW = PROT_READ | PROT_WRITE
ANON = MAP_PRIVATE | MAP_ANONYMOUS
DROP = MAP_DROPPABLE | MAP_ANONYMOUS
UW = FAULT_FLAG_WRITE | FAULT_FLAG_USER          # user-mode write
UR = FAULT_FLAG_USER                             # user-mode read
KW = FAULT_FLAG_WRITE                            # kernel-mode write (copy_to_user)


def fault(mm, addr, flags):
    return mm.handle_mm_fault(mm.find_vma(addr), addr, flags)


def new_mm(pages=64, swap=0, policy="skip", overcommit=1):
    # overcommit 1 by default: these tests are about faults, not mmap-time accounting
    return MM(PhysMem(pages, swap_pages=swap, overcommit_memory=overcommit),
              droppable_oom=policy)


def test_vm_fault_skip_insn_is_v13_value_and_unused_bit():
    assert VM_FAULT_SKIP_INSN == 0x008000
    from mm import flags
    others = [v for k, v in vars(flags).items() if k.startswith("VM_FAULT_") and isinstance(v, int)
              and k not in ("VM_FAULT_SKIP_INSN", "VM_FAULT_ERROR", "VM_FAULT_HINDEX_MASK")]
    assert all(v & VM_FAULT_SKIP_INSN == 0 for v in others)
    assert flags.VM_FAULT_HINDEX_MASK & VM_FAULT_SKIP_INSN == 0


def test_read_fault_maps_zero_page_without_allocating():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    r = fault(mm, a, UR)
    assert r.bits == 0 and r.kinds() == ["vma_check", "map_zero_page"]
    pte = mm.pte(a)
    assert pte.frame is mm.phys.zero_frame and not pte.writable
    assert mm.phys.charged == 0 and mm.phys.stats.allocs == 0
    assert mm.read(a, 16) == bytes(16)


def test_read_fault_on_droppable_maps_zero_page_too():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, DROP)
    r = fault(mm, a, UR)
    assert r.kinds()[-1] == "map_zero_page"
    assert mm.pte(a).frame is mm.phys.zero_frame


def test_write_fault_allocates_zeroed_writable_frame():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    r = fault(mm, a, UW)
    assert r.bits == 0 and r.kinds() == ["vma_check", "alloc", "zero_fill"]
    pte = mm.pte(a)
    assert pte.writable and pte.frame is not mm.phys.zero_frame
    assert bytes(pte.frame.data) == bytes(PAGE_SIZE)
    assert len(pte.frame.data) == PAGE_SIZE
    assert mm.phys.charged == 1


def test_write_after_zero_page_allocates_fresh_zeroed_frame():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    fault(mm, a, UR)
    r = fault(mm, a, UW)
    assert r.kinds() == ["vma_check", "alloc", "zero_fill"]
    assert r.stages[-1].detail["from_zero_page"] is True
    assert mm.pte(a).frame is not mm.phys.zero_frame and mm.pte(a).writable
    assert mm.stats.faults_by_kind["wp_zero"] == 1
    assert bytes(mm.phys.zero_frame.data) == bytes(PAGE_SIZE)


def test_cow_copy_when_shared_and_reuse_when_sole_owner():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"parent")
    child = mm.dup_mm()
    shared = mm.pte(a).frame
    assert child.pte(a).frame is shared and shared.mapcount == 2
    assert not mm.pte(a).writable and not child.pte(a).writable

    r = fault(child, a, UW)                      # shared -> copy
    assert r.kinds() == ["vma_check", "alloc", "cow_copy"]
    copy = child.pte(a).frame
    assert copy is not shared and bytes(copy.data[:6]) == b"parent"
    assert child.pte(a).writable and child.stats.cow_copies == 1

    r = fault(mm, a, UW)                         # now sole owner -> reuse, no allocation
    assert r.kinds() == ["vma_check", "reuse"]
    assert mm.pte(a).frame is shared and mm.pte(a).writable
    assert mm.stats.reuses == 1 and mm.stats.cow_copies == 0


def test_spurious_fault_when_pte_already_allows_access():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    fault(mm, a, UW)
    r = fault(mm, a, UW)
    assert r.bits == 0 and r.kinds() == ["vma_check", "spurious"]


def test_fault_outside_any_vma_is_sigsegv():
    mm = new_mm()
    r = mm.handle_mm_fault(None, 0x1000, UR)
    assert r.bits == VM_FAULT_SIGSEGV and r.kinds() == ["vma_check", "sigsegv"]


def test_access_error_is_x86_semantics():
    mm = new_mm()
    ro = mm.find_vma(mm.mmap(0, PAGE_SIZE, PROT_READ, ANON))
    wo = mm.find_vma(mm.mmap(0, PAGE_SIZE, PROT_WRITE, ANON))
    x = mm.find_vma(mm.mmap(0, PAGE_SIZE, PROT_EXEC, ANON))
    none = mm.find_vma(mm.mmap(0, PAGE_SIZE, 0, ANON))
    assert access_error(ro, UW) and not access_error(ro, UR)
    assert not access_error(wo, UR)                  # x86: writable implies readable
    assert not access_error(x, UR) and not access_error(x, FAULT_FLAG_INSTRUCTION)
    assert access_error(ro, FAULT_FLAG_INSTRUCTION)
    assert access_error(none, UR) and access_error(none, UW)
    assert mm.access_error(ro, UW)


# --- OOM semantics ------------------------------------------------------------------------

def test_oom_non_droppable_gives_vm_fault_oom():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.phys.fail_allocations(persistent=True)
    r = fault(mm, a, UW)
    assert r.bits == VM_FAULT_OOM and r.oom
    assert r.kinds() == ["vma_check", "alloc", "oom"]
    assert r.stages[1].detail == {"ok": False, "reason": "injected", "mode": "persistent"}
    assert mm.pte(a) is None and mm.stats.oom == 1


def test_oom_droppable_skip_policy_gives_skip_insn_without_oom_bit():
    mm = new_mm(policy="skip")
    a = mm.mmap(0, PAGE_SIZE, RW, DROP)
    mm.phys.fail_allocations(persistent=True)
    r = fault(mm, a, UW)
    assert r.bits == VM_FAULT_SKIP_INSN and not r.oom
    assert r.kinds() == ["vma_check", "alloc", "droppable_oom"]
    assert r.stages[-1].detail["policy"] == "skip"
    assert mm.stats.droppable_oom == 1 and mm.stats.oom == 0


def test_oom_droppable_retry_policy_clears_oom_bit():
    mm = new_mm(policy="retry")
    a = mm.mmap(0, PAGE_SIZE, RW, DROP)
    mm.phys.fail_allocations(persistent=True)
    for _ in range(3):                            # persistent: it keeps refaulting
        r = fault(mm, a, UW)
        assert r.bits == 0 and r.kinds()[-1] == "droppable_oom"
        assert mm.pte(a) is None
    assert mm.stats.droppable_oom == 3


def test_droppable_oom_rule_applies_in_kernel_mode_too():
    mm = new_mm(policy="skip")
    a = mm.mmap(0, PAGE_SIZE, RW, DROP)
    b = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.phys.fail_allocations(persistent=True)
    r = fault(mm, a, KW)
    assert r.bits == VM_FAULT_SKIP_INSN and r.stages[-1].detail["user"] is False
    assert fault(mm, b, KW).bits == VM_FAULT_OOM  # arch side turns this into -EFAULT


def test_policy_changeable_at_runtime():
    mm = new_mm(policy="skip")
    a = mm.mmap(0, PAGE_SIZE, RW, DROP)
    mm.phys.fail_allocations(persistent=True)
    assert fault(mm, a, UW).bits == VM_FAULT_SKIP_INSN
    mm.droppable_oom = "retry"
    assert fault(mm, a, UW).bits == 0
    with pytest.raises(ValueError):
        mm.droppable_oom = "bogus"


def test_transient_oom_next_k_attempts_fail_then_succeed():
    mm = new_mm(policy="retry")
    a = mm.mmap(0, PAGE_SIZE, RW, DROP)
    mm.phys.fail_allocations(count=3)
    results = [fault(mm, a, UW) for _ in range(4)]
    assert [r.kinds()[-1] for r in results] == ["droppable_oom"] * 3 + ["zero_fill"]
    assert mm.pte(a).writable
    assert mm.phys.stats.injected_failures == 3 and mm.phys.failing == "off"


def test_fail_allocations_none_switches_off():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.phys.fail_allocations(persistent=True)
    assert fault(mm, a, UW).oom
    mm.phys.fail_allocations(None)
    assert fault(mm, a, UW).bits == 0


def test_injected_failure_fails_before_reclaim():
    mm = new_mm(pages=1)
    d = mm.mmap(0, PAGE_SIZE, RW, DROP)
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    assert fault(mm, d, UW).bits == 0            # budget now full of droppable memory
    mm.phys.fail_allocations(count=1)
    r = fault(mm, a, UW)
    assert r.oom and "reclaim" not in r.kinds()
    assert mm.pte(d).present                     # nothing was dropped
    r = fault(mm, a, UW)                         # real attempt: reclaim drops d
    assert r.kinds() == ["vma_check", "reclaim", "alloc", "zero_fill"]
    assert r.stages[1].detail["dropped"] == 1 and mm.pte(d).dropped


def test_real_oom_without_reclaimable_memory():
    mm = new_mm(pages=1)
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    assert fault(mm, a, UW).bits == 0
    r = fault(mm, a + PAGE_SIZE, UW)
    assert r.oom and r.kinds() == ["vma_check", "reclaim", "alloc", "oom"]
    assert r.stages[2].detail["reason"] == "no_memory"


def test_cow_copy_can_oom():
    mm = new_mm(pages=1)
    a = mm.mmap(0, PAGE_SIZE, RW, ANON)
    mm.poke(a, b"x")
    child = mm.dup_mm()
    r = fault(child, a, UW)
    assert r.oom and "cow_copy" not in r.kinds()
    assert child.pte(a).frame is mm.pte(a).frame     # still shared, untouched


def test_swap_in_reports_major_fault():
    mm = new_mm(pages=1, swap=4)
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm.poke(a, b"first")
    mm.poke(a + PAGE_SIZE, b"second")            # reclaim swaps out the first page
    assert mm.pte(a).swapped
    r = fault(mm, a, UR)
    assert r.bits == VM_FAULT_MAJOR and not r.error
    assert "swap_in" in r.kinds()
    assert mm.read(a, 5) == b"first"


def test_stage_kinds_are_declared():
    mm = new_mm(pages=1, swap=1)
    a = mm.mmap(0, 4 * PAGE_SIZE, RW, ANON)
    seen = set()
    for i in range(4):
        seen.update(fault(mm, a + i * PAGE_SIZE, UW).kinds())
    seen.update(fault(mm, a, UR).kinds())
    assert seen <= set(STAGE_KINDS)


def test_write_to_readonly_private_vma_via_force_breaks_cow_but_stays_readonly():
    mm = new_mm()
    a = mm.mmap(0, PAGE_SIZE, PROT_READ, ANON)
    assert mm.poke(a, b"ptrace") == 6
    pte = mm.pte(a)
    assert not pte.writable and pte.frame is not mm.phys.zero_frame
    assert mm.read(a, 6) == b"ptrace"


def test_copy_from_user_stops_at_unreadable_page():
    mm = new_mm()
    a = mm.mmap(0, 2 * PAGE_SIZE, RW, ANON)
    mm.mprotect(a + PAGE_SIZE, PAGE_SIZE, 0)
    mm.poke(a + PAGE_SIZE - 4, b"\x90\x90\x90\x90")
    assert mm.copy_from_user(a + PAGE_SIZE - 4, 15) == b"\x90" * 4
    assert mm.copy_from_user(0x1000, 15) == b""
    assert mm.read(a + PAGE_SIZE - 4, 8) == b"\x90" * 4 + bytes(4)
