"""Resolve an --image argument to a VdsoImage."""
from __future__ import annotations

import os

from vdso.errors import ImageError
from vdso.image import MAX_IMAGE_BYTES, VdsoImage

BUILTIN_KINDS = ("builtin", "builtin-v14")


def default_image_name() -> str:
    """Our own assembled vDSO is the embedded default (works on any kernel)."""
    return "builtin" if builtin_available() else "host"


def builtin_available() -> bool:
    try:
        import vdso.asm_build  # noqa: F401
        return True
    except ImportError:
        return False


def load_image(spec: str) -> VdsoImage:
    """The one way an --image is loaded: every kind read through vdso/files.py,
    checked to fit the layout (vdso/image.py's limits) and to run faithfully."""
    if not spec or not spec.strip():
        raise ImageError(f"--image {spec!r}: empty (expected host, builtin, builtin-v14 or a path)")
    img = _load(spec)
    check_size(img)
    check_faithful(img)
    return img


def check_size(img: VdsoImage) -> None:
    """An image the process layout cannot hold is refused before anything is mapped."""
    if len(img.text) > MAX_IMAGE_BYTES:
        raise ImageError(f"{img.name}: an image of {len(img.text):#x} bytes; at most {MAX_IMAGE_BYTES:#x} "
                         f"fit (a real vDSO has two pages)")


def check_faithful(img: VdsoImage, entry: str = "__vdso_getrandom") -> None:
    """Refuse, before anything runs, code Unicorn would run unlike the CPU
    (AVX/EVEX, lock bt* reg): every instruction reachable from the entry."""
    from vdso.insn import first_unfaithful, insn_unfaithful_reason, reachable_insns
    from vdso.errors import UnfaithfulInstruction
    ins = first_unfaithful(reachable_insns(img.text, img.base, [img.symbol(entry)]))
    if ins is not None:
        where = img.source_lines.get(ins.address - img.base) or f"{img.name}+{ins.address - img.base:#x}"
        raise UnfaithfulInstruction(f"{where}: {insn_unfaithful_reason(ins)}; Unicorn 2.1.4 cannot run it faithfully")


def _load(spec: str) -> VdsoImage:
    from vdso.elf_image import load_elf, load_host
    if spec == "host":
        return load_host()
    if spec in BUILTIN_KINDS or spec.endswith((".s", ".S", ".patch")):
        if not builtin_available():
            raise ImageError(f"{spec}: the assembler image builder is not available")
        from vdso.asm_build import build_image
        if spec not in BUILTIN_KINDS and not os.path.lexists(spec):
            raise ImageError(f"{spec}: no such file")
        return build_image(spec)
    if not os.path.lexists(spec):
        raise ImageError(f"{spec}: no such file (expected host, builtin, builtin-v14, a vdso.so, a .s file or a .patch over asm/)")
    return load_elf(spec)
