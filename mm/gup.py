"""Kernel-side access to user memory (mm/gup.c, access_process_vm):
populate (mm_populate for MAP_POPULATE / mlock / MADV_POPULATE_*), a side-effect
free peek, a copy_from_user-style short read, and a FOLL_FORCE poke."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flags import (EAGAIN, EFAULT, EINVAL, ENOMEM, FAULT_FLAG_REMOTE, FAULT_FLAG_WRITE, PAGE_MASK,
                    PAGE_SHIFT, PAGE_SIZE, VM_EXEC, VM_FAULT_OOM, VM_FAULT_SIGBUS,
                    VM_FAULT_SIGSEGV, VM_IO, VM_LOCKONFAULT, VM_MAYWRITE, VM_PFNMAP,
                    VM_READ, VM_SHARED, VM_WRITE)
from .filemap import file_page_bytes, file_pages
from .memory import handle_mm_fault

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct


def _page_ok(mm: "MmStruct", vpn: int, write: bool) -> bool:
    """follow_page(): is the page present with the access already allowed?
    For a write, GUP needs an exclusive anonymous page (a COW break), not the W bit
    (FOLL_FORCE may write through a read-only PTE)."""
    pte = mm.pt.get(vpn)
    if pte is None or pte.frame is None:
        return False
    if not write:
        return True
    return pte.writable or pte.frame.exclusive


def faultin_page(mm: "MmStruct", addr: int, write: bool) -> int:
    """Fault one page in for GUP; 0 on success or -errno (-ENOMEM on OOM,
    -EFAULT on SIGSEGV/SIGBUS, -EAGAIN when a droppable OOM left it absent)."""
    vpn = addr >> PAGE_SHIFT
    if _page_ok(mm, vpn, write):
        return 0
    vma = mm.find_vma(addr)
    res = handle_mm_fault(mm, vma, addr, (FAULT_FLAG_WRITE if write else 0))
    if res.bits & VM_FAULT_OOM:
        return -ENOMEM
    if res.bits & (VM_FAULT_SIGSEGV | VM_FAULT_SIGBUS):
        return -EFAULT
    if not _page_ok(mm, vpn, write):
        # A droppable OOM (skip/retry) leaves the page absent. The kernel's GUP
        # would refault until memory appears; populate gives up on this page.
        return -EAGAIN
    return 0


def populate_range(mm: "MmStruct", start: int, end: int, ignore_errors: bool) -> int:
    """__mm_populate(): fault in [start, end) VMA by VMA, write-faulting private
    writable VMAs (to break COW), skipping VM_LOCKONFAULT, VM_IO/VM_PFNMAP and
    inaccessible (PROT_NONE) VMAs. Returns 0 or the first -errno."""
    for vma in mm.vma_tree.overlapping(start, end):
        f = vma.vm_flags
        if f & (VM_IO | VM_PFNMAP | VM_LOCKONFAULT) or not vma.is_accessible:
            continue
        write = (f & (VM_WRITE | VM_SHARED)) == VM_WRITE
        for addr in range(max(start, vma.start), min(end, vma.end), PAGE_SIZE):
            err = faultin_page(mm, addr, write)
            if err == -EAGAIN:                  # droppable page left absent: not an error
                continue
            if err and not ignore_errors:
                return err
    return 0


def populate_range_for(mm: "MmStruct", start: int, end: int, write: bool) -> int:
    """MADV_POPULATE_READ/WRITE (mm/madvise.c madvise_populate): fault the range in
    VMA by VMA with the given access, stopping at the first error: -ENOMEM at a hole
    or on OOM, -EINVAL for a VMA the access is not allowed in (or VM_IO/VM_PFNMAP),
    -EFAULT when a fault gives SIGSEGV/SIGBUS (a guard region, past EOF)."""
    pos = start
    while pos < end:
        vma = mm.find_vma(pos)
        if vma is None:
            return -ENOMEM
        f = vma.vm_flags
        if f & (VM_IO | VM_PFNMAP) or not (f & VM_WRITE if write else
                                            f & (VM_READ | VM_WRITE | VM_EXEC)):
            return -EINVAL
        stop = min(end, vma.end)
        for addr in range(pos, stop, PAGE_SIZE):
            err = faultin_page(mm, addr, write)
            if err == -EAGAIN:
                return -ENOMEM
            if err:
                return err
        pos = stop
    return 0


def peek(mm: "MmStruct", addr: int, n: int) -> bytes:
    """Read without faulting: present pages give their frame bytes, swapped pages
    their slot bytes, pages of a file mapping not faulted in yet what a read would
    see (the page cache, else the file; zeros past its end), everything else (not
    present, dropped, guard, no VMA) zeros."""
    out = bytearray()
    pt = mm.pt
    swap = mm.phys.swap
    while n > 0:
        off = addr & ~PAGE_MASK
        k = min(n, PAGE_SIZE - off)
        pte = pt.get(addr >> PAGE_SHIFT)
        if pte is not None and pte.frame is not None:
            out += pte.frame.data[off:off + k]
        elif pte is not None and pte.swap_slot is not None:
            out += swap.get(pte.swap_slot).data[off:off + k]
        elif pte is None or pte.none:
            vma = mm.find_vma(addr)
            if vma is not None and vma.vm_file is not None:
                out += file_page_bytes(mm.phys, vma.vm_file, vma.pgoff_of(addr))[off:off + k]
            else:
                out += bytes(k)
        else:
            out += bytes(k)
        addr += k
        n -= k
    return bytes(out)


def copy_from_user(mm: "MmStruct", addr: int, n: int) -> bytes:
    """Up to n bytes at addr, stopping short at the first page outside any VMA, in
    a VMA the user cannot read, at a guard page or past the end of a mapped file
    (like copy_from_user's return value). Does not fault anything in; other
    not-present pages read as a fault would make them read (peek)."""
    end = addr + n
    stop = addr
    pt = mm.pt
    while stop < end:
        vma = mm.find_vma(stop)
        if vma is None or not (vma.vm_flags & (VM_READ | VM_WRITE | VM_EXEC)):
            break
        vend = min(end, vma.end)
        if vma.vm_file is not None:            # a page past EOF would SIGBUS
            eof = vma.start + ((file_pages(vma.vm_file) - vma.vm_pgoff) << PAGE_SHIFT)
            if eof <= stop:
                break
            vend = min(vend, eof)
        for vpn in mm.vpns_in(stop, vend):     # a guard page is unreadable too
            if pt[vpn].guard:
                return peek(mm, addr, max(vpn << PAGE_SHIFT, addr) - addr)
        stop = vend
        if vend < min(end, vma.end):
            break
    return peek(mm, addr, stop - addr)


def poke(mm: "MmStruct", addr: int, data: bytes) -> int:
    """access_process_vm(FOLL_WRITE|FOLL_FORCE), as ptrace POKEDATA: write data,
    faulting pages in and breaking COW (even in read-only private VMAs). Returns
    bytes written; short at a hole, a VM_MAYWRITE-less VMA, or an allocation
    failure."""
    done = 0
    n = len(data)
    mv = memoryview(bytes(data))
    while done < n:
        a = addr + done
        vma = mm.find_vma(a)
        if vma is None or not (vma.vm_flags & VM_MAYWRITE):
            break
        vpn = a >> PAGE_SHIFT
        if not _page_ok(mm, vpn, True):
            handle_mm_fault(mm, vma, a, FAULT_FLAG_WRITE | FAULT_FLAG_REMOTE)
            if not _page_ok(mm, vpn, True):
                break
        frame = mm.pt[vpn].frame
        if frame.lazyfree:
            mm.phys.set_lazyfree(frame, False)   # GUP writes dirty the page: no lazy free
        off = a & ~PAGE_MASK
        k = min(n - done, PAGE_SIZE - off)
        frame.data[off:off + k] = mv[done:done + k]
        done += k
    return done
