"""Random sequences around a faulting access: flag producers, the access,
flag consumers.

    producers   cmp, test, add/sub/adc/sbb/and/or/xor, inc/dec, neg, shifts
                and rotates (by 1, by cl, by an immediate), shld/shrd, bt*,
                mul/imul, popcnt/lzcnt/tzcnt, comisd/ucomisd/comiss/
                ucomiss/ptest, clc/stc/cmc, sahf; and SSE floating-point
                arithmetic and conversions, which set MXCSR flags instead
    access      a form of forms.py, placed to fault (placement.py)
    consumers   setcc, cmovcc, jcc, adc/sbb, rcl/rcr, pushfq, lahf, sbb r,r

The last producer comes right before the access, the first consumer right
after it: Unicorn 2.1.4 loses the lazily computed flags exactly when a
faulting access follows a flag producer in the same translation block and a
code hook is active.  Operand values come from build.value (edges and
random); the bug is value-dependent.

A sequence is a pure function of (seed, kind, index): `--only N` rebuilds it
alone.  Kind "flags" draws the form and placement at random; kind "forms"
walks every form of the corpus in every faulting state, inside a page and
straddling a page end, with random producers and consumers around it.
"""
from __future__ import annotations

import random
from functools import lru_cache

from emulator.diffcheck.build import SequenceBuilder, assemble, value
from emulator.diffcheck.forms import AccessForm, corpus_forms
from emulator.diffcheck.layout import FAULTING_STATES, GPRS
from emulator.diffcheck.eflags import reads
from emulator.diffcheck.operands import decode_at
from emulator.diffcheck.placement import (PLACEMENTS, SOURCE_PAGE, STACK_HOME, Placement, place,
                                          random_placement)
from emulator.diffcheck.records import Sequence

CONDITIONS = ("o", "no", "b", "ae", "e", "ne", "be", "a", "s", "ns", "p", "np", "l", "ge", "le", "g")
_NAMES = {
    8: {"rax": "al", "rbx": "bl", "rcx": "cl", "rdx": "dl", "rsi": "sil", "rdi": "dil", "rbp": "bpl"},
    16: {"rax": "ax", "rbx": "bx", "rcx": "cx", "rdx": "dx", "rsi": "si", "rdi": "di", "rbp": "bp"},
    32: {"rax": "eax", "rbx": "ebx", "rcx": "ecx", "rdx": "edx", "rsi": "esi", "rdi": "edi", "rbp": "ebp"},
}
_SUFFIX = {8: "b", 16: "w", 32: "d"}


def sub(reg: str, bits: int) -> str:
    if bits == 64:
        return reg
    if reg.startswith("r") and reg[1:].isdigit():
        return reg + _SUFFIX[bits]
    return _NAMES[bits][reg]


def _imm(rng, bits: int) -> str:
    v = rng.choice((0, 1, 2, 7, 0x7F, 0x80, 0xFF, -1, -0x80, 0x7FFF, 0x7FFFFFFF, -0x80000000, 0x10, 0x0F, 0x3F))
    if bits == 8:
        v = v & 0xFF
    elif bits == 16:
        v = v & 0xFFFF
    elif v > 0x7FFFFFFF or v < -0x80000000:
        v = 0x7FFFFFFF
    if bits == 64 and not -0x80000000 <= v <= 0x7FFFFFFF:
        v = -1
    return hex(v) if v >= 0 else f"-{-v:#x}"


