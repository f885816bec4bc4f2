"""decodecheck: capstone's instruction lengths against GNU objdump's over an
ELF file's executable sections.

The idea of the kernel's ``insn_decoder_test`` (which checks the kernel's
instruction decoder against objdump over vmlinux), applied to the decoder
the ``skip`` fault path uses.  objdump disassembles every SHF_EXECINSTR
section (symbol-aware, so it restarts at each function); capstone decodes at
each of objdump's instruction boundaries, so one disagreement never cascades.
Each disagreement is run through Unicorn as a third opinion and named by
`emulator.skipcheck.divergence.classify`.

    report = decodecheck("/usr/lib/x86_64-linux-gnu/libc.so.6")
    print(format_report(report))
"""

from __future__ import annotations

import bisect
import io
import os
import subprocess
import tempfile
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from elftools.dwarf.callframe import FDE
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from emulator.errors import FaultpathError, ImageError
from emulator.skipcheck.divergence import CLASSES, classify
from emulator.skipcheck.oracles import OBJDUMP, have_objdump, objdump_is_bad, parse_objdump, unicorn_length
from vdso.elf_check import check_elf, elf_errors
from vdso.files import read_bytes
from vdso.insn import MAX_INSN_LEN, disassembler

DEFAULT_EXAMPLES = 5
_CHUNK = 4096          # bytes capstone decodes in one call


@dataclass(frozen=True)
class Mismatch:
    """One instruction boundary where capstone and objdump disagree."""
    section: str
    address: int
    code: bytes                 # up to 15 bytes from the boundary
    capstone_len: int | None
    capstone_text: str
    objdump_len: int | None     # None: objdump printed (bad)
    objdump_bytes: int          # bytes objdump consumed there
    objdump_text: str
    unicorn_len: int | None
    cls: str

    def as_dict(self) -> dict:
        return {
            "section": self.section,
            "address": f"{self.address:#x}",
            "bytes": self.code.hex(" "),
            "capstone": {"length": self.capstone_len, "text": self.capstone_text},
            "objdump": {"length": self.objdump_len, "bytes": self.objdump_bytes,
                        "text": self.objdump_text},
            "unicorn": {"length": self.unicorn_len},
            "class": self.cls,
        }


@dataclass
class Report:
    """What decodecheck found in one file."""
    path: str
    sections: list[tuple[str, int, int]] = field(default_factory=list)  # (name, addr, size)
    compared: int = 0            # objdump instructions walked
    agreements: int = 0          # same length, or all three reject the bytes
    both_rejected: int = 0       # ... of which capstone, objdump and Unicorn reject
    mismatches: Counter = field(default_factory=Counter)      # class -> count
    examples: dict[str, list[Mismatch]] = field(default_factory=dict)
    seconds: float = 0.0

    @property
    def mismatch_total(self) -> int:
        return sum(self.mismatches.values())

    @property
    def unexplained(self) -> int:
        return self.mismatches.get("unexplained", 0)

    def as_dict(self) -> dict:
        return {
            "path": self.path,
            "sections": [{"name": n, "address": f"{a:#x}", "size": s}
                         for n, a, s in self.sections],
            "compared": self.compared,
            "agreements": self.agreements,
            "both_rejected": self.both_rejected,
            "mismatches": dict(sorted(self.mismatches.items())),
            "examples": {k: [m.as_dict() for m in v]
                         for k, v in sorted(self.examples.items())},
            "seconds": round(self.seconds, 3),
        }


# --------------------------------------------------------------------------
# ELF side
# --------------------------------------------------------------------------

@dataclass(frozen=True)
class _Section:
    name: str
    addr: int
    data: bytes


# An ELF file to decode: libraries run to tens of megabytes; this bounds what is read.
MAX_ELF_BYTES = 256 << 20


def _exec_sections(path: str) -> list[_Section]:
    """The SHF_EXECINSTR sections with contents; ImageError on bad input.
    The file comes through vdso/files.py (a regular file, bounded in size)
    and its tables are checked against its size (vdso/elf_check.py) before
    pyelftools reads them."""
    raw = read_bytes(path, limit=MAX_ELF_BYTES, label=path, error=ImageError)
    check_elf(raw, path)
    size = len(raw)
    try:
        elf = ELFFile(io.BytesIO(raw))
        sections = []
        for sec in elf.iter_sections():
            if not sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                continue
            if sec["sh_type"] == "SHT_NOBITS" or sec["sh_size"] == 0:
                continue
            if sec["sh_offset"] + sec["sh_size"] > size:
                raise ImageError(f"{path}: truncated (section {sec.name} ends at "
                                 f"{sec['sh_offset'] + sec['sh_size']:#x}, file is {size:#x} bytes)")
            sections.append(_Section(sec.name, sec["sh_addr"], sec.data()))
    except ImageError:
        raise
    except elf_errors() as e:               # a corrupt file, whatever pyelftools tripped on
        raise ImageError(f"{path}: bad ELF file ({type(e).__name__}: {(str(e).splitlines() or [''])[0][:200]})") from None
    if not sections:
        raise ImageError(f"{path}: no executable sections")
    return sections


