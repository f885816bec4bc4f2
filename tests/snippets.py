"""Run small keystone-assembled snippets inside a Machine (test helper)."""
from __future__ import annotations

from vdso.asm_build import assemble_snippet

from emulator.kernel import Kernel
from emulator.machine import Machine
from mm import flags as F
from vdso.image import VDSO_BASE, VdsoImage, RNG_DATA_OFFSET_6_15


def snippet_image(src: str) -> VdsoImage:
    code = assemble_snippet(src, VDSO_BASE)
    text = bytes(code) + b"\xcc" * ((-len(code)) % 4096 or 4096)
    return VdsoImage(name="snippet", text=text, symbols={"entry": 0}, rng_data_offset=RNG_DATA_OFFSET_6_15,
                     rng_data_source="snippet")


def snippet_machine(src: str, policy: str = "skip", memory: int = 256, **kw) -> Machine:
    k = Kernel(snippet_image(src), memory_pages=memory, **kw)
    return Machine(k, droppable_oom=policy, livelock_limit=50)


def mmap(m: Machine, length: int, droppable: bool = False, addr: int = 0) -> int:
    flags = (F.MAP_DROPPABLE | F.MAP_ANONYMOUS) if droppable else (F.MAP_PRIVATE | F.MAP_ANONYMOUS)
    if addr:
        flags |= F.MAP_FIXED
    r = m.mm.mmap(addr, length, F.PROT_READ | F.PROT_WRITE, flags, -1, 0)
    assert r >= 0, r
    m.sync_range(r, length)
    return r
