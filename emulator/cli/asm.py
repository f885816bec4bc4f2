"""`faultpath asm`: assemble our own vDSO images (and any .s given) and print
their sizes and symbols (`make asm`)."""
from __future__ import annotations

import argparse


def register(sub, parser_class) -> None:
    p = sub.add_parser("asm", help="assemble builtin images (or FILE.s) and print sizes and symbols")
    p.add_argument("sources", nargs="*", help="extra .s files to assemble")
    p.set_defaults(func=cmd_asm)


def cmd_asm(args: argparse.Namespace) -> int:
    from vdso.asm_build import build_image
    from vdso.loader import check_faithful
    for spec in ["builtin", "builtin-v14", *args.sources]:
        img = build_image(spec)
        check_faithful(img)
        code = len(img.text.rstrip(b"\0\xcc\x90"))
        print(f"{img.name}: abi {img.abi}, {code} bytes of code at {img.base:#x} "
              f"({img.size // 4096} page(s)), vdso_rng_data at base{img.rng_data_offset:+#x}")
        for name, off in sorted(img.symbols.items(), key=lambda kv: kv[1]):
            if name.startswith("__fp_"):
                continue
            print(f"  {img.base + off:#x}  +{off:#06x}  {name}")
    return 0