def producer(rng, d: str, s: str) -> str:
    """One flag-producing instruction on registers d (written) and s (read)."""
    bits = rng.choice((8, 16, 32, 64, 64, 64))
    D, S = sub(d, bits), sub(s, bits)
    k = rng.randrange(14)
    if k == 0:
        return f"cmp {D}, {rng.choice((S, _imm(rng, bits)))}"
    if k == 1:
        return f"test {D}, {rng.choice((S, _imm(rng, bits)))}"
    if k in (2, 3):
        op = rng.choice(("add", "sub", "adc", "sbb", "and", "or", "xor"))
        return f"{op} {D}, {rng.choice((S, _imm(rng, bits)))}"
    if k == 4:
        return f"{rng.choice(('inc', 'dec', 'neg'))} {D}"
    if k in (5, 6):
        op = rng.choice(("shl", "shr", "sar", "rol", "ror", "rcl", "rcr"))
        return f"{op} {D}, {rng.choice(('1', 'cl', str(rng.randrange(0, bits))))}"
    if k == 7 and bits > 8:
        # 16-bit shld/shrd by more than 16 leave the result undefined: immediate counts only
        count = str(rng.randrange(0, bits)) if bits == 16 else rng.choice(("cl", str(rng.randrange(0, bits))))
        return f"{rng.choice(('shld', 'shrd'))} {D}, {S}, {count}"
    if k == 8 and bits > 8:
        op = rng.choice(("bt", "bts", "btr", "btc"))
        return f"{op} {D}, {rng.choice((S, str(rng.randrange(0, bits))))}"
    if k == 9:
        if rng.random() < 0.5 or bits == 8:
            return f"{rng.choice(('mul', 'imul'))} {S}"
        return f"imul {D}, {S}" if rng.random() < 0.5 else f"imul {D}, {S}, {_imm(rng, min(bits, 32))}"
    if k == 10 and bits > 8:
        # Not bsf/bsr: with a zero source Intel leaves the destination
        # undefined (AMD: unchanged, all 64 bits; Unicorn zero-extends a 32-bit
        # one), and the source value is not known here.
        return f"{rng.choice(('popcnt', 'lzcnt', 'tzcnt'))} {D}, {S}"
    if k == 11:
        a, b_ = rng.randrange(16), rng.randrange(16)
        if rng.random() < 0.4:
            return simd_fp_op(rng, d, a, b_)
        return f"{rng.choice(('comisd', 'ucomisd', 'comiss', 'ucomiss', 'ptest'))} xmm{a}, xmm{b_}"
    if k == 12:
        return rng.choice(("clc", "stc", "cmc", "sahf"))
    return f"cmp {D}, {S}"


_SIMD_FP = ("addss", "addsd", "addps", "addpd", "subss", "subsd", "mulss", "mulsd", "mulps", "divss", "divsd",
            "divps", "divpd", "sqrtss", "sqrtsd", "sqrtps", "minss", "minsd", "maxss", "maxpd", "cvtss2sd",
            "cvtsd2ss", "cvtps2pd", "cvtpd2ps", "cvtdq2ps", "cvtps2dq", "cvttpd2dq", "haddps", "hsubpd",
            "addsubps", "cmpltss", "cmpunordpd", "cmpnleps", "cmpeqsd")


def simd_fp_op(rng, d: str, a: int, b: int) -> str:
    """An SSE floating-point instruction: no arithmetic flag, but MXCSR
    exception flags from its operand values (emulator/simd_fp.py)."""
    k = rng.randrange(8)
    if k == 0:
        return f"{rng.choice(('cvtsd2si', 'cvttsd2si', 'cvtss2si', 'cvttss2si'))} {sub(d, rng.choice((32, 64)))}, xmm{b}"
    if k == 1:
        return f"{rng.choice(('cvtsi2sd', 'cvtsi2ss'))} xmm{a}, {sub(d, rng.choice((32, 64)))}"
    if k == 2:
        return f"{rng.choice(('roundss', 'roundsd', 'roundps'))} xmm{a}, xmm{b}, {rng.randrange(16)}"
    if k == 3:
        return f"{rng.choice(('dpps', 'dppd'))} xmm{a}, xmm{b}, {rng.choice((0xff, 0x31, 0xf1))}"
    return f"{rng.choice(_SIMD_FP)} xmm{a}, xmm{b}"


def _defines_all(rng, d: str, s: str) -> str:
    """A producer after which every arithmetic flag is defined."""
    bits = rng.choice((8, 16, 32, 64))
    return f"{rng.choice(('cmp', 'add', 'sub', 'adc', 'sbb'))} {sub(d, bits)}, {sub(s, bits)}"


def consumer(rng, d: str, s: str) -> str:
    """One flag-reading instruction writing register d."""
    cc = rng.choice(CONDITIONS)
    bits = rng.choice((16, 32, 64))
    k = rng.randrange(9)
    if k == 0:
        return f"set{cc} {sub(d, 8)}"
    if k == 1:
        return f"cmov{cc} {sub(d, bits)}, {sub(s, bits)}"
    if k == 2:
        return f"j{cc} dc_skip\nnot {d}\ndc_skip:"            # not: no flags touched
    if k == 3:
        return f"{rng.choice(('adc', 'sbb'))} {sub(d, bits)}, {rng.choice((sub(s, bits), _imm(rng, bits)))}"
    if k == 4:
        return f"{rng.choice(('rcl', 'rcr'))} {sub(d, rng.choice((8, 16, 32, 64)))}, {rng.choice(('1', 'cl'))}"
    if k == 5:
        return "pushfq"
    if k == 6:
        return "lahf"
    if k == 7:
        return f"sbb {d}, {d}"
    return f"set{cc} {sub(d, 8)}"


