"""The CPU model against the CPU: every extension emulator/cpuid.py keeps is
run natively and in the emulator (emulator/diffcheck's two sides) on random
operands, and must come out the same; SSE4.2, which it removes, must still
show the differences that removed it.

The sticky MXCSR exception flags are set before each sequence: Unicorn never
raises them (a difference of the SSE2 baseline itself, which no CPUID bit
can hide), and with them set the comparison is of the results alone."""
from __future__ import annotations

import os
import random

import pytest

pytestmark = pytest.mark.skipif(os.uname().machine != "x86_64", reason="runs x86-64 code natively")

# One template per instruction; {a}/{b} are xmm registers, {r}/{s} general ones.
KEPT = {
    "SSE3": ["haddps {a}, {b}", "hsubpd {a}, {b}", "addsubps {a}, {b}", "movshdup {a}, {b}", "movsldup {a}, {b}",
             "movddup {a}, {b}"],
    "SSSE3": ["pshufb {a}, {b}", "palignr {a}, {b}, 5", "palignr {a}, {b}, 13", "phaddw {a}, {b}",
              "phaddd {a}, {b}", "phsubsw {a}, {b}", "pmaddubsw {a}, {b}", "pmulhrsw {a}, {b}",
              "pabsb {a}, {b}", "pabsd {a}, {b}", "psignb {a}, {b}", "psignw {a}, {b}"],
    "SSE4_1": ["ptest {a}, {b}", "pblendvb {a}, {b}", "pminud {a}, {b}", "pmaxsb {a}, {b}", "pminuw {a}, {b}",
               "pmulld {a}, {b}", "pmuldq {a}, {b}", "pcmpeqq {a}, {b}", "packusdw {a}, {b}",
               "pmovzxbw {a}, {b}", "pmovsxwd {a}, {b}", "pextrb {r:e}, {a}, 9", "pinsrd {a}, {r:e}, 2",
               "pextrq {r}, {a}, 1", "insertps {a}, {b}, 0x5c", "blendps {a}, {b}, 5", "roundps {a}, {b}, 1",
               "dpps {a}, {b}, 0xf1", "mpsadbw {a}, {b}, 5", "phminposuw {a}, {b}"],
    "POPCNT": ["popcnt {r}, {s}", "popcnt {r:e}, {s:e}"],
    "CX16": ["lock cmpxchg16b xmmword ptr [rdi]"],
    "LAHF": ["lahf", "sahf"],
}
# SSE4.2 string compares Unicorn 2.1.4 gets wrong, found by a random search
# (strings over "abc" and NUL): (instruction, xmm1, xmm2, rax, rdx, what differs).
SSE42_WRONG = [
    ("pcmpistrm xmm1, xmm2, 13", 0x62636261000061636362636163006161, 0x61610063636261006263636261620063,
     0xF959B5555C446096, 0xB6BB0AC829264414, "CF"),
    ("pcmpistrm xmm1, xmm2, 29", 0x62626362636300006100620061616362, 0x63626161626262636300616362616363,
     0xFFFFFFFFFFFFFFF1, 0xBD2BFF6D0E70FD68, "the mask in xmm0"),
    ("pcmpestri xmm1, xmm2, 124", 0x62000000006163626263636163000000, 0x6163626363626363616162620000,
     0xF, 0xFFFFFFFFFFFFFFEF, "the index in rcx"),
    ("pcmpestrm xmm1, xmm2, 94", 0x616261620061626262006300636161, 0x61616263626262636100006261620061,
     0x1CC78AE2A1721B82, 0xE3989B1852F3FCA6, "the mask in xmm0"),
    ("pcmpestrm xmm1, xmm2, 110", 0x61616300636363636100626161616300, 0x626100626200006163630062616362,
     0x4, 0x9AC24EA220E7B057, "CF"),
]
GPRS = ["rax", "rbx", "rdx", "rsi", "r8", "r9", "r10", "r11"]


@pytest.fixture(scope="module")
def checker():
    from emulator.diffcheck.native import unavailable_reason
    why = unavailable_reason()
    if why:
        pytest.skip(f"the native side cannot run here: {why}")
    from emulator.diffcheck.run import Checker
    c = Checker(control=False)
    yield c
    c.close()


def _stringy(rng) -> int:
    """128 bits that look like text: small alphabets and NUL bytes."""
    if rng.random() < 0.4:
        return rng.getrandbits(128)
    raw = bytearray(rng.choice(b"ab\0c") for _ in range(16))
    return int.from_bytes(raw, "little")


_E32 = {"rax": "eax", "rbx": "ebx", "rdx": "edx", "rsi": "esi"}


def _render(template: str, rng) -> str:
    a, x = rng.sample(range(16), 2)
    r, s = rng.sample(GPRS, 2)
    return (template.replace("{a}", f"xmm{a}").replace("{b}", f"xmm{x}")
            .replace("{r:e}", _E32.get(r, r + "d")).replace("{s:e}", _E32.get(s, s + "d"))
            .replace("{r}", r).replace("{s}", s).replace("{i}", str(rng.randrange(128))))


def _sequence(template: str, seed: int):
    from emulator.diffcheck.build import SequenceBuilder
    from emulator.diffcheck.layout import data_page
    rng = random.Random(f"{template}:{seed}")
    b = SequenceBuilder("flags", seed, 0, rng)
    b.mxcsr = 0x1F80 | 0x3F
    b.xmm = [_stringy(rng) for _ in range(16)]
    for g in GPRS + ["rcx"]:
        b.regs[g] = rng.choice((rng.getrandbits(64), rng.randrange(-20, 20) & (1 << 64) - 1))
    b.regs["rdi"] = data_page(0) + 16 * rng.randrange(4)
    if "cmpxchg16b" in template and rng.random() < 0.5:
        b.poke(b.regs["rdi"], (b.regs["rax"] | b.regs["rdx"] << 64).to_bytes(16, "little"))
    b.regs["rflags"] = 0x202 | rng.choice((0, 0x8D5))
    b.emit(_render(template, rng))
    return b.finish()


@pytest.mark.parametrize("feature", sorted(KEPT))
def test_kept_extension_runs_like_the_cpu(checker, feature):
    bad = []
    for template in KEPT[feature]:
        for seed in range(12):
            seq = _sequence(template, seed)
            got = checker.check(seq)
            if got.diff is not None:
                bad.append(f"{seq.lines[-1]}: {'; '.join(got.diff.details[:2])}")
    assert not bad, f"{feature} is advertised by emulator/cpuid.py but differs: " + " | ".join(bad[:5])


def test_sse42_string_compares_still_differ(checker):
    """The reason SSE4.2 is off.  If this fails, Unicorn runs pcmpXstrX like
    the CPU now: SSE4.2 (and with it x86-64-v2) can come back to the model."""
    from emulator.diffcheck.build import SequenceBuilder
    still = []
    for text, x1, x2, rax, rdx, what in SSE42_WRONG:
        b = SequenceBuilder("flags", 0, 0, random.Random(text))
        b.mxcsr = 0x1F80 | 0x3F
        b.xmm[1], b.xmm[2] = x1, x2
        b.regs.update(rax=rax, rdx=rdx, rflags=0x202)
        b.emit(text)
        if checker.check(b.finish()).diff is not None:
            still.append(f"{text} ({what})")
    assert still, "Unicorn now runs every known pcmpXstrX case like the CPU"
