"""Addresses in a sweep's report, as a kernel developer reads them."""
from __future__ import annotations

from emulator.kernel import SENTINEL_PAGE
from vdso.image import VdsoImage
from vdso.insn import decode_one


def symbolize(image: VdsoImage, rip: int) -> str:
    """`sym+off (file:line) [insn]` for an address in the image."""
    if rip == SENTINEL_PAGE:
        return "(after the return)"
    off = rip - image.base
    if not 0 <= off < len(image.text):
        return f"{rip:#x}"
    best = None
    for name, o in image.symbols.items():
        if o <= off and not name.startswith("__fp_") and (best is None or o > best[1]):
            best = (name, o)
    s = f"{best[0]}+{off - best[1]:#x}" if best else f"{image.name}+{off:#x}"
    line = image.source_lines.get(off)
    if line:
        s += f" ({line})"
    ins = decode_one(bytes(image.text[off:off + 15]), rip)
    return f"{s} [{ins.text if ins else '?'}]"
