"""skipcheck's length cross-check: every encoding the suite runs, measured by
four decoders and a second assembler.

  capstone     as the skip handler sees it: the instruction followed by the
               bytes that follow it in memory (the marker), and capstone's
               length of exactly the instruction's bytes;
  skip         `emulator.insn_length.skip_length` (capstone corrected by
               CAPSTONE_CORRECTIONS), what the handler adds to rip;
  objdump      GNU objdump of the same bytes (keystone's);
  unicorn      the length Unicorn executes (`oracles.unicorn_probe`);
  GNU as       the same source line assembled by GNU as, then GNU objdump of
               GNU as's bytes: an independent assembler and decoder pair.

The expected length is the crafted encoding's length.  Divergences are
named by `divergence.classify` (capstone's known bugs have their own
classes); a divergence where the three decoders agree with each other
but not with the crafted length is "unexplained" (a crafting error).
GNU as choosing another encoding (imm8 vs imm32, another ModRM form) is
reported but is not a decoder divergence.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from dataclasses import dataclass

from emulator.insn_length import capstone_insn, skip_length
from emulator.skipcheck.corpus import riprel_body
from emulator.skipcheck.divergence import classify
from emulator.skipcheck.layout import MARKER_REGS, marker_bytes
from emulator.skipcheck.oracles import have_objdump, objdump_first_lengths
from emulator.skipcheck.placements import PLACEMENTS
from vdso.insn import MAX_INSN_LEN

MARKER_BYTES = marker_bytes(MARKER_REGS[0])    # what follows the instruction in most runs
_REG32 = {"rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx", "rsi": "esi", "rdi": "edi",
          "rbp": "ebp", "rsp": "esp", "rip": "eip", **{f"r{i}": f"r{i}d" for i in range(8, 16)}}
_REG_RE = re.compile(r"\b(" + "|".join(sorted(_REG32, key=len, reverse=True)) + r")\b")


@dataclass
class LengthCheck:
    instruction: str
    line: int
    encoding: str               # plain | riprel
    code: bytes
    expected: int
    capstone: int | None        # with the following bytes, as the handler decodes
    capstone_exact: int | None  # exactly the instruction's bytes
    capstone_text: str
    skip: int | None
    skip_exact: int | None
    objdump: int | None
    objdump_text: str
    unicorn: int | None
    cls: str
    source: str | None = None
    gas_bytes: bytes | None = None
    gas_objdump: int | None = None
    gas_class: str = "n/a"      # same | prefix-order | other-encoding | other-length | rejected | n/a | unavailable
    gas_note: str = ""

    def as_dict(self) -> dict:
        return {"instruction": self.instruction, "line": self.line, "encoding": self.encoding,
                "bytes": self.code.hex(), "expected": self.expected,
                "capstone": self.capstone, "capstone_exact": self.capstone_exact,
                "capstone_text": self.capstone_text, "skip": self.skip, "skip_exact": self.skip_exact,
                "objdump": self.objdump, "objdump_text": self.objdump_text, "unicorn": self.unicorn,
                "class": self.cls, "gas": {"source": self.source,
                                           "bytes": None if self.gas_bytes is None else self.gas_bytes.hex(),
                                           "objdump": self.gas_objdump, "class": self.gas_class,
                                           "note": self.gas_note}}

    def _form(self) -> str:
        # "plain" is the encoding every placement but riprel runs; saying it
        # would read like a placement the user did not select
        return " (rip-relative form)" if self.encoding == "riprel" else ""

    def line_text(self) -> str:
        f = lambda n: "-" if n is None else str(n)   # noqa: E731
        return (f"line {self.line} {self.instruction}{self._form()} {self.code.hex(' ')}: "
                f"expected {self.expected}, capstone {f(self.capstone)} [{self.capstone_text or 'rejected'}]"
                f" exact {f(self.capstone_exact)}, skip {f(self.skip)}/{f(self.skip_exact)}, "
                f"objdump {f(self.objdump)} [{self.objdump_text}], unicorn {f(self.unicorn)}")

    def gas_line(self) -> str:
        return (f"line {self.line} {self.instruction}{self._form()}: keystone {self.code.hex(' ')}, "
                f"GNU as {self.gas_bytes.hex(' ') if self.gas_bytes else '-'} "
                f"(objdump {self.gas_objdump}) {self.gas_note}")


def gas_source(words: tuple[str, ...], body: str, pad: int) -> str | None:
    """The corpus line as GNU as (Intel syntax) reads it, or None (raw bytes).

    GAS wants `addr32` spelled with 32-bit address registers, and refuses a
    repeated segment prefix, so the redundant ds padding is a .byte line."""
    if body.lstrip().startswith(".byte"):
        return None
    words = list(words)
    brackets = re.findall(r"\[[^\]]*\]", body)
    if "addr32" in words and any(_REG_RE.search(b) for b in brackets):
        words.remove("addr32")
        body = re.sub(r"\[[^\]]*\]", lambda b: _REG_RE.sub(lambda m: _REG32[m.group(1)], b.group(0)), body)
    text = " ".join(words + [body])
    if pad:
        text = ".byte " + ", ".join(["0x3e"] * pad) + "\n" + text
    return text


def have_gas() -> bool:
    return shutil.which("as") is not None


def gas_assemble(sources: list[str]) -> tuple[list[bytes | None], list[str]]:
    """Assemble each source with GNU as (one run for all); (bytes or None per
    source, error message per source ("" when it assembled))."""
    from elftools.elf.elffile import ELFFile
    out: list[bytes | None] = [None] * len(sources)
    errs = [""] * len(sources)
    live = list(range(len(sources)))
    if not sources:
        return out, errs
    with tempfile.TemporaryDirectory(prefix="faultpath-gas-") as d:
        src, obj = os.path.join(d, "c.s"), os.path.join(d, "c.o")
        for _round in range(4):
            lines = [".intel_syntax noprefix", ".text"]
            where: dict[int, int] = {}
            for i in live:
                lines.append(".balign 64, 0xcc")
                lines.append(f"fp_s_{i}:")
                for ln in sources[i].splitlines():
                    lines.append(ln)
                    where[len(lines)] = i
                lines.append(f"fp_e_{i}:")
            with open(src, "w") as f:
                f.write("\n".join(lines) + "\n")
            p = subprocess.run(["as", "--64", "-o", obj, src], capture_output=True, text=True,
                               env={**os.environ, "LC_ALL": "C"})
            if p.returncode == 0:
                break
            bad = set()
            for m in re.finditer(r"^.*?:(\d+): Error: (.*)$", p.stderr, re.M):
                i = where.get(int(m.group(1)))
                if i is not None:
                    bad.add(i)
                    errs[i] = errs[i] or m.group(2)
            if not bad:
                for i in live:
                    errs[i] = "GNU as failed: " + (p.stderr.strip().splitlines() or ["?"])[-1]
                return out, errs
            live = [i for i in live if i not in bad]
        else:
            return out, errs
        if not live:
            return out, errs
        with open(obj, "rb") as f:
            elf = ELFFile(f)
            text_sec, symtab = elf.get_section_by_name(".text"), elf.get_section_by_name(".symtab")
            if text_sec is None or symtab is None:
                return out, ["GNU as produced no code"] * len(sources)
            text = text_sec.data()
            syms = {s.name: s["st_value"] for s in symtab.iter_symbols()}
        for i in live:
            s, e = syms.get(f"fp_s_{i}"), syms.get(f"fp_e_{i}")
            if s is not None and e is not None:
                out[i] = bytes(text[s:e])
    return out, errs


def cross_check(instructions, runs, unicorn: dict[bytes, int | None]) -> tuple[list[LengthCheck], list[str]]:
    """A LengthCheck per encoding the runs used (plain and rip-relative)."""
    notes: list[str] = []
    ran = {(r.instruction, r.placement) for r in runs if r.status not in ("n/a",)}
    items = []     # (instruction, encoding, code, source)
    for ins in instructions:
        if len(ins.code) > MAX_INSN_LEN:
            continue
        if any((ins.name, p) in ran for p in PLACEMENTS if p != "riprel"):
            items.append((ins, "plain", ins.code,
                          gas_source(ins.source_words, ins.form.body, ins.pad)))
        if ins.riprel is not None and (ins.name, "riprel") in ran:
            rb = riprel_body(ins.form.body)
            items.append((ins, "riprel", ins.riprel,
                          gas_source(ins.source_words, rb, ins.riprel_pad) if rb else None))
    objdump = [None] * len(items)
    if have_objdump():
        objdump = objdump_first_lengths([c for _, _, c, _ in items])
    else:
        notes.append("GNU objdump is not installed: no objdump lengths")
    gas_out: dict[str, tuple[bytes | None, str]] = {}
    if have_gas():
        srcs = sorted({s for *_, s in items if s})
        got, errs = gas_assemble(srcs)
        gas_out = {s: (b, e) for s, b, e in zip(srcs, got, errs)}
    else:
        notes.append("GNU as is not installed: no second assembler")
    gas_bytes = sorted({b for b, _ in gas_out.values() if b})
    gas_od = dict(zip(gas_bytes, objdump_first_lengths(gas_bytes))) if gas_bytes and have_objdump() else {}
    checks = []
    for (ins, enc, code, source), od in zip(items, objdump):
        ctx = code + MARKER_BYTES
        cs = capstone_insn(ctx)
        cs_exact = capstone_insn(code)
        od_len, od_text = (None, "(bad)") if od is None else od
        uc = unicorn.get(code)
        cls = classify(ctx[:MAX_INSN_LEN], None if cs is None else cs[0], od_len, uc,
                       objdump_text=od_text)
        n = len(code)
        decoders = {x for x in (None if cs is None else cs[0], od_len, uc) if x is not None}
        if cls == "agree" and decoders and decoders != {n}:
            cls = "unexplained"
        chk = LengthCheck(ins.name, ins.form.line, enc, code, n, None if cs is None else cs[0],
                          None if cs_exact is None else cs_exact[0], "" if cs is None else cs[1],
                          skip_length(ctx), skip_length(code), od_len, od_text, uc, cls, source=source)
        if source is None:
            chk.gas_class = "n/a"
            chk.gas_note = "raw bytes"
        elif not gas_out:
            chk.gas_class = "unavailable"
        else:
            gb, err = gas_out.get(source, (None, "not assembled"))
            if gb is None:
                chk.gas_class, chk.gas_note = "rejected", err
            else:
                chk.gas_bytes = gb
                god = gas_od.get(gb)
                chk.gas_objdump = None if god is None else god[0]
                if gb == code:
                    chk.gas_class = "same"
                elif len(gb) == n and sorted(gb) == sorted(code):
                    chk.gas_class = "prefix-order"      # the same prefixes in another order
                elif len(gb) == n:
                    chk.gas_class = "other-encoding"
                else:
                    chk.gas_class = "other-length"
                if chk.gas_objdump is not None and chk.gas_objdump != len(gb):
                    chk.gas_note = f"objdump decodes GNU as's bytes as {chk.gas_objdump} bytes, not {len(gb)}"
        checks.append(chk)
    return checks, notes
