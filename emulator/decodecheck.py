"""decodecheck: capstone's instruction lengths against GNU objdump's over an
ELF file's executable sections.

The idea of the kernel's ``insn_decoder_test`` (which checks the kernel's
instruction decoder against objdump over vmlinux), applied to the decoder
the ``skip`` fault path uses.  objdump disassembles every SHF_EXECINSTR
section (symbol-aware, so it restarts at each function); capstone decodes at
each of objdump's instruction boundaries, so one disagreement never cascades.
Each disagreement is run through Unicorn as a third opinion and named by
`emulator.insn_length.classify`.

    report = decodecheck("/usr/lib/x86_64-linux-gnu/libc.so.6")
    print(format_report(report))
"""

from __future__ import annotations

import os
import subprocess
import time
from collections import Counter
from dataclasses import dataclass, field
from typing import Iterator

from elftools.common.exceptions import ELFError
from elftools.elf.constants import SH_FLAGS
from elftools.elf.elffile import ELFFile

from .errors import ImageError
from .insn_length import (
    CLASSES,
    MAX_INSN_LEN,
    OBJDUMP,
    _capstone,
    classify,
    have_objdump,
    objdump_is_bad,
    parse_objdump,
    unicorn_length,
)

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
    agreements: int = 0          # classify() == "agree"
    both_rejected: int = 0       # ... of which objdump (bad) and capstone rejects too
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


def _exec_sections(path: str) -> list[_Section]:
    """The SHF_EXECINSTR sections with contents; ImageError on bad input."""
    try:
        size = os.path.getsize(path)
        f = open(path, "rb")
    except OSError as e:
        raise ImageError(f"{path}: {e.strerror or e}") from None
    with f:
        if f.read(4) != b"\x7fELF":
            raise ImageError(f"{path}: not an ELF file")
        f.seek(0)
        try:
            elf = ELFFile(f)
            if elf["e_machine"] != "EM_X86_64":
                raise ImageError(f"{path}: not an x86-64 ELF file ({elf['e_machine']})")
            sections = []
            for sec in elf.iter_sections():
                if not sec["sh_flags"] & SH_FLAGS.SHF_EXECINSTR:
                    continue
                if sec["sh_type"] == "SHT_NOBITS" or sec["sh_size"] == 0:
                    continue
                if sec["sh_offset"] + sec["sh_size"] > size:
                    raise ImageError(f"{path}: truncated (section {sec.name} ends at "
                                     f"{sec['sh_offset'] + sec['sh_size']:#x}, "
                                     f"file is {size:#x} bytes)")
                sections.append(_Section(sec.name, sec["sh_addr"], sec.data()))
        except ImageError:
            raise
        except (ELFError, ValueError, OSError, EOFError) as e:
            raise ImageError(f"{path}: bad ELF file: {e}") from None
        except Exception as e:              # construct's StreamError & co: truncated headers
            if type(e).__module__.split(".")[0] in ("construct", "elftools"):
                raise ImageError(f"{path}: bad or truncated ELF file: {e}") from None
            raise
    if not sections:
        raise ImageError(f"{path}: no executable sections")
    return sections


# --------------------------------------------------------------------------
# objdump side
# --------------------------------------------------------------------------

def _objdump_stream(path: str, sections: list[_Section]) -> Iterator[tuple[str | None, int, int, str]]:
    """objdump -d over the given sections, parsed line by line as it runs."""
    cmd = [OBJDUMP, "-d", "-z", "-w", "-M", "intel", "--insn-width=15"]
    for s in sections:
        cmd += ["-j", s.name]
    cmd.append(path)
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE, text=True,
                            env={**os.environ, "LC_ALL": "C"}, bufsize=1 << 20)
    try:
        yield from parse_objdump(proc.stdout)
    finally:
        proc.stdout.close()
        err = proc.stderr.read()
        proc.stderr.close()
        rc = proc.wait()
    if rc != 0:
        raise ImageError(f"{path}: objdump failed: {err.strip().splitlines()[-1:] or rc}")


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
        for a, size, mnem, ops in _capstone().disasm_lite(
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

    Raises ImageError (one line) for a missing, non-ELF, non-x86-64 or
    truncated file, and FileNotFoundError-free: a missing objdump is an
    ImageError too (callers that want to skip should test have_objdump()).
    """
    path = os.fspath(path)
    t0 = time.monotonic()
    sections = _exec_sections(path)
    if not have_objdump():
        raise ImageError("decodecheck needs GNU objdump on PATH")
    report = Report(path=path, sections=[(s.name, s.addr, len(s.data)) for s in sections])
    by_name = {s.name: s for s in sections}
    walks: dict[str, _CapstoneWalk] = {}
    unicorn_cache: dict[bytes, int | None] = {}

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
        if cs_len == od_len:
            report.agreements += 1
            if cs_len is None:
                report.both_rejected += 1
            continue
        off = addr - sec.addr
        code = sec.data[off:off + MAX_INSN_LEN]
        if use_unicorn:
            if code not in unicorn_cache:
                unicorn_cache[code] = unicorn_length(code)
            uc_len = unicorn_cache[code]
        else:
            uc_len = None
        cls = classify(code, cs_len, od_len, uc_len)
        if cls == "agree":          # e.g. capstone and objdump differ only by
            report.agreements += 1  # objdump's symbol-boundary cut (none seen)
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
