"""`faultpath decodecheck FILE...`: capstone's instruction lengths against GNU
objdump's over the executable sections of ELF files (emulator/skipcheck/decodecheck.py).

`host` as a FILE means the running kernel's vDSO (copied out of this
process's address space into a temporary file)."""
from __future__ import annotations

import argparse
import json
import os
import tempfile


def register(sub, parser_class) -> None:
    p = sub.add_parser(
        "decodecheck",
        help="compare capstone's instruction lengths with objdump's over ELF files",
        description="Walk objdump's disassembly of every executable section, decode with capstone at "
                    "each instruction boundary, ask Unicorn at each disagreement, and classify every "
                    "mismatch (capstone's known bugs have their own classes).  FILE `host` "
                    "is the running kernel's vDSO.  Exit status 0: no unexplained mismatch; 1: some; "
                    "2: bad input.")
    p.add_argument("files", nargs="+", metavar="FILE", help="ELF files, or `host`")
    p.add_argument("--examples", type=int, default=5, metavar="N",
                   help="examples kept per mismatch class (default 5)")
    p.add_argument("--no-unicorn", action="store_true",
                   help="do not ask Unicorn for a third opinion at mismatches")
    p.add_argument("--json", action="store_true", help="one JSON object on stdout")
    p.set_defaults(func=cmd_decodecheck)


def host_vdso_file(directory: str) -> str:
    """Write the running kernel's vDSO to a file in ``directory``."""
    from vdso.elf_image import _host_vdso_bytes
    path = os.path.join(directory, "host-vdso.so")
    with open(path, "wb") as f:
        f.write(_host_vdso_bytes())
    return path


def cmd_decodecheck(args: argparse.Namespace) -> int:
    from emulator.skipcheck.decodecheck import decodecheck, format_report
    from emulator.errors import UsageError
    if not 0 <= args.examples <= 10_000:
        raise UsageError(f"--examples {args.examples}: out of range")
    reports = []
    with tempfile.TemporaryDirectory(prefix="faultpath-decodecheck-") as tmp:
        for name in args.files:
            path = host_vdso_file(tmp) if name == "host" else name
            rep = decodecheck(path, max_examples=args.examples, use_unicorn=not args.no_unicorn)
            if name == "host":
                rep.path = "host (the running kernel's vDSO)"
            reports.append(rep)
    if args.json:
        total = {
            "files": [r.as_dict() for r in reports],
            "compared": sum(r.compared for r in reports),
            "agreements": sum(r.agreements for r in reports),
            "mismatches": sum(r.mismatch_total for r in reports),
            "unexplained": sum(r.unexplained for r in reports),
        }
        print(json.dumps(total, indent=1))
    else:
        print("\n".join(format_report(r) for r in reports))
        if len(reports) > 1:
            print(f"total: {sum(r.compared for r in reports)} instructions compared, "
                  f"{sum(r.agreements for r in reports)} agreements, "
                  f"{sum(r.mismatch_total for r in reports)} mismatches "
                  f"({sum(r.unexplained for r in reports)} unexplained)")
    return 1 if any(r.unexplained for r in reports) else 0
