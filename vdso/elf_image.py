"""Load vDSO images from ELF: the running kernel's own vDSO, or a vdso.so file.

The vDSO is a prelinked, position-independent ELF whose file image *is* its
memory image (the kernel maps it page for page), so we keep the bytes as they
are and read the dynamic symbol table with pyelftools.
"""
from __future__ import annotations

import ctypes
import io
import os

from elftools.common.exceptions import ELFError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from vdso.errors import HostVdsoUnavailable, ImageError
from vdso.image import PAGE_SIZE, VdsoImage
from vdso.rng_locate import locate_rng_data

AT_SYSINFO_EHDR = 33
GETRANDOM_SYMBOL = "__vdso_getrandom"
MAX_VDSO_SIZE = 1 << 20     # real vDSOs are 2 pages; anything near 1 MiB is not one


def _host_vdso_bytes() -> bytes:
    """The running kernel's vDSO, read from our own address space."""
    base = 0
    try:
        libc = ctypes.CDLL(None)
        libc.getauxval.restype = ctypes.c_ulong
        libc.getauxval.argtypes = [ctypes.c_ulong]
        base = libc.getauxval(AT_SYSINFO_EHDR)
    except (OSError, AttributeError):
        base = 0
    size = 0
    try:
        with open("/proc/self/maps") as f:
            for line in f:
                if line.rstrip().endswith("[vdso]"):
                    lo, hi = (int(x, 16) for x in line.split()[0].split("-"))
                    if not base:
                        base = lo
                    if lo == base:
                        size = hi - lo
    except OSError:
        pass
    if not base:
        raise HostVdsoUnavailable("host: this process has no vDSO (AT_SYSINFO_EHDR is 0)")
    if not size:
        size = 2 * PAGE_SIZE
    return ctypes.string_at(base, size)


def _parse(raw: bytes, name: str) -> tuple[dict[str, int], int]:
    """Symbols (offset from the load base) and the image's memory size."""
    if len(raw) < 64 or raw[:4] != b"\x7fELF":
        raise ImageError(f"{name}: not an ELF file")
    try:
        elf = ELFFile(io.BytesIO(raw))
        if elf.get_machine_arch() != "x64":
            raise ImageError(f"{name}: not an x86-64 ELF ({elf.get_machine_arch()})")
        # Prelinked: the lowest PT_LOAD vaddr is the load base (0 for vDSOs).
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        if not loads:
            raise ImageError(f"{name}: ELF has no PT_LOAD segment")
        lo = min(s["p_vaddr"] for s in loads)
        hi = max(s["p_vaddr"] + s["p_memsz"] for s in loads)
        symbols: dict[str, int] = {}
        for sec in elf.iter_sections():
            if not isinstance(sec, SymbolTableSection):
                continue
            for sym in sec.iter_symbols():
                if sym.name and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") \
                        and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
                    symbols.setdefault(sym.name.split("@")[0], sym["st_value"] - lo)
    except ELFError as e:
        raise ImageError(f"{name}: malformed ELF: {e}") from None
    except (ValueError, KeyError, IndexError, AssertionError) as e:
        raise ImageError(f"{name}: malformed or truncated ELF ({type(e).__name__}: {e})") from None
    if hi - lo > MAX_VDSO_SIZE:
        raise ImageError(f"{name}: image spans {hi - lo} bytes, too large for a vDSO")
    return symbols, hi - lo


def load_elf_bytes(raw: bytes, name: str) -> VdsoImage:
    symbols, memsz = _parse(raw, name)
    if GETRANDOM_SYMBOL not in symbols:
        raise ImageError(f"{name}: no {GETRANDOM_SYMBOL} symbol (kernel before 6.11, or not a vDSO)")
    end = symbols[GETRANDOM_SYMBOL]
    if end >= len(raw):
        raise ImageError(f"{name}: {GETRANDOM_SYMBOL} lies beyond the end of the file (truncated?)")
    text = raw[:max(memsz, len(raw))]
    pad = (-len(text)) % PAGE_SIZE
    text = bytes(text) + b"\0" * pad
    img = VdsoImage(name=name, text=text, symbols=symbols, rng_data_offset=0)
    img.rng_data_offset, img.rng_data_source = locate_rng_data(img)
    return img


def load_elf(path: str) -> VdsoImage:
    try:
        size = os.path.getsize(path)
        if size > MAX_VDSO_SIZE:
            raise ImageError(f"{path}: {size} bytes, too large for a vDSO")
        with open(path, "rb") as f:
            raw = f.read()
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror}") from None
    return load_elf_bytes(raw, path)


def load_host() -> VdsoImage:
    raw = _host_vdso_bytes()
    try:
        return load_elf_bytes(raw, "host")
    except ImageError as e:
        if GETRANDOM_SYMBOL in str(e):
            raise HostVdsoUnavailable(f"host: the running kernel ({os.uname().release}) has no "
                                      f"{GETRANDOM_SYMBOL}; it needs Linux 6.11 or later") from None
        raise


def host_has_vgetrandom() -> bool:
    try:
        load_host()
        return True
    except ImageError:
        return False
