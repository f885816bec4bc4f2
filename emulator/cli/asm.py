"""`faultpath asm`: assemble our own vDSO images (and any .s or .patch given)
and print their ELF layout, symbols and unwind coverage (`make asm`).
Everything printed is read back from the emitted ELF image (pyelftools), not
taken from the builder's own bookkeeping."""
from __future__ import annotations

import argparse
import io


def register(sub, parser_class) -> None:
    p = sub.add_parser("asm", help="assemble builtin images (or FILE.s / FILE.patch) and print "
                                   "their ELF layout and symbols")
    p.add_argument("sources", nargs="*", help="extra .s files (or .patch files over asm/) to assemble")
    p.set_defaults(func=cmd_asm)


def cmd_asm(args: argparse.Namespace) -> int:
    from emulator.options import nonempty
    from vdso.asm_build import build_image
    from vdso.loader import check_faithful, check_size
    for spec in args.sources:
        nonempty(spec, "asm: source")
    blocks = []
    for spec in ["builtin", "builtin-v14", *args.sources]:
        img = build_image(spec)
        check_size(img)
        check_faithful(img)
        blocks.append("\n".join(describe(img)))
    print("\n\n".join(blocks))
    return 0


def describe(img) -> list[str]:
    from elftools.dwarf.callframe import FDE
    from elftools.elf.elffile import ELFFile

    from vdso.elf_symbols import image_elf
    raw, symbols = image_elf(img)
    elf = ELFFile(io.BytesIO(raw))
    text = elf.get_section_by_name(".text")
    note = elf.get_section_by_name(".note")
    build_id = next((n["n_desc"] for n in note.iter_notes() if n["n_type"] == "NT_GNU_BUILD_ID"), "-")
    fdes = []
    if elf.get_dwarf_info().has_EH_CFI():
        fdes = [(e.header["initial_location"], e.header["address_range"])
                for e in elf.get_dwarf_info().EH_CFI_entries() if isinstance(e, FDE)]
    out = [f"{img.name}: abi {img.abi}, ELF image of {len(raw)} bytes ({img.size // 4096} page(s)) "
           f"at {img.base:#x}, build-id {build_id}",
           f"  .text at +{text['sh_offset']:#06x}: {text['sh_size']} bytes of code; "
           f"vdso_rng_data at base{img.rng_data_offset:+#x}; {len(fdes)} FDE(s) in .eh_frame",
           f"  {'address':<14}  {'offset':<7} {'size':>5}  {'type':<6} {'bind':<6} name"]
    for s in symbols:
        name = f"{s.name}@@{s.version}" if s.version else s.name
        out.append(f"  {img.base + s.offset:#x}  +{s.offset:#06x} {s.size:>5}  {s.type:<6} {s.bind:<6} {name}")
    for s in symbols:
        if s.type == "FUNC" and s.size and s.bind != "WEAK" and \
                not any(lo <= s.offset < lo + n for lo, n in fdes):
            out.append(f"  no CFI for {s.name}: {_why_no_cfi(raw, text, s)}")
    return out


def _why_no_cfi(raw: bytes, text, sym) -> str:
    from vdso.cfi import CfiError, derive
    code = raw[text["sh_offset"]:text["sh_offset"] + text["sh_size"]]
    try:
        derive(code, text["sh_offset"], sym.name, sym.offset - text["sh_offset"], sym.size)
    except CfiError as e:
        return str(e)
    return "it overlaps another function"
