"""Names for the functions a stripped vDSO does not export.

The running kernel's [vdso] keeps only its dynamic symbols: __vdso_getrandom
is named, the ChaCha20 routine it calls (__arch_chacha20_blocks_nostack,
static) is not, and its symbols live in vdso64.so.dbg, which most systems do
not install.  A function is named here only by what it does: each direct call
target of __vdso_getrandom is run on its own in a scratch process with the
routine's ABI (dst, key, counter*, nblocks) and must produce the reference
ChaCha20 blocks (vdso/chacha20.py, a counter crossing 2**32) and write the
counter back.  Nothing is inferred from bytes or offsets.
"""
from __future__ import annotations

import struct
from functools import lru_cache

from emulator.errors import FaultpathError
from emulator.kernel import Kernel
from emulator.machine import Machine
from mm import flags as F
from mm.flags import PAGE_SIZE
from vdso.chacha20 import chacha20_blocks
from vdso.image import VdsoImage
from vdso.insn import reachable_insns

CHACHA = "__arch_chacha20_blocks_nostack"
_KEY = bytes(range(0x40, 0x60))
_COUNTER = 0xFFFF_FFFF            # the next block carries into the high word
_NBLOCKS = 2
_BUDGET = 200_000


def identified_symbols(image: VdsoImage) -> dict[str, int]:
    """name -> offset from the image base, for functions the image does not
    name itself and that were identified by running them."""
    return dict(_identify(image.name, bytes(image.text), tuple(sorted(image.symbols.items())),
                          image.base, image.rng_data_offset))


@lru_cache(maxsize=8)
def _identify(name: str, text: bytes, symbols: tuple, base: int, rng_off: int) -> tuple[tuple[str, int], ...]:
    syms = dict(symbols)
    if CHACHA in syms or "__vdso_getrandom" not in syms:
        return ()
    image = VdsoImage(name=name, text=text, symbols=syms, rng_data_offset=rng_off, base=base)
    entry = base + syms["__vdso_getrandom"]
    try:
        insns = reachable_insns(text, base, [entry])
    except Exception:         # undecodable code: nothing to name
        return ()
    targets = sorted({int(i.op_str, 16) for i in insns.values()
                      if i.mnemonic == "call" and i.op_str.startswith("0x")})
    for t in targets:
        if base <= t < base + len(text) and _is_chacha(image, t):
            return ((CHACHA, t - base),)
    return ()


def _is_chacha(image: VdsoImage, func: int) -> bool:
    try:
        m = Machine(Kernel(image, memory_pages=64))
        area = m.mm.mmap(0, PAGE_SIZE, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS, -1, 0)
        if area < 0:
            return False
        m.sync_range(area, PAGE_SIZE)
        dst, key, ctr = area, area + 0x200, area + 0x300
        m.user_write(key, _KEY)
        m.user_write(ctr, struct.pack("<Q", _COUNTER))
        m.user_write(dst, bytes(64 * _NBLOCKS))
        res = m.call(func, [dst, key, ctr, _NBLOCKS], budget=_BUDGET)
        if res.outcome != "returned":
            return False
        want, after = chacha20_blocks(_KEY, _COUNTER, _NBLOCKS)
        got = m.read(dst, len(want))
        back = struct.unpack("<Q", m.read(ctr, 8))[0]
        m.close()
        return got == want and back == after
    except FaultpathError:
        return False
