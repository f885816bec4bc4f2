"""Where a process's kernel-provided mappings go: the vDSO image, its vvar
pages below it and the call-return sentinel page.

The kernel maps [vvar] and [vdso] at exec (map_vdso), at an address
get_unmapped_area gives it, as VMAs: every later mmap then goes around
them.  Here the same two steps:

- `place_image` picks the image's base with mm's own get_unmapped_area in
  the address space a process starts with (its stack and the sentinel page),
  the image's usual base as the hint.  A position-independent (ELF) image
  that does not fit there goes where get_unmapped_area says; an assembled
  image is linked for its base, so it is refused with one line instead.
- `install_kernel_mappings` puts VMAs for those ranges into a process's mm
  before anything else is mapped, so that libc's mmaps (the state pages, the
  output buffer, up to 16 MiB) never land on the image.  Without them the
  state mapping of an image over ~0x3c000 bytes overlapped the image: the
  CPU saw the read-only image where mm had the state, and the run spun.

The VMAs are VM_IO | VM_PFNMAP | VM_DONTEXPAND like the kernel's [vvar]:
their pages are the kernel's (emulator/kernel.py), never in mm's page
tables, so gup, mlock, madvise and core dumps leave them alone.
"""
from __future__ import annotations

import dataclasses
from typing import TYPE_CHECKING

from emulator.errors import ImageError
from emulator.kernel import SENTINEL_PAGE
from mm import flags as F
from mm.mm_struct import MM
from mm.mmap import get_unmapped_area
from mm.physmem import PhysMem
from mm.vma import VMA
from vdso.image import PAGE_SIZE, VdsoImage

if TYPE_CHECKING:
    from emulator.kernel import Kernel

# The stack a Machine gives its calls (a process run by `faultpath exec`
# gets a full-size one from emulator/binfmt_elf.py).
STACK_TOP = 0x7FFF_FFFF_0000
STACK_SIZE = 64 * 1024

KERNEL_VM_FLAGS = F.VM_IO | F.VM_PFNMAP | F.VM_DONTEXPAND | F.VM_DONTDUMP | F.VM_MAYREAD
_PERMS = {"r": F.VM_READ, "rx": F.VM_READ | F.VM_EXEC | F.VM_MAYEXEC}


def _initial_mm() -> MM:
    """The address space of a process before its kernel mappings: the stack
    (emulator/machine.py) and the sentinel page (emulator/kernel.py)."""
    mm = MM(PhysMem(16))
    for start, end, name in ((STACK_TOP - STACK_SIZE, STACK_TOP, "[stack]"),
                             (SENTINEL_PAGE, SENTINEL_PAGE + PAGE_SIZE, "[faultpath-ret]")):
        mm.vma_tree.insert(VMA(start, end, F.VM_READ, name))
    return mm


def image_span(image: VdsoImage) -> tuple[int, int]:
    """[start, end) of the vvar pages and the image together."""
    return image.vvar_start, image.base + image.size


def place_image(image: VdsoImage) -> VdsoImage:
    """The image at the base get_unmapped_area gives it (see the module's doc)."""
    start, end = image_span(image)
    length = end - start
    addr = get_unmapped_area(_initial_mm(), start, length, 0)
    if addr == start:
        return image
    if addr < 0:
        raise ImageError(f"{image.name}: its {length:#x} bytes (image and vvar pages) fit nowhere in the "
                         f"address space")
    if image.fixed_base:
        raise ImageError(f"{image.name}: assembled for {image.base:#x}, but its {length:#x} bytes (image and "
                         f"vvar pages) do not fit there")
    return dataclasses.replace(image, base=addr + (image.base - start))


def install_kernel_mappings(mm: MM, kernel: "Kernel") -> None:
    """VMAs for the kernel's mappings of this process (idempotent; a fork's
    child inherits them with the rest of its parent's VMAs)."""
    for name, start, backing, perms in kernel.special_mappings():
        end = start + len(backing)
        clash = mm.vma_tree.overlapping(start, end)
        if any(v.start == start and v.end == end and v.name == name for v in clash):
            continue
        if clash:
            v = clash[0]
            raise ImageError(f"{kernel.image.name}: {name} at {start:#x}-{end:#x} overlaps "
                             f"{v.name or 'a mapping'} at {v.start:#x}-{v.end:#x}")
        mm.vma_tree.insert(VMA(start, end, KERNEL_VM_FLAGS | _PERMS[perms], name))
        mm.mark_changed(start, end)
