"""The ELF symbols of an assembled image: names, types, sizes, bindings.

The rules are the ones a kernel-built vDSO follows:

* Every label is a symbol, except GAS-local `.L*` labels (and the builder's
  own `__fp_*` markers).
* Exports: a label `__vdso_NAME` is exported in the dynamic symbol table as
  GLOBAL, with version LINUX_2.6, together with the weak alias `NAME` at the
  same address (`__vdso_getrandom@@LINUX_2.6` and `getrandom@@LINUX_2.6`),
  as the kernel's version script and weak aliases do.  When the source
  defines `NAME` itself, that label is exported as GLOBAL instead.
  Everything else is LOCAL and appears only in `.symtab` (`.globl` does not
  change that: the kernel's version script makes all other symbols local).
* Types come from `.type NAME, @function|@object|@notype`; exports are
  functions by default, other labels NOTYPE (as GAS leaves them).
* Sizes come from `.size NAME, .-NAME` (at the top level, outside .if/.rept
  blocks) or `.size NAME, N`.  A function or object without one takes the
  size of a sized label at the same address, or else reaches up to the next
  label at a higher address or the end of the code; a NOTYPE label has
  size 0.
"""
from __future__ import annotations

from vdso.asm_source import SourceLine
from vdso.errors import AssemblyError
from vdso.image import VDSO_VERSION, ElfSymbol

EXPORT_PREFIX = "__vdso_"


def image_symbols(lines: list[SourceLine], line_offsets: dict[int, int], labels: dict[str, int],
                  code_len: int, text_offset: int) -> list[ElfSymbol]:
    """Symbols for `.symtab` (locals first, then exports) with offsets from
    the image base; `labels` and `line_offsets` are offsets in the code,
    which starts at `text_offset`."""
    types, sizes = _declared(lines, line_offsets, labels)
    starts = sorted(set(labels.values()))

    def natural_size(name: str, kind: str) -> int:
        if name in sizes:
            return sizes[name]
        if kind == "NOTYPE":
            return 0
        off = labels[name]
        twins = [sizes[n] for n, o in labels.items() if o == off and n in sizes]
        if twins:                        # another name for a sized symbol
            return max(twins)
        later = [s for s in starts if s > off]
        return (later[0] if later else code_len) - off

    local, exported = [], []
    for name, off in labels.items():
        own_export = name.startswith(EXPORT_PREFIX) and len(name) > len(EXPORT_PREFIX)
        is_export = own_export or EXPORT_PREFIX + name in labels   # NAME next to __vdso_NAME
        kind = types.get(name, "FUNC" if is_export else "NOTYPE")
        sym = ElfSymbol(name, text_offset + off, natural_size(name, kind), kind,
                        "GLOBAL" if is_export else "LOCAL", VDSO_VERSION if is_export else None)
        (exported if is_export else local).append(sym)
        alias = name[len(EXPORT_PREFIX):]
        if own_export and alias not in labels:
            exported.append(ElfSymbol(alias, sym.offset, sym.size, sym.type, "WEAK", VDSO_VERSION))
    return local + exported


def _declared(lines: list[SourceLine], line_offsets: dict[int, int],
              labels: dict[str, int]) -> tuple[dict[str, str], dict[str, int]]:
    """Types and sizes the source declares with .type and .size."""
    types: dict[str, str] = {}
    sizes: dict[str, int] = {}
    defined_at = {}
    for idx, ln in enumerate(lines):
        for name in ln.labels:
            defined_at.setdefault(name, idx)
    for idx, ln in enumerate(lines):
        for meta in ln.meta:
            directive = "." + meta.kind
            if meta.name not in labels:
                raise AssemblyError(f"{ln.where}: {directive} {meta.name}: no label {meta.name} "
                                    f"in this image")
            if meta.kind == "type":
                types[meta.name] = meta.value
            elif meta.value is not None:
                sizes[meta.name] = meta.value
            elif idx not in line_offsets:
                raise AssemblyError(f"{ln.where}: .size {meta.name}, .-{meta.name} inside a "
                                    f".if/.rept block: put it at the top level")
            elif defined_at.get(meta.name, -1) > idx:
                raise AssemblyError(f"{ln.where}: .size {meta.name}, .-{meta.name}: the label "
                                    f"comes after this line")
            else:
                sizes[meta.name] = line_offsets[idx] - labels[meta.name]
    return types, sizes
