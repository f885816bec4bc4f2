"""mprotect(2) (mm/mprotect.c do_mprotect_pkey, mprotect_fixup)."""

from __future__ import annotations

from typing import TYPE_CHECKING

from .flags import (EACCES, EINVAL, ENOMEM, PAGE_MASK, PAGE_SHIFT, PROT_EXEC,
                    PROT_GROWSDOWN, PROT_GROWSUP, PROT_READ, PROT_SEM, PROT_WRITE,
                    VM_ACCESS_FLAGS, VM_ACCOUNT, VM_EXEC, VM_GROWSDOWN, VM_READ, VM_WRITE,
                    calc_vm_prot_bits, page_align)
from .overcommit import needs_mprotect_charge, vm_enough_memory, vm_unacct_memory
from .page import PTE

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct
    from .vma import VMA


def do_mprotect(mm: "MmStruct", start: int, length: int, prot: int) -> int:
    grows = prot & (PROT_GROWSDOWN | PROT_GROWSUP)
    prot &= ~grows
    if grows == (PROT_GROWSDOWN | PROT_GROWSUP):
        return -EINVAL
    if start & ~PAGE_MASK:
        return -EINVAL
    if not length:
        return 0
    length = page_align(length)
    end = start + length
    if end <= start:
        return -ENOMEM
    if prot & ~(PROT_READ | PROT_WRITE | PROT_EXEC | PROT_SEM):
        return -EINVAL                        # arch_validate_prot()
    vma = mm.vma_tree.find_next(start)
    if vma is None:
        return -ENOMEM
    if grows & PROT_GROWSDOWN:
        if vma.start >= end:
            return -ENOMEM
        start = vma.start
        if not vma.vm_flags & VM_GROWSDOWN:
            return -EINVAL
    elif grows & PROT_GROWSUP:
        return -EINVAL                        # x86 has no VM_GROWSUP areas
    elif vma.start > start:
        return -ENOMEM
    newprot = calc_vm_prot_bits(prot)
    error = 0
    nstart = start
    while nstart < end:
        vma = mm.vma_tree.find(nstart)
        if vma is None:
            error = -ENOMEM                   # a hole: earlier VMAs stay changed
            break
        newflags = (vma.vm_flags & ~(VM_READ | VM_WRITE | VM_EXEC)) | newprot
        if (newflags & ~(newflags >> 4)) & VM_ACCESS_FLAGS:
            error = -EACCES                   # asks for more than VM_MAY* allows
            break
        tmp = min(vma.end, end)
        error = mprotect_fixup(mm, vma, nstart, tmp, newflags)
        if error:
            break
        nstart = tmp
    mm.vma_tree.merge_around(start, end)
    return error


def mprotect_fixup(mm: "MmStruct", vma: "VMA", start: int, end: int, newflags: int) -> int:
    oldflags = vma.vm_flags
    if newflags == oldflags:
        return 0
    pages = (end - start) >> PAGE_SHIFT
    if newflags & VM_WRITE:
        if needs_mprotect_charge(oldflags, newflags):
            if vm_enough_memory(mm.phys, pages, mm):
                return -ENOMEM
            newflags |= VM_ACCOUNT
    elif oldflags & VM_ACCOUNT and vma.anon_vma is None:
        # 6.6+: a private anonymous mapping that never had a page and is no longer
        # writable need not stay accounted.
        newflags &= ~VM_ACCOUNT
    if oldflags & VM_ACCOUNT and not newflags & VM_ACCOUNT:
        vm_unacct_memory(mm.phys, pages)
    for v in mm.vma_tree.isolate(start, end):
        v.vm_flags = newflags
    if oldflags & VM_WRITE and not newflags & VM_WRITE:
        # change_protection(): drop the W bit from every present PTE.
        for vpn in mm.vpns_in(start, end):
            pte = mm.pt[vpn]
            if pte.writable:
                mm.set_pte(vpn, PTE(pte.frame, False))
    # Gaining write leaves PTEs read-only: the next write reuses exclusive frames
    # through do_wp_page (the kernel's MM_CP_TRY_CHANGE_WRITABLE shortcut needs
    # pte_dirty, which is not modelled).
    if (oldflags ^ newflags) & (VM_READ | VM_WRITE | VM_EXEC):
        mm.mark_changed(start, end)
    return 0
