"""__vdso_getrandom natively in this process: the host kernel's own (through
AT_SYSINFO_EHDR), or our builtin image mapped at VDSO_BASE with a vvar page of
our own below it; and how many calls make whole batch periods.

Where the running kernel has no __vdso_getrandom, the builtin image is run
natively instead: it is mapped at VDSO_BASE (MAP_FIXED_NOREPLACE) with a vvar
page below it holding a vdso_rng_data of our own (generation 1, ready); its
reseed syscall is the real one.
"""
from __future__ import annotations

import ctypes
from dataclasses import dataclass, field

from emulator.calibrate.native import (MAP_ANONYMOUS, MAP_FIXED_NOREPLACE, MAP_PRIVATE, PROT_EXEC, PROT_READ,
                                       PROT_WRITE, Mapping, libc)
from emulator.errors import FaultpathError

VDSO_SIZES = (1, 4, 16, 32, 64, 96, 128, 256, 512, 1024, 4096)
OPAQUE_LEN = 144
BATCH_BYTES = 96          # struct vgetrandom_state.batch: the per-call work cycles with the position in it


@dataclass
class NativeVdso:
    """A callable __vdso_getrandom in this process, plus its ChaCha20 block function."""
    name: str
    getrandom: int                  # absolute address
    chacha: int | None              # absolute address of __arch_chacha20_blocks_nostack, if found
    keep: list = field(default_factory=list)
    note: str = ""


def _chacha_from_calls(img, base: int) -> int | None:
    """The first direct call target inside __vdso_getrandom: the ChaCha20 block function."""
    if "__arch_chacha20_blocks_nostack" in img.symbols:
        return base + img.symbols["__arch_chacha20_blocks_nostack"]
    from capstone import CS_ARCH_X86, CS_MODE_64, Cs
    off = img.symbols.get("__vdso_getrandom")
    if off is None:
        return None
    md = Cs(CS_ARCH_X86, CS_MODE_64)
    for ins in md.disasm(img.text[off:off + 0x800], off):
        if ins.mnemonic == "call":
            try:
                return base + int(ins.op_str, 16)
            except ValueError:
                return None
    return None


def host_native_vdso() -> NativeVdso | None:
    from vdso.elf_image import load_host
    try:
        img = load_host()
    except FaultpathError:
        return None
    base = libc().getauxval(33)        # AT_SYSINFO_EHDR
    if not base:
        return None
    return NativeVdso("host", base + img.symbols["__vdso_getrandom"], _chacha_from_calls(img, base))


@dataclass
class NativeImage:
    """A VdsoImage mapped natively in this process, with a vvar area of our own
    below its text holding a vdso_rng_data (generation 1, ready)."""
    image: object                   # the VdsoImage
    base: int                       # where its text lies here
    mapping: Mapping

    def symbol(self, name: str) -> int:
        return self.image.symbol(name) - self.image.base + self.base

    def close(self) -> None:
        self.mapping.close()


def map_image(img, at_base: bool = False) -> NativeImage:
    """Map img's text read+execute with its vvar area (read-only) below it: at
    img.base (keystone images are assembled for it) or wherever the kernel puts
    it (position-independent ELF images).  The page offsets, and with them the
    code's alignment, are the emulator's."""
    below = img.base - img.vvar_start
    flags = MAP_PRIVATE | MAP_ANONYMOUS | (MAP_FIXED_NOREPLACE if at_base else 0)
    m = Mapping(below + img.size, PROT_READ | PROT_WRITE, flags, addr=img.vvar_start if at_base else 0,
                nohuge=False)
    base = m.addr + below
    rng = base + img.rng_data_offset
    ctypes.memmove(rng, (ctypes.c_char * 9).from_buffer_copy((1).to_bytes(8, "little") + b"\x01"), 9)
    ctypes.memmove(base, img.text, len(img.text))
    if m.libc.mprotect(base, img.size, PROT_READ | PROT_EXEC) != 0 or \
            m.libc.mprotect(m.addr, below, PROT_READ) != 0:
        m.close()
        raise FaultpathError(f"native: mprotect of the native image {img.name} failed")
    return NativeImage(img, base, m)


def builtin_native_vdso() -> NativeVdso:
    """Our own image mapped natively at VDSO_BASE with a vvar area below it."""
    from vdso.asm_build import build_image
    img = build_image("builtin")
    n = map_image(img, at_base=True)
    return NativeVdso("builtin", n.symbol("__vdso_getrandom"), _chacha_from_calls(img, n.base), [n.mapping],
                      "builtin image run natively at VDSO_BASE with our own vvar page")


def native_vdso(image: str = "auto") -> NativeVdso:
    if image in ("auto", "host"):
        v = host_native_vdso()
        if v is not None:
            return v
        if image == "host":
            raise FaultpathError("calibrate: the running kernel has no __vdso_getrandom (needs 6.11+)")
    try:
        return builtin_native_vdso()
    except FaultpathError as e:
        raise FaultpathError(f"calibrate: no host __vdso_getrandom and the builtin image cannot be mapped "
                             f"natively ({e})") from None


def vdso_period(size: int) -> int:
    """Calls after which the batch position repeats (96-byte batch)."""
    from math import gcd
    r = size % BATCH_BYTES
    return 1 if r == 0 else BATCH_BYTES // gcd(r, BATCH_BYTES)


def calls_for(size: int, quick: bool) -> int:
    target = 5_000_000 if not quick else 300_000      # TSC ticks per repeat (~2 ms)
    est = 20 + 3.7 * size
    n = max(vdso_period(size) * 8, int(target / est))
    p = vdso_period(size)
    return (n + p - 1) // p * p

