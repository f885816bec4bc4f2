"""Memory-management syscalls: mmap, munmap, mprotect, madvise, mremap, brk.

mm/ decides everything (VMAs, errnos, populate); these handlers only unpack
registers the way the x86-64 entry points do, resolve a file descriptor for
a file mapping, and bring the CPU's view of the page tables up to date.
"""
from __future__ import annotations

from typing import TYPE_CHECKING, Protocol

from emulator.records import CallContext, SyscallRecord
from emulator.syscall_abi import EBADF, EINVAL, ENODEV, int_arg
from mm import flags as F
from mm.flags import PAGE_MASK, PAGE_SIZE

if TYPE_CHECKING:
    from emulator.task import Task
    from mm.mm_struct import MM


class ProcessMm(Protocol):
    """What the process-mode handlers need (emulator/process.py's Process):
    the address space, the descriptor table and the break."""
    mm: "MM"
    files: object          # emulator/fdtable.py's FdTable
    heap: object           # process.Heap: start_brk, brk

    def sync_range(self, start: int, length: int) -> None: ...


def _u32(v: int) -> int:
    return v & 0xFFFF_FFFF


def sys_mmap(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    """mmap of anonymous memory, for a task without file descriptors (the
    vDSO-call harness): a file mapping has no file behind its fd (-ENODEV,
    or -EBADF as fget() gives for a negative fd)."""
    addr, length, prot, flags, fd, off = rec.args
    return _do_mmap(m, addr, length, _u32(prot), _u32(flags), int_arg(fd), off, None)


def sys_mmap_pgoff(m: "ProcessMm", ctx: CallContext, rec: SyscallRecord) -> int:
    """arch/x86/kernel/sys_x86_64.c sys_mmap -> ksys_mmap_pgoff: the offset
    must be page aligned; without MAP_ANONYMOUS, fd must name an open file
    that can be mapped (a pipe cannot: -ENODEV)."""
    addr, length, prot, flags, fd, off = rec.args
    prot, flags, fd = _u32(prot), _u32(flags), int_arg(fd)
    if off & ~PAGE_MASK:
        return -EINVAL
    file = None
    if not flags & F.MAP_ANONYMOUS:
        of = m.files.get(fd)
        if of is None:
            return -EBADF
        file = of.mappable()
        if file is None:
            return -ENODEV
    return _do_mmap(m, addr, length, prot, flags, fd, off, file)


def _do_mmap(m: "Task", addr: int, length: int, prot: int, flags: int, fd: int, off: int, file) -> int:
    r = m.mm.mmap(addr, length, prot, flags, fd, off, file=file)
    if r >= 0:
        m.sync_range(r, length)
    return r


def sys_munmap(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    r = m.mm.munmap(rec.args[0], rec.args[1])
    m.sync_range(rec.args[0], rec.args[1])
    return r


def sys_mprotect(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    r = m.mm.mprotect(rec.args[0], rec.args[1], _u32(rec.args[2]))
    m.sync_range(rec.args[0], rec.args[1])
    return r


def sys_madvise(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    r = m.mm.madvise(rec.args[0], rec.args[1], _u32(rec.args[2]))
    m.sync_range(rec.args[0], rec.args[1])
    return r


def sys_mremap(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    old, old_len, new_len, flags, new_addr = rec.args[:5]
    r = m.mm.mremap(old, old_len, new_len, _u32(flags), new_addr)
    m.sync_range(old, old_len)
    if r >= 0:
        m.sync_range(r, new_len)
    return r


def sys_brk(m: "ProcessMm", ctx: CallContext, rec: SyscallRecord) -> int:
    """mm/mmap.c brk(): the break moves within [start_brk, ...); the kernel
    answers with the new break, or the old one when it cannot move it (that
    is how brk reports failure: glibc compares).  Growing maps anonymous
    memory after the old break (do_brk_flags; here an anonymous MAP_FIXED
    mmap, which merges with the heap VMA as the kernel's expands it),
    provided nothing is mapped there; shrinking unmaps."""
    want = rec.args[0]
    heap = m.heap
    old = heap.brk
    if want < heap.start_brk:
        return old
    new_top = (want + PAGE_SIZE - 1) & PAGE_MASK
    old_top = (old + PAGE_SIZE - 1) & PAGE_MASK
    if new_top == old_top:
        heap.brk = want
        return want
    if want <= old:
        heap.brk = want
        m.mm.munmap(new_top, old_top - new_top)
        m.sync_range(new_top, old_top - new_top)
        return want
    # The new area, plus the stack guard gap's page, must be free (the
    # kernel checks newbrk + PAGE_SIZE against the next VMA's start).
    if m.mm.vma_tree.overlapping(old_top, new_top + PAGE_SIZE):
        return old
    r = m.mm.mmap(old_top, new_top - old_top, F.PROT_READ | F.PROT_WRITE,
                  F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED, -1, 0)
    if r < 0:
        return old
    m.sync_range(old_top, new_top - old_top)
    heap.brk = want
    return want
