"""Kernel build options that change what mm does (the model's .config).

One switch so far: CONFIG_MEM_SOFT_DIRTY. With it, every new VMA carries
VM_SOFTDIRTY (smaps "sd"); without it the kernel defines VM_SOFTDIRTY as 0, so the
flag never appears. Distributions differ (Debian and Fedora x86-64 kernels set it;
the 6.18 kernel this project was measured on does not), so the default follows the
running kernel, probed the way a user would check it: the VmFlags of a fresh
mapping in /proc/self/smaps. ``source`` records where each value came from.
"""

from __future__ import annotations

import functools
import mmap as _mmap
from dataclasses import dataclass

from .flags import VM_SOFTDIRTY


@dataclass(frozen=True)
class KernelConfig:
    mem_soft_dirty: bool
    source: str = "explicit"

    @property
    def vm_softdirty(self) -> int:
        """The VM_SOFTDIRTY value this kernel was built with (0 when not configured)."""
        return VM_SOFTDIRTY if self.mem_soft_dirty else 0

    def describe(self) -> dict:
        return {"CONFIG_MEM_SOFT_DIRTY": self.mem_soft_dirty, "source": self.source}


def _probe_host_soft_dirty() -> bool | None:
    """Does a fresh mapping in this process show 'sd'? None when it cannot be told."""
    import ctypes

    try:
        m = _mmap.mmap(-1, _mmap.PAGESIZE, flags=_mmap.MAP_PRIVATE | _mmap.MAP_ANONYMOUS,
                       prot=_mmap.PROT_READ | _mmap.PROT_WRITE)
    except (OSError, AttributeError):
        return None
    try:
        buf = ctypes.c_char.from_buffer(m)
        addr = ctypes.addressof(buf)
        del buf
        with open("/proc/self/smaps", encoding="ascii", errors="replace") as f:
            inside = False
            for line in f:
                head = line.split(" ", 1)[0]
                if "-" in head and ":" not in head:
                    lo, hi = (int(x, 16) for x in head.split("-"))
                    inside = lo <= addr < hi
                elif inside and line.startswith("VmFlags:"):
                    return "sd" in line.split(":", 1)[1].split()
    except OSError:
        return None
    finally:
        m.close()
    return None


# The running kernel does not change under us: probe once per process.
@functools.lru_cache(maxsize=1)
def host_kernel_config() -> KernelConfig:
    """The running kernel's configuration as far as mm needs it."""
    sd = _probe_host_soft_dirty()
    if sd is None:
        return KernelConfig(False, "default: /proc/self/smaps unreadable, soft-dirty off")
    return KernelConfig(sd, "host: VmFlags of a fresh mapping in /proc/self/smaps")


__all__ = ["KernelConfig", "host_kernel_config"]
