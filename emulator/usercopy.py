"""Kernel-mode accesses to user memory: copy_to_user / copy_from_user.

These go through the same handle_mm_fault as user faults, without
FAULT_FLAG_USER (DESIGN.md "Kernel-mode accesses"):
- a non-droppable VMA under OOM: the exception-table fixup makes the copy
  return short (the syscall then returns -EFAULT); no OOM kill;
- a droppable VMA under `retry`: the OOM bit is cleared, the copy refaults;
- a droppable VMA under `skip`: insn_fetch_from_user() on a *kernel* rip
  copies 0 bytes, so rip is untouched and the copy refaults too.
Refaults are bounded: past the machine's livelock limit the copy gives up and
reports a livelock in the kernel's copy.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING

from emulator.records import X86_PF_PROT, X86_PF_WRITE, FaultRecord, append_fault
from mm import flags as F

if TYPE_CHECKING:
    from emulator.machine import CallContext, Machine

PAGE_SIZE = 4096
PAGE_MASK = ~(PAGE_SIZE - 1)


@dataclass
class CopyResult:
    copied: int
    livelock: bool = False


def _special_readable(m: "Machine", addr: int, exec_only: bool) -> bytes | None:
    name = m.special_at(addr)
    if name is None:
        return None
    n = PAGE_SIZE - (addr & (PAGE_SIZE - 1))
    return m.read(addr, n)


def copy_from_user(m: "Machine", addr: int, n: int, exec_only: bool = False) -> bytes:
    """Read up to n bytes, stopping at the first unreadable byte.  Not-present
    pages of readable VMAs are faulted in as reads (zero page: no allocation)."""
    out = bytearray()
    while len(out) < n:
        a = addr + len(out)
        want = min(n - len(out), PAGE_SIZE - (a & (PAGE_SIZE - 1)))
        sp = _special_readable(m, a, exec_only)
        if sp is not None:
            out += sp[:want]
            continue
        vma = m.mm.find_vma(a)
        if vma is None or m.mm.access_error(vma, F.FAULT_FLAG_INSTRUCTION if exec_only else 0):
            break
        pte = m.mm.pte(a)
        if pte is None or pte.frame is None:
            res = m.mm.handle_mm_fault(vma, a, 0)
            m.sync()
            if res.bits & F.VM_FAULT_ERROR:
                break
        out += m.mm.read(a, want)
    return bytes(out)


def store_if_writable(m: "Machine", addr: int, chunk: bytes) -> bool:
    """Write chunk (within one page) if the PTE already allows it; no fault."""
    vma = m.mm.find_vma(addr)
    pte = m.mm.pte(addr)
    if vma is None or pte is None or pte.frame is None or not pte.writable or not vma.vm_flags & F.VM_WRITE:
        return False
    off = addr & (PAGE_SIZE - 1)
    pte.frame.data[off:off + len(chunk)] = chunk
    return True


def fault_in_write(m: "Machine", addr: int, user: bool):
    """handle_mm_fault for a write at addr (after the access check), with the
    Unicorn mappings synced; returns the FaultResult, or None for a bad area."""
    vma = m.mm.find_vma(addr)
    fl = F.FAULT_FLAG_WRITE | (F.FAULT_FLAG_USER if user else 0)
    if vma is None or m.mm.access_error(vma, fl):
        return None
    res = m.mm.handle_mm_fault(vma, addr, fl)
    m.sync()
    return res


def access_user(m: "Machine", addr: int, data: bytes, user: bool = False) -> int:
    """Write data without a call context (set-up writes by the harness)."""
    done = 0
    tries = 0
    while done < len(data):
        a = addr + done
        n = min(len(data) - done, PAGE_SIZE - (a & (PAGE_SIZE - 1)))
        if store_if_writable(m, a, data[done:done + n]):
            done += n
            continue
        tries += 1
        res = fault_in_write(m, a, user) if tries <= m.livelock_limit else None
        if res is None or res.bits & F.VM_FAULT_ERROR:
            return done
    return done


def copy_to_user(m: "Machine", ctx: "CallContext", addr: int, data: bytes, rip: int,
                 what: str = "copy_to_user") -> CopyResult:
    """The kernel writing into user memory on behalf of a syscall."""
    done = 0
    refaults = 0
    while done < len(data):
        a = addr + done
        n = min(len(data) - done, PAGE_SIZE - (a & (PAGE_SIZE - 1)))
        if store_if_writable(m, a, data[done:done + n]):
            done += n
            refaults = 0
            continue
        vma = m.mm.find_vma(a)
        pte = m.mm.pte(a)
        from emulator.fault import resolve_snapshot_cow
        if resolve_snapshot_cow(m, a, False):
            continue
        # A kernel-mode page fault on a user address.
        rec = FaultRecord(index=ctx.index, rip=rip, address=a, access="write",
                          error_code=X86_PF_WRITE | (X86_PF_PROT if pte is not None and pte.frame is not None else 0),
                          user=False, insn=what)
        from emulator.fault import pte_state, vm_fault_names, vma_desc
        rec.vma, rec.vm_flags, _ = vma_desc(m, a)
        rec.pte = pte_state(m, a)
        cyc0 = ctx.cycles
        m.charge(ctx, "fault_entry", rip, {"address": a, "access": "write", "mode": "kernel", "in": what})
        m.charge(ctx, "vma_lookup", rip, {"vma": rec.vma, "flags": rec.vm_flags})
        if vma is None or m.mm.access_error(vma, F.FAULT_FLAG_WRITE):
            rec.decision = "efault"
            m.charge(ctx, "exception_fixup", rip, {"why": "no VMA" if vma is None else "access error"}, cycles=0)
            _rec(ctx, rec, cyc0)
            return CopyResult(done)
        res = m.mm.handle_mm_fault(vma, a, F.FAULT_FLAG_WRITE)
        for st in res.stages:
            m.charge(ctx, st.kind, rip, dict(st.detail), cycles=m.kernel.profile.stage_cost(st.kind, st.detail))
            rec.stages.append(st.kind)
        rec.bits = vm_fault_names(res.bits)
        m.sync()
        if res.bits & (F.VM_FAULT_OOM | F.VM_FAULT_SIGBUS | F.VM_FAULT_SIGSEGV):
            # Kernel mode: no OOM kill, no signal; the exception table fixup
            # makes the copy return what it managed.
            rec.decision = "efault"
            m.charge(ctx, "exception_fixup", rip, {"bits": rec.bits}, cycles=0)
            _rec(ctx, rec, cyc0)
            return CopyResult(done)
        if res.bits & F.VM_FAULT_SKIP_INSN:
            # insn_fetch_from_user() of a kernel rip copies 0 bytes: rip untouched.
            rec.decision = "retry"
            rec.fetched = 0
            m.charge(ctx, "decode", rip, {"fetched": 0, "why": "kernel rip: copy_from_user copies nothing"})
        elif "droppable_oom" in rec.stages or "oom" in rec.stages:
            rec.decision = "retry-oom"
        else:
            rec.decision = "mapped"
        rec.new_rip = rip
        m.charge(ctx, "fault_return", rip, {"decision": rec.decision})
        if rec.decision in ("retry", "retry-oom"):
            refaults += 1
            if refaults > m.livelock_limit:
                rec.decision = "livelock"
                _rec(ctx, rec, cyc0)
                return CopyResult(done, livelock=True)
        _rec(ctx, rec, cyc0)
    return CopyResult(done)


def _rec(ctx: "CallContext", rec: FaultRecord, cyc0: float) -> None:
    rec.cycles = ctx.cycles - cyc0
    append_fault(ctx.result.faults, rec)
