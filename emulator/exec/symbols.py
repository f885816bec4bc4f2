"""Where things are in an emulated process: a symbol's addresses in the vDSO
and in every ELF file the process mapped (its program, its loader, its
libraries), and an address as `file+offset` for a report.

A file's load base is the lowest address it is mapped at from file offset 0
(how the loader maps a shared object: its first PT_LOAD covers offset 0).
Symbol tables are read once per file (.symtab and .dynsym, each name once).
"""
from __future__ import annotations

import os
from typing import TYPE_CHECKING

if TYPE_CHECKING:
    from emulator.task import Task


def load_bases(p: "Task") -> dict[str, int]:
    """path -> load base of every file p maps from offset 0."""
    bases: dict[str, int] = {}
    for v in p.mm.vmas:
        f = v.vm_file
        if f is not None and v.vm_pgoff == 0 and (f.name not in bases or v.start < bases[f.name]):
            bases[f.name] = v.start
    return bases


class SymbolTables:
    """Symbol tables of host ELF files, read on first use and kept."""

    def __init__(self):
        self._by_path: dict[str, dict[str, int]] = {}

    def of(self, path: str) -> dict[str, int]:
        """name -> offset from the load base; {} for a file that is no ELF."""
        if path not in self._by_path:
            from vdso.elf_symbols import read_symbols
            try:
                with open(path, "rb") as f:
                    raw = f.read()
                self._by_path[path] = {s.name: s.offset for s in read_symbols(raw, os.path.basename(path))}
            except Exception:       # not an ELF file, unreadable: it holds no symbol for us
                self._by_path[path] = {}
        return self._by_path[path]

    def resolve(self, p: "Task", name: str, vdso: bool = True) -> list[tuple[str, int]]:
        """(where, address) of NAME in p now: the vDSO ("[vdso]") unless
        vdso is False, and every mapped file whose symbol tables name it."""
        out = []
        img = p.kernel.image
        if vdso and img.has_symbol(name):
            out.append(("[vdso]", img.symbol(name)))
        for path, base in load_bases(p).items():
            syms = self.of(path)
            if name in syms:
                out.append((path, base + syms[name]))
        return out


def file_offset(p: "Task", addr: int) -> str:
    """`libc.so.6+0x4313e` for an address in a mapped file, `[vdso]+0x930` in
    the vDSO, else the address."""
    img = p.kernel.image
    if 0 <= addr - img.base < len(img.text):
        return f"[vdso]+{addr - img.base:#x}"
    vma = p.mm.find_vma(addr)
    if vma is not None and vma.start <= addr and vma.vm_file is not None:
        base = load_bases(p).get(vma.vm_file.name)
        if base is not None:
            return f"{os.path.basename(vma.vm_file.name)}+{addr - base:#x}"
    return f"{addr:#x}"
