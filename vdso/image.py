"""A loaded vDSO image: what the Machine maps and calls.

Every source of vDSO code (the running kernel, a vdso.so file, our own
keystone-assembled asm/) produces one of these, so one loader runs them all.
"""
from __future__ import annotations

from dataclasses import dataclass, field

PAGE_SIZE = 4096

# Where images are mapped in the emulated process.  Keystone-built images are
# assembled for this address; ELF vDSOs are position independent.
VDSO_BASE = 0x7FFF_F7FC_0000

# 6.15+: struct vdso_rng_data sits at the start of the vvar area, 4 pages below
# the vDSO text (measured on this host: lea rax,[rip-...] -> text - 0x4000).
VVAR_PAGES = 4
RNG_DATA_OFFSET_6_15 = -VVAR_PAGES * PAGE_SIZE
# 6.11-6.14: vvar page + 640, the vvar area several pages below the text.
RNG_DATA_OFFSET_6_11 = -VVAR_PAGES * PAGE_SIZE + 640

# How large an image may be, code and data: a real vDSO is two pages; 1 MiB
# leaves room for any experiment and keeps an image with its vvar pages well
# inside the gap the process layout has for it (emulator/layout.py).
MAX_IMAGE_BYTES = 1 << 20
# How far below the text vdso_rng_data may lie: the kernels put it 4 pages
# down (6.15+) or on a vvar page a few pages down (6.11-6.14).
MAX_VVAR_BYTES = 16 * PAGE_SIZE

ABI_6_11 = "6.11"   # (buffer, len, flags, opaque_state, opaque_len)
ABI_V14 = "v14"     # (buffer, len, flags, state); states from vgetrandom_alloc


# What the kernel's vDSO exports its functions as (its linker version script).
VDSO_VERSION = "LINUX_2.6"
VDSO_SONAME = "linux-vdso.so.1"


@dataclass(frozen=True)
class ElfSymbol:
    """One symbol of an image's ELF symbol tables."""
    name: str
    offset: int                     # from the image base (the ELF header)
    size: int
    type: str                       # "FUNC", "OBJECT" or "NOTYPE"
    bind: str                       # "LOCAL", "GLOBAL" or "WEAK"
    version: str | None = None      # "LINUX_2.6" when the dynamic symbol table exports it


@dataclass
class VdsoImage:
    name: str                       # "host", "builtin", "builtin-v14", a path
    text: bytes                     # the image as mapped at `base` (page padded): for every
                                    # kind a complete ELF file, its ELF header at `base`
    symbols: dict[str, int]         # symbol -> offset from the image base
    rng_data_offset: int            # vdso_rng_data relative to the base (negative)
    abi: str = ABI_6_11
    base: int = VDSO_BASE
    rng_data_source: str = "disassembly"   # or "preset 6.15+", "assembled"
    source_lines: dict[int, str] = field(default_factory=dict)  # offset -> "file:line" (asm images)
    fixed_base: bool = False        # linked for `base` (assembled images); ELF vDSOs are position independent

    @property
    def size(self) -> int:
        return (len(self.text) + PAGE_SIZE - 1) // PAGE_SIZE * PAGE_SIZE

    @property
    def vvar_start(self) -> int:
        """Address of the first vvar page (page containing vdso_rng_data)."""
        return (self.base + self.rng_data_offset) & ~(PAGE_SIZE - 1)

    @property
    def rng_data_addr(self) -> int:
        return self.base + self.rng_data_offset

    def symbol(self, name: str) -> int:
        """Absolute address of a symbol (accepts a __vdso_ prefix or not)."""
        for cand in (name, "__vdso_" + name, name.removeprefix("__vdso_")):
            if cand in self.symbols:
                return self.base + self.symbols[cand]
        from vdso.errors import ImageError
        raise ImageError(f"{self.name}: no symbol {name!r}")

    def has_symbol(self, name: str) -> bool:
        return any(c in self.symbols for c in (name, "__vdso_" + name, name.removeprefix("__vdso_")))
