"""Kernel-mode accesses to user memory: copy_to_user / copy_from_user.

A page the kernel cannot access traps into the page-fault entry
(emulator/fault.py, through Task.page_fault) without FAULT_FLAG_USER:
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

from emulator.records import CallContext
from mm import flags as F
from mm.flags import PAGE_SIZE

if TYPE_CHECKING:
    from emulator.task import Task


@dataclass
class CopyResult:
    copied: int
    livelock: bool = False


def _special_readable(m: "Task", addr: int, exec_only: bool) -> bytes | None:
    name = m.special_at(addr)
    if name is None:
        return None
    n = PAGE_SIZE - (addr & (PAGE_SIZE - 1))
    return m.read(addr, n)


def copy_from_user(m: "Task", addr: int, n: int, exec_only: bool = False) -> bytes:
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


def store_if_writable(m: "Task", addr: int, chunk: bytes) -> bool:
    """Write chunk (within one page) if the PTE already allows it; no fault."""
    vma = m.mm.find_vma(addr)
    pte = m.mm.pte(addr)
    if vma is None or pte is None or pte.frame is None or not pte.writable or not vma.vm_flags & F.VM_WRITE:
        return False
    off = addr & (PAGE_SIZE - 1)
    pte.frame.data[off:off + len(chunk)] = chunk
    return True


def fault_in_write(m: "Task", addr: int, user: bool):
    """handle_mm_fault for a write at addr (after the access check), with the
    Unicorn mappings synced; returns the FaultResult, or None for a bad area.
    No record and no charge: for set-up writes made outside any call, and for
    the silent snapshot copy-on-write (emulator/fault.py)."""
    vma = m.mm.find_vma(addr)
    fl = F.FAULT_FLAG_WRITE | (F.FAULT_FLAG_USER if user else 0)
    if vma is None or m.mm.access_error(vma, fl):
        return None
    res = m.mm.handle_mm_fault(vma, addr, fl)
    m.sync()
    return res


def access_user(m: "Task", addr: int, data: bytes, user: bool = False) -> int:
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


def copy_to_user(m: "Task", ctx: CallContext, addr: int, data: bytes, rip: int,
                 what: str = "copy_to_user") -> CopyResult:
    """The kernel writing into user memory on behalf of a syscall.  A page it
    cannot write traps into the page-fault entry (Task.page_fault), which
    either makes it writable (the copy goes on), asks for a refault, or takes
    the exception-table fixup (the copy returns short)."""
    done = 0
    refaults = 0
    while done < len(data):
        a = addr + done
        n = min(len(data) - done, PAGE_SIZE - (a & (PAGE_SIZE - 1)))
        if store_if_writable(m, a, data[done:done + n]):
            done += n
            refaults = 0
            continue
        rec = m.page_fault(ctx, a, "write", rip, what)
        if rec is None:             # a snapshot artifact, resolved silently
            continue
        if rec.decision == "efault":
            return CopyResult(done)
        if rec.decision in ("retry", "retry-oom"):
            refaults += 1
            if refaults > m.livelock_limit:
                # The refaults were folded into one record (records.append_fault).
                ctx.result.faults[-1].decision = "livelock"
                return CopyResult(done, livelock=True)
    return CopyResult(done)