class _CodeMap:
    """Address ranges known to hold code: FDEs in .eh_frame (present even in
    stripped binaries; hand-written assembly with CFI too) and sized FUNC
    symbols.  Bytes outside all of them (tables in .text, padding) are
    "data-or-padding" when the decoders disagree there.  Loaded only when a
    mismatch needs it (pyelftools' CFI parser takes ~2 s on libcrypto)."""

    def __init__(self, ranges: list[tuple[int, int]]):
        merged: list[list[int]] = []
        for lo, hi in sorted(r for r in ranges if r[1] > r[0]):
            if merged and lo <= merged[-1][1]:
                merged[-1][1] = max(merged[-1][1], hi)
            else:
                merged.append([lo, hi])
        self.starts = [lo for lo, _ in merged]
        self.ends = [hi for _, hi in merged]

    def covers(self, addr: int) -> bool | None:
        """True/False, or None when the file gives no code ranges at all."""
        if not self.starts:
            return None
        i = bisect.bisect_right(self.starts, addr) - 1
        return i >= 0 and addr < self.ends[i]

    @classmethod
    def load(cls, path: str) -> "_CodeMap":
        ranges: list[tuple[int, int]] = []
        try:
            with open(path, "rb") as f:
                elf = ELFFile(f)
                for name in (".symtab", ".dynsym"):
                    sym_sec = elf.get_section_by_name(name)
                    if sym_sec is None or not hasattr(sym_sec, "iter_symbols"):
                        continue
                    for sym in sym_sec.iter_symbols():
                        if sym["st_info"]["type"] == "STT_FUNC" and sym["st_size"]:
                            ranges.append((sym["st_value"], sym["st_value"] + sym["st_size"]))
                if elf.get_section_by_name(".eh_frame") is not None:
                    dwarf = elf.get_dwarf_info(relocate_dwarf_sections=False)
                    if dwarf.has_EH_CFI():
                        for entry in dwarf.EH_CFI_entries():
                            if isinstance(entry, FDE):
                                lo = entry.header["initial_location"]
                                ranges.append((lo, lo + entry.header["address_range"]))
        except Exception:        # best effort: unknown layout -> no ranges
            pass
        return cls(ranges)


# --------------------------------------------------------------------------
# objdump side
# --------------------------------------------------------------------------

def _objdump_stream(path: str, sections: list[_Section]) -> Iterator[tuple[str | None, int, int, str]]:
    """objdump -d over the given sections, parsed line by line as it runs
    (stderr goes to a temporary file so a chatty objdump cannot block)."""
    cmd = [OBJDUMP, "-d", "-z", "-w", "-M", "intel", "--insn-width=15"]
    for s in sections:
        cmd += ["-j", s.name]
    cmd.append(path)
    with tempfile.TemporaryFile() as err:
        proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=err, text=True,
                                env={**os.environ, "LC_ALL": "C"}, bufsize=1 << 20)
        try:
            yield from parse_objdump(proc.stdout)
        finally:
            proc.stdout.close()
            rc = proc.wait()
        if rc != 0:
            err.seek(0)
            msg = err.read().decode(errors="replace").strip().splitlines()
            raise ImageError(f"{path}: objdump failed: {msg[-1] if msg else f'exit {rc}'}")


# --------------------------------------------------------------------------
# capstone side
# --------------------------------------------------------------------------

class _CapstoneWalk:
    """capstone decodes of one section, looked up by address.

    Decodes _CHUNK bytes at a time from the address asked for, so walking in
    step with objdump costs one capstone call per chunk; after a
    disagreement the next lookup simply starts a new chunk there.
    """

    def __init__(self, sec: _Section):
        self.data = sec.data
        self.base = sec.addr
        self.cache: dict[int, tuple[int, str]] = {}

    def at(self, addr: int) -> tuple[int, str] | None:
        hit = self.cache.get(addr)
        if hit is not None:
            return hit
        off = addr - self.base
        if not 0 <= off < len(self.data):
            return None
        self.cache = {}
        limit = addr + _CHUNK
        for a, size, mnem, ops in disassembler().disasm_lite(
                self.data[off:off + _CHUNK + MAX_INSN_LEN], addr):
            if a >= limit:
                break
            self.cache[a] = (size, f"{mnem} {ops}".strip())
        return self.cache.get(addr)


# --------------------------------------------------------------------------
# the check
# --------------------------------------------------------------------------

