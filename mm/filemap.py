"""The page cache (mm/filemap.c): one frame per (file, page index), shared by every
mapping of the file in every mm, read from the file on first use.

Page-cache frames are clean and read-only: they are mapped with the W bit clear,
so a write to a private file mapping always copies (do_cow_fault, or do_wp_page
on a page already mapped), and nothing ever writes into them. They are charged to
PhysMem while cached, mapped or not, and reclaim may evict them (clean pages are
cheap to drop: the next fault reads them again).

Bytes past the end of the file in its last page read as zero; a page entirely
past the end does not exist (the fault gives VM_FAULT_SIGBUS).
"""

from __future__ import annotations

from typing import TYPE_CHECKING, Optional

from .flags import PAGE_SHIFT, PAGE_SIZE, VM_FAULT_MAJOR, VM_FAULT_OOM, VM_FAULT_SIGBUS
from .page import Frame
from .stages import FaultStage

if TYPE_CHECKING:  # pragma: no cover
    from .file import MappedFile
    from .mm_types import Zone


def file_pages(file: "MappedFile") -> int:
    """How many pages the file has: the last one may be partial."""
    return (file.size + PAGE_SIZE - 1) >> PAGE_SHIFT


def read_file_page(file: "MappedFile", pgoff: int) -> Optional[bytes]:
    """The page's bytes, zero-filled past EOF; None if the read fails (an I/O
    error: the fault gives SIGBUS)."""
    try:
        data = file.read(pgoff << PAGE_SHIFT, PAGE_SIZE)
    except OSError:
        return None
    return data + bytes(PAGE_SIZE - len(data)) if len(data) < PAGE_SIZE else data[:PAGE_SIZE]


def filemap_fault(phys: "Zone", file: "MappedFile", pgoff: int,
                  stages: Optional[list]) -> tuple[Optional[Frame], int]:
    """The page-cache frame of (file, pgoff), read in if not cached, with the
    VM_FAULT_* bits that go with it: (frame, 0) when cached, (frame,
    VM_FAULT_MAJOR) when it had to be read (the kernel reports I/O as a major
    fault), (None, VM_FAULT_OOM) when no frame could be had, (None,
    VM_FAULT_SIGBUS) on a read error."""
    key = (file.key, pgoff)
    frame = phys.page_cache.get(key)
    if frame is not None:
        if stages is not None:
            stages.append(FaultStage("filemap_fault", {"pgoff": pgoff, "cached": True,
                                                       "pfn": frame.pfn}))
        return frame, 0
    frame = phys.alloc_frame(stages)
    if frame is None:
        return None, VM_FAULT_OOM
    data = read_file_page(file, pgoff)
    if data is None:
        phys.free_frame(frame)
        return None, VM_FAULT_SIGBUS
    frame.data[:] = data
    phys.pagecache_add(frame, key)
    phys.stats.pagecache_reads += 1
    if stages is not None:
        stages.append(FaultStage("filemap_fault", {"pgoff": pgoff, "cached": False,
                                                   "pfn": frame.pfn}))
    return frame, VM_FAULT_MAJOR


def file_page_bytes(phys: "Zone", file: "MappedFile", pgoff: int) -> bytes:
    """What a read of the page would see, without faulting or caching anything:
    the cached frame's bytes, else the file's (zeros past EOF or on error)."""
    frame = phys.page_cache.get((file.key, pgoff))
    if frame is not None:
        return bytes(frame.data)
    if pgoff >= file_pages(file):
        return bytes(PAGE_SIZE)
    return read_file_page(file, pgoff) or bytes(PAGE_SIZE)


__all__ = ["file_pages", "read_file_page", "filemap_fault", "file_page_bytes"]
