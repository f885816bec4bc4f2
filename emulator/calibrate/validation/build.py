"""Build the validation set's images: the C sources with gcc at each flavour,
the assembly kernels with keystone.

A gcc build is laid out like a vDSO (c/image.lds): one read+execute segment
linked at 0, no dynamic relocations, vdso_rng_data 4 pages below the text.
It loads through the same ELF loader as any vdso.so (vdso/elf_image.py), so
the emulator runs exactly the bytes the CPU runs.
"""
from __future__ import annotations

import shutil
import subprocess
import tempfile
from dataclasses import dataclass
from pathlib import Path

from vdso.errors import FaultpathError
from vdso.image import RNG_DATA_OFFSET_6_15, VDSO_BASE, VdsoImage

C_DIR = Path(__file__).parent / "c"
C_SOURCES = ("vgetrandom.c", "loops.c")


class CompilerMissing(FaultpathError):
    """gcc is not installed: the C part of the validation set cannot be built."""


class BuildError(FaultpathError):
    """gcc or the linker refused a validation source."""


@dataclass(frozen=True)
class Flavor:
    name: str
    flags: tuple[str, ...]
    note: str


# x86-64 baseline ISA (SSE2, no AVX: Unicorn runs VEX code wrongly and faultpath
# refuses it); "scalar" keeps gcc to the general registers, as the kernel's C is.
_ISA = ("-march=x86-64", "-mtune=generic", "-mno-avx", "-mno-avx2")
FLAVORS: dict[str, Flavor] = {}
for _lvl in ("O0", "O2", "O3"):
    FLAVORS[f"{_lvl}-scalar"] = Flavor(f"{_lvl}-scalar", (f"-{_lvl}", *_ISA, "-mgeneral-regs-only"),
                                       f"gcc -{_lvl}, general registers only")
    FLAVORS[f"{_lvl}-sse2"] = Flavor(f"{_lvl}-sse2", (f"-{_lvl}", *_ISA, "-msse2"),
                                     f"gcc -{_lvl}, SSE2 allowed (auto-vectorised at -O3)")

# Freestanding, position independent, nothing that needs a libc or a loader.
_COMMON = ("-ffreestanding", "-fno-builtin", "-fno-tree-loop-distribute-patterns", "-fno-stack-protector",
           "-fcf-protection=none", "-fno-asynchronous-unwind-tables", "-fPIC", "-nostdlib", "-shared",
           "-Wall", "-Werror", "-Wl,-Bsymbolic", "-Wl,--build-id=none", "-Wl,--no-undefined",
           "-Wl,-z,max-page-size=4096", "-Wl,--hash-style=both")


def gcc_path() -> str:
    gcc = shutil.which("gcc")
    if gcc is None:
        raise CompilerMissing("validation: gcc is not installed, so the C bodies cannot be built")
    return gcc


def gcc_version() -> str:
    r = subprocess.run([gcc_path(), "-dumpfullversion"], capture_output=True, text=True, timeout=30)
    return r.stdout.strip() or "?"


def build_gcc(flavor: str) -> VdsoImage:
    """The C sources built at one flavour, loaded as an image."""
    from vdso.elf_image import load_elf_bytes
    f = FLAVORS[flavor]
    gcc = gcc_path()
    with tempfile.TemporaryDirectory(prefix="faultpath-validation-") as d:
        out = Path(d) / f"validation-{flavor}.so"
        cmd = [gcc, *f.flags, *_COMMON, f"-Wl,-T,{C_DIR / 'image.lds'}", "-o", str(out),
               *(str(C_DIR / s) for s in C_SOURCES)]
        try:
            r = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise BuildError(f"validation: gcc {flavor}: {e}") from None
        if r.returncode != 0:
            first = next((ln for ln in r.stderr.splitlines() if "error" in ln), r.stderr.strip()[:200])
            raise BuildError(f"validation: gcc {flavor} failed: {first}")
        raw = out.read_bytes()
    _check_no_relocations(raw, flavor)
    img = load_elf_bytes(raw, f"gcc-{flavor}")
    img.name = f"gcc-{flavor}"
    return img


def _check_no_relocations(raw: bytes, flavor: str) -> None:
    """The image is copied, not loaded by ld.so: a dynamic relocation would go unapplied."""
    import io

    from elftools.elf.elffile import ELFFile
    from elftools.elf.relocation import RelocationSection
    elf = ELFFile(io.BytesIO(raw))
    for sec in elf.iter_sections():
        if isinstance(sec, RelocationSection) and sec.num_relocations():
            raise BuildError(f"validation: gcc {flavor}: {sec.name} holds {sec.num_relocations()} relocations")


def build_asm(kernels: dict[str, str]) -> VdsoImage:
    """Keystone kernels (name -> source, each ending in ret) as one image at
    VDSO_BASE, each 64-byte aligned; no vdso_rng_data is used."""
    from vdso.asm_build import assemble_snippet
    code, syms = b"", {}
    for name, src in kernels.items():
        code += b"\xcc" * ((-len(code)) % 64)
        syms[name] = len(code)
        code += bytes(assemble_snippet(src, VDSO_BASE + len(code), f"<validation:{name}>"))
    code += b"\xcc" * ((-len(code)) % 4096)
    return VdsoImage(name="asm-kernels", text=code, symbols=syms, rng_data_offset=RNG_DATA_OFFSET_6_15,
                     rng_data_source="unused")