def decodecheck(path: str | os.PathLike, *, max_examples: int = DEFAULT_EXAMPLES,
                use_unicorn: bool = True) -> Report:
    """Compare capstone's and objdump's instruction lengths over the
    executable sections of the ELF file at ``path``.

    ``max_examples`` bounds the examples kept per class; ``use_unicorn``
    asks Unicorn for a third opinion at each mismatch (cached per byte
    string).  Raises ImageError (one line) for a missing, unreadable,
    non-ELF, non-x86-64 or truncated file, and FaultpathError when objdump
    is not installed (see have_objdump()).
    """
    path = os.fspath(path)
    t0 = time.monotonic()
    sections = _exec_sections(path)
    if not have_objdump():
        raise FaultpathError("decodecheck needs GNU objdump (binutils) on PATH")
    report = Report(path=path, sections=[(s.name, s.addr, len(s.data)) for s in sections])
    by_name = {s.name: s for s in sections}
    walks: dict[str, _CapstoneWalk] = {}
    unicorn_cache: dict[bytes, int | None] = {}
    code_map: _CodeMap | None = None         # loaded at the first mismatch

    for sec_name, addr, nbytes, text in _objdump_stream(path, sections):
        sec = by_name.get(sec_name)
        if sec is None:
            continue
        walk = walks.get(sec_name)
        if walk is None:
            walk = walks[sec_name] = _CapstoneWalk(sec)
        report.compared += 1
        cs = walk.at(addr)
        bad = objdump_is_bad(text)
        od_len = None if bad else nbytes
        cs_len = None if cs is None else cs[0]
        if cs_len == od_len and cs_len is not None:
            report.agreements += 1
            continue
        # A disagreement, or both decoders reject the bytes (then the
        # question is whether the CPU runs them: a write there would fault
        # and the skip handler, finding no decode, retry forever).
        off = addr - sec.addr
        code = sec.data[off:off + MAX_INSN_LEN]
        if use_unicorn:
            if code not in unicorn_cache:
                unicorn_cache[code] = unicorn_length(code)
            uc_len = unicorn_cache[code]
        else:
            uc_len = None
        if cs_len is None and od_len is None and uc_len is None:
            report.agreements += 1
            report.both_rejected += 1
            continue
        if text.startswith(".byte"):
            in_code = False         # objdump: the bytes run into the next symbol
        else:
            if code_map is None:
                code_map = _CodeMap.load(path)
            in_code = code_map.covers(addr)
        cls = classify(code, cs_len, od_len, uc_len, in_code=in_code, objdump_text=text)
        if cls == "agree":          # both reject; Unicorn has no length either
            report.agreements += 1
            continue
        report.mismatches[cls] += 1
        ex = report.examples.setdefault(cls, [])
        if len(ex) < max_examples:
            ex.append(Mismatch(sec_name, addr, code, cs_len, "" if cs is None else cs[1],
                               od_len, nbytes, text, uc_len, cls))
    report.seconds = time.monotonic() - t0
    return report


def format_report(report: Report) -> str:
    """The report for humans."""
    lines = [f"decodecheck {report.path}"]
    for name, addr, size in report.sections:
        lines.append(f"  section {name:<24} {addr:#10x}  {size:>9} bytes")
    pct = 100.0 * report.agreements / report.compared if report.compared else 100.0
    lines.append(f"  instructions compared {report.compared}, agreements {report.agreements}"
                 f" ({pct:.3f}%; {report.both_rejected} rejected by both),"
                 f" mismatches {report.mismatch_total}, {report.seconds:.1f} s")
    order = {c: i for i, c in enumerate(CLASSES)}
    for cls, n in sorted(report.mismatches.items(), key=lambda kv: (order.get(kv[0], 99), kv[0])):
        lines.append(f"  {cls}: {n}")
        for m in report.examples.get(cls, []):
            lines.append(
                f"    {m.section} {m.address:#x}: {m.code.hex(' ')}\n"
                f"      capstone {m.capstone_len if m.capstone_len is not None else '-'}"
                f" {m.capstone_text or '(rejected)'} | objdump "
                f"{m.objdump_len if m.objdump_len is not None else '-'}"
                f" {m.objdump_text} | unicorn "
                f"{m.unicorn_len if m.unicorn_len is not None else '-'}")
    if not report.mismatches:
        lines.append("  no mismatches")
    return "\n".join(lines)


def main(argv: list[str] | None = None) -> int:
    """``python -m emulator.skipcheck.decodecheck [--json] [--examples N] ELF...``"""
    import argparse
    import json
    import sys

    ap = argparse.ArgumentParser(prog="python -m emulator.skipcheck.decodecheck",
                                 description="capstone vs objdump instruction lengths")
    ap.add_argument("paths", nargs="+", metavar="ELF")
    ap.add_argument("--json", action="store_true", help="print Report.as_dict() as JSON")
    ap.add_argument("--examples", type=int, default=DEFAULT_EXAMPLES, metavar="N",
                    help="examples kept per mismatch class (default %(default)s)")
    ap.add_argument("--no-unicorn", action="store_true",
                    help="do not ask Unicorn for a third opinion at mismatches")
    args = ap.parse_args(argv)
    reports = []
    try:
        for p in args.paths:
            reports.append(decodecheck(p, max_examples=args.examples,
                                       use_unicorn=not args.no_unicorn))
    except FaultpathError as e:
        print(f"decodecheck: {e}", file=sys.stderr)
        return 2
    if args.json:
        print(json.dumps([r.as_dict() for r in reports], indent=2))
    else:
        print("\n".join(format_report(r) for r in reports))
    return 1 if any(r.unexplained for r in reports) else 0


if __name__ == "__main__":
    raise SystemExit(main())