def _writes(text: str) -> frozenset[str]:
    ins = decode_at(assemble(text), 0)
    return ins.writes if ins is not None else frozenset()


def emit_free(b: SequenceBuilder, make, free: list[str], reserved: set[str], tries: int = 8) -> str | None:
    """Emit an instruction from `make(rng, d, s)` that writes no reserved register."""
    for _ in range(tries):
        d, s = b.rng.choice(free), b.rng.choice(free + ["rcx"])
        text = make(b.rng, d, s)
        first = decode_at(assemble(text), 0)
        if first is not None and reads(first.op) & ~b.defined():
            continue     # it would read a flag the CPU leaves undefined here
        writes = _writes(text) - {"rflags"}
        if text == "lahf":
            writes = frozenset({"rax"})
        if writes & reserved or "rsp" in writes:
            continue
        if text == "pushfq" and b.regs.get("rsp") != STACK_HOME:
            continue     # a stack form moved rsp: pushfq there would be a second target
        b.emit(text)
        return text
    return None


def build(seed: int, kind: str, index: int, form: AccessForm, pl: Placement) -> Sequence:
    rng = random.Random(f"{seed}:{kind}:{index}")
    b = SequenceBuilder(kind, index, seed, rng)
    b.regs["rflags"] = 0x202 | rng.choice((0, 1, 0x10, 0x40, 0x80, 0x800, 0x8D5, rng.getrandbits(12) & 0x8D5))
    if rng.random() < 0.2:
        b.mxcsr = rng.choice((0x1F80, 0x3F80, 0x5F80, 0x7F80, 0x9FC0, 0x1FBF))
    b.pages[SOURCE_PAGE] = "present" if rng.random() < 0.8 else rng.choice(FAULTING_STATES)
    # Producers and consumers leave alone every register the access reads or
    # writes (its address, its data, rcx of rep, rsp...).
    reserved = (set(form.insn.reads) | set(form.insn.writes) | {"rsp", "rcx"}) - {"rflags"}
    free = [r for r in GPRS if r not in reserved]
    if "rcx" not in form.insn.reads:
        b.regs["rcx"] = value(rng)      # shift counts by cl known: their flags can be consumed
    producers = [t for t in (emit_free(b, producer, free, reserved) for _ in range(rng.choice((1, 1, 2, 3))))
                 if t] if free else []
    if free and reads(form.insn.op) & ~b.defined():
        # The access reads flags (pushfq, setcc [m], adc [m], rcl [m]...): they
        # must be defined, so a producer that defines them all goes last.
        emit_free(b, _defines_all, free, reserved)
    place(b, form, pl)
    consumers = [t for t in (emit_free(b, consumer, free, reserved) for _ in range(rng.choice((1, 2, 2, 3))))
                 if t] if free else []
    for r in GPRS:
        b.regs.setdefault(r, value(rng))
    b.tags = {"access": form.text, "placement": pl.text(), "source": form.source,
              "producers": " ; ".join(producers), "consumers": " ; ".join(c.replace("\n", " ") for c in consumers)}
    b.note = f"{form.text} [{pl.text()}]"
    return b.finish()


def random_sequence(seed: int, index: int) -> Sequence:
    rng = random.Random(f"{seed}:flags-pick:{index}")
    forms = corpus_forms()
    form = rng.choice(forms)
    return build(seed, "flags", index, form, random_placement(rng, form))


@lru_cache(maxsize=None)
def form_cases() -> tuple[tuple[AccessForm, Placement], ...]:
    """Every form x every faulting state x inside / straddling (where it can)."""
    out = []
    for form in corpus_forms():
        for state in FAULTING_STATES:
            for where in PLACEMENTS:
                if where == "straddle" and form.insn.access_size <= 1:
                    continue
                out.append((form, Placement(state, where)))
    return tuple(out)


def form_sequence(seed: int, index: int) -> Sequence:
    cases = form_cases()
    form, pl = cases[index % len(cases)]
    return build(seed, "forms", index, form, pl)

