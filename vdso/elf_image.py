"""Load vDSO images from ELF: the running kernel's own vDSO, or a vdso.so file.

The vDSO is a prelinked, position-independent ELF whose file image *is* its
memory image (the kernel maps it page for page), so we keep the bytes as they
are and read the dynamic symbol table with pyelftools.
"""
from __future__ import annotations

import ctypes
import io
import os

from capstone import CsError
from elftools.elf.elffile import ELFFile
from elftools.elf.sections import SymbolTableSection

from vdso.elf_check import check_elf, elf_errors
from vdso.errors import FaultpathError, HostVdsoUnavailable, ImageError
from vdso.files import read_bytes
from vdso.image import MAX_IMAGE_BYTES, MAX_VVAR_BYTES, PAGE_SIZE, VdsoImage
from vdso.rng_locate import locate_rng_data

AT_SYSINFO_EHDR = 33
GETRANDOM_SYMBOL = "__vdso_getrandom"
MAX_VDSO_SIZE = MAX_IMAGE_BYTES     # real vDSOs are 2 pages; anything near 1 MiB is not one


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
    """Symbols (offset from the load base) and the image's memory size.

    check_elf has bounded every table against the file first; whatever
    pyelftools still raises on a corrupt file (its own errors, construct's,
    OverflowError from an offset it computed, ...) is the file's fault, not
    ours, and becomes one ImageError line."""
    check_elf(raw, name)
    try:
        elf = ELFFile(io.BytesIO(raw))
        # Prelinked: the lowest PT_LOAD vaddr is the load base (0 for vDSOs).
        loads = [s for s in elf.iter_segments() if s["p_type"] == "PT_LOAD"]
        if not loads:
            raise ImageError(f"{name}: ELF has no PT_LOAD segment")
        lo = min(s["p_vaddr"] for s in loads)
        hi = max(s["p_vaddr"] + s["p_memsz"] for s in loads)
        if hi - lo > MAX_VDSO_SIZE:
            raise ImageError(f"{name}: image spans {hi - lo} bytes, too large for a vDSO")
        symbols: dict[str, int] = {}
        for sec in elf.iter_sections():
            if not isinstance(sec, SymbolTableSection):
                continue
            for sym in sec.iter_symbols():
                if sym.name and sym["st_info"]["type"] in ("STT_FUNC", "STT_OBJECT", "STT_NOTYPE") \
                        and sym["st_shndx"] != "SHN_UNDEF" and sym["st_value"]:
                    symbols.setdefault(sym.name.split("@")[0], sym["st_value"] - lo)
    except FaultpathError:
        raise
    except elf_errors() as e:
        raise ImageError(f"{name}: malformed ELF ({type(e).__name__}: {_one_line(e)})") from None
    return symbols, hi - lo


def _one_line(e: BaseException) -> str:
    text = str(e).strip()
    return (text.splitlines()[0] if text else "no detail")[:200]


def load_elf_bytes(raw: bytes, name: str) -> VdsoImage:
    symbols, memsz = _parse(raw, name)
    if GETRANDOM_SYMBOL not in symbols:
        raise ImageError(f"{name}: no {GETRANDOM_SYMBOL} symbol (kernel before 6.11, or not a vDSO)")
    text = raw[:max(memsz, len(raw))]
    pad = (-len(text)) % PAGE_SIZE
    text = bytes(text) + b"\0" * pad
    entry = symbols[GETRANDOM_SYMBOL]
    if not 0 <= entry < min(len(raw), memsz):
        raise ImageError(f"{name}: {GETRANDOM_SYMBOL} at {entry:#x} lies outside the image's "
                         f"{min(len(raw), memsz):#x} bytes (truncated?)")
    # Symbols the image cannot hold name nothing that could run: drop them.
    symbols = {k: v for k, v in symbols.items() if 0 <= v < len(text)}
    img = VdsoImage(name=name, text=text, symbols=symbols, rng_data_offset=0)
    try:
        img.rng_data_offset, img.rng_data_source = locate_rng_data(img)
    except (CsError, *elf_errors()) as e:           # capstone on arbitrary bytes
        raise ImageError(f"{name}: cannot read {GETRANDOM_SYMBOL}'s code ({type(e).__name__})") from None
    check_rng_data(img)
    return img


def check_rng_data(img: VdsoImage) -> None:
    """struct vdso_rng_data (generation u64, is_ready u8) must lie wholly below
    the image, within the vvar pages a kernel puts there."""
    off = img.rng_data_offset
    if not -MAX_VVAR_BYTES <= off <= -16:
        raise ImageError(f"{img.name}: vdso_rng_data at base{off:+#x} ({img.rng_data_source}): outside the "
                         f"vvar area (16 bytes within {MAX_VVAR_BYTES // PAGE_SIZE} pages below the image)")


def load_elf(path: str) -> VdsoImage:
    raw = read_bytes(path, limit=MAX_VDSO_SIZE, label=path, error=ImageError)
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
