"""The three instruction-length oracles, the divergence classes and the skip
length, measured on the exact byte strings DESIGN.md names (capstone 5.0.x
pitfalls) and on a corpus of ordinary instructions."""

import subprocess
import sys

import pytest

from emulator import insn_length as il
from emulator.insn_length import (
    CAPSTONE_CORRECTIONS,
    CLASSES,
    capstone_length,
    classify,
    objdump_first_lengths,
    objdump_lengths,
    parse_objdump,
    skip_length,
    unicorn_length,
    unicorn_probe,
)

needs_objdump = pytest.mark.skipif(not il.have_objdump(), reason="GNU objdump not installed")

PAD = b"\x90\x90"      # trailing bytes, so capstone's over-long reads have something to eat


def oracles(code: bytes):
    """(capstone, objdump, unicorn) lengths of the first instruction."""
    od = objdump_first_lengths([code])[0]
    return capstone_length(code), (None if od is None else od[0]), unicorn_length(code)


# --------------------------------------------------------------------------
# DESIGN.md "Capstone 5.0.x pitfalls", measured
# --------------------------------------------------------------------------

@needs_objdump
def test_66_rex_w_ret_imm_capstone_7_others_5():
    code = bytes.fromhex("6648c23412") + PAD
    assert oracles(code) == (7, 5, 5)
    assert classify(code, 7, 5, 5) == "capstone-66-rex-w-ret-imm"
    assert skip_length(code) == 5
    # With exactly the 5 real bytes capstone wants 2 more and rejects them.
    exact = bytes.fromhex("6648c23412")
    assert oracles(exact) == (None, 5, 5)
    assert skip_length(exact) == 5
    # Without 0x66, or without REX.W, all three agree on 4 (c2 iw).
    for plain in ("48c23412", "66c23412", "c23412"):
        c = bytes.fromhex(plain) + PAD
        assert oracles(c) == (len(plain) // 2,) * 3
        assert skip_length(c) == len(plain) // 2


@needs_objdump
@pytest.mark.parametrize("hexcode,intel,amd", [
    ("66e93412", 6, 4),          # jmp rel16 / "jmpw"
    ("66e83412", 6, 4),          # call rel16 / "callw"
    ("660f843412", 7, 5),        # je rel16
    ("660f8f3412", 7, 5),        # jg rel16
])
def test_66_near_branch_capstone_intel_objdump_unicorn_amd(hexcode, intel, amd):
    code = bytes.fromhex(hexcode) + PAD
    assert oracles(code) == (intel, amd, amd)
    assert classify(code, intel, amd, amd) == "capstone-66-near-branch-intel-vs-amd"
    assert skip_length(code) == amd
    # Exactly the AMD-length bytes: capstone rejects (its rel32 is cut off).
    exact = bytes.fromhex(hexcode)
    assert oracles(exact) == (None, amd, amd)
    assert classify(exact, None, amd, amd) == "capstone-66-near-branch-intel-vs-amd"
    assert skip_length(exact) == amd


@needs_objdump
def test_66_near_branch_text_and_target():
    od = objdump_lengths(bytes.fromhex("66e93412"), addr=0x10000)
    assert od[0][:2] == (0, 4) and od[0][2].startswith("jmpw")
    # Unicorn truncates the target to 16 bits: 0x...f000 + 4 + 0x1234.
    probe = unicorn_probe(bytes.fromhex("66e93412"))
    assert probe.length == 4 and probe.block_size == 4 and probe.method == "block"


@needs_objdump
def test_66_rex_w_branch_is_rel32_everywhere():
    for hexcode in ("6648e934120000", "6648e834120000", "66480f8434120000"):
        code = bytes.fromhex(hexcode)
        n = len(code)
        assert oracles(code) == (n, n, n)
        assert classify(code, n, n, n) == "agree"


@needs_objdump
@pytest.mark.parametrize("hexcode,od,uc", [
    # DESIGN: "dd cc" rejected by capstone.  Measured: objdump 2.40 prints
    # (bad) too; Unicorn (and this AMD host) run it: fxch4, 2 bytes.
    ("ddcc", None, 2),
    # DESIGN: "4a 0f 0d 28".  objdump "rex.WX prefetch BYTE PTR [rax]".
    ("4a0f0d28", 4, 4),
    # DESIGN: "f2 0f 1e fa".  objdump "repnz nop edx".
    ("f20f1efa", 4, 4),
])
def test_capstone_rejects_valid(hexcode, od, uc):
    code = bytes.fromhex(hexcode)
    assert oracles(code) == (None, od, uc)
    assert classify(code, None, od, uc) == "capstone-rejects-valid"
    assert skip_length(code) == uc


# --------------------------------------------------------------------------
# Divergence classes measured beyond DESIGN.md
# --------------------------------------------------------------------------

@needs_objdump
@pytest.mark.parametrize("hexcode,expect,cls", [
    # fwait before an x87 store: objdump folds it ("fstcw", 5 bytes),
    # capstone and Unicorn (and the CPU) run fwait alone.  libm has 13.
    ("9bd97c2402", (1, 5, 1), "objdump-fwait-prefix"),
    # A REX followed by another REX: objdump prints "rex.RXB" alone;
    # the CPU consumes both prefixes with the instruction.
    ("4747c9", (3, 1, 3), "objdump-prefix-split"),
    # REX before fs: seen in libgcrypt's code.
    ("4864488b042528000000", (10, 1, 10), "objdump-prefix-split"),
    # lock on a non-lockable instruction: #UD on the CPU, capstone rejects,
    # objdump prints "lock mov", Unicorn ignores the lock and runs it.
    ("f0880000", (None, 3, 3), "invalid-lock-prefix"),
    # ud1 with ModRM: capstone 2 bytes, objdump 3; Unicorn raises #UD.
    ("0fb900", (2, 3, None), "capstone-ud0-ud1-no-modrm"),
    # fstp1 alias: capstone "fstpnce", objdump (bad), Unicorn 2.
    ("d9d8", (2, None, 2), "objdump-bad"),
    # movmskps with a memory operand: #UD on the CPU; only Unicorn runs it.
    ("0f5000", (None, None, 3), "unicorn-only"),
])
def test_measured_classes(hexcode, expect, cls):
    code = bytes.fromhex(hexcode)
    assert oracles(code) == expect
    assert classify(code, *expect) == cls


def test_classify_data_or_padding_and_unexplained():
    code = bytes.fromhex("4747c9")
    assert classify(code, 3, 1, 3, in_code=False) == "data-or-padding"
    # capstone-bug patterns are named even in data
    assert classify(bytes.fromhex("66e93412") + PAD, 6, 4, 4, in_code=False) == \
        "capstone-66-near-branch-intel-vs-amd"
    # a disagreement nothing explains
    assert classify(bytes.fromhex("4889c0"), 3, 4, 5) == "unexplained"
    assert set(CLASSES) >= {"agree", "unexplained", "data-or-padding", "objdump-bad",
                            "capstone-rejects-valid", "capstone-66-rex-w-ret-imm",
                            "capstone-66-near-branch-intel-vs-amd"}


@needs_objdump
@pytest.mark.parametrize("corr", CAPSTONE_CORRECTIONS, ids=lambda c: c.example)
def test_every_correction_is_measured(corr):
    """Each entry of the correction table: capstone is wrong on its example,
    and the corrected length is what Unicorn executes (and objdump decodes,
    where it decodes)."""
    code = bytes.fromhex(corr.example)
    cs, od, uc = oracles(code)
    assert uc is not None and cs != uc
    assert skip_length(code) == uc
    assert od in (None, uc)
    assert classify(code, cs, od, uc) == corr.cls


@needs_objdump
def test_x87_alias_family():
    # every alias capstone rejects is 2 bytes to Unicorn; with a prefix, 3
    codes = [bytes([e, m]) for e, m in sorted(il._X87_ALIASES)]
    codes += [b"\x48" + c for c in codes[:8]]
    for c in codes:
        assert capstone_length(c) is None
        assert unicorn_length(c) == len(c) == skip_length(c)


def test_skip_length_none_when_no_decode():
    assert skip_length(b"") is None
    assert skip_length(b"\x0f") is None                 # cut short by the fetch
    assert skip_length(bytes.fromhex("48c70425")) is None
    assert skip_length(bytes.fromhex("f0880000")) is None   # #UD on the CPU
    assert skip_length(bytes.fromhex("0f0dc0")) is None     # prefetch needs memory
    assert skip_length(bytes.fromhex("c4")) is None


# --------------------------------------------------------------------------
# Ordinary instructions: all three agree
# --------------------------------------------------------------------------

ASM_CORPUS = [
    "mov rax, rbx", "mov qword ptr [rdi + 8], rax", "mov byte ptr [rip + 0x10], 5",
    "mov word ptr [rdi], 0x1234", "movabs rax, 0x1122334455667788",
    "add rax, 0x12345678", "add dword ptr [rsp + 4], 1", "sub rsp, 0x88",
    "lea rax, [rip + 0x1234]", "lea rcx, [rsi + rcx*8 - 0x40]",
    "push rbp", "pop r15", "push 0x12345678",
    "call rax", "call qword ptr [rip + 0x100]", "jmp rax", "ret", "ret 8",
    "movups xmmword ptr [rdi], xmm0", "movdqu xmm0, xmmword ptr [rsi + rcx*8 + 0x80]",
    "movaps xmm8, xmm15", "pxor xmm0, xmm1", "paddd xmm3, xmmword ptr [rdi]",
    "pshufd xmm0, xmm1, 0x1b", "pextrw eax, xmm1, 3", "pextrw word ptr [rdi], xmm1, 3",
    "pshufb xmm0, xmmword ptr [rdi]", "aesenc xmm0, xmm1", "pclmulqdq xmm0, xmm1, 0x10",
    "lock xadd qword ptr [rdi], rax", "lock cmpxchg qword ptr [rdi], rcx",
    "cmpxchg16b xmmword ptr [rdi]", "xchg dword ptr [rdi], eax", "lock inc dword ptr [rdi]",
    "rep movsb", "rep stosq", "shld rax, rbx, 5", "imul rax, qword ptr [rdi], 0x1000",
    "movzx eax, byte ptr [rdi]", "movsx rax, word ptr [rdi]", "movsxd rax, dword ptr [rdi]",
    "cmove rax, rbx", "setne byte ptr [rdi]", "bt qword ptr [rdi], 5", "bsf rax, rbx",
    "test byte ptr [rdi], 1", "cqo", "rdtsc", "cpuid", "syscall", "sfence", "mfence",
    "prefetcht0 byte ptr [rax]", "movnti dword ptr [rdi], eax", "fstp qword ptr [rdi]",
    "fxsave [rdi]", "rol rax, 13", "ror dword ptr [rdi], cl", "not qword ptr [rdi]",
    "neg rax", "div rcx",
]

BYTES_CORPUS = [
    "f30f1efa",                    # endbr64
    "e2fe", "e3fe",                # loop, jrcxz
    "66662e0f1f840000000000",      # data16 data16 cs nopw
    "0f1f4000", "0f1f440000",      # nopl
    "e800000000", "e9fbffffff", "eb00", "7405", "0f85fbffffff",
    "c3", "cc", "90", "f390",      # ret, int3, nop, pause
    "64488b042528000000",          # mov rax, fs:[0x28]
    "48c70425000000002a000000",    # mov qword ptr [0], 0x2a
]


def _corpus():
    from vdso.asm_build import assemble_snippet    # keystone's radix is global state
    out = []
    for line in ASM_CORPUS:
        out.append((line, assemble_snippet(line, 0x1000)))
    out += [(h, bytes.fromhex(h)) for h in BYTES_CORPUS]
    return out


@needs_objdump
def test_ordinary_instructions_all_three_agree():
    corpus = _corpus()
    od = objdump_first_lengths([c for _, c in corpus])
    for (name, code), o in zip(corpus, od):
        cs, uc = capstone_length(code), unicorn_length(code)
        assert o is not None, name
        assert cs == o[0] == uc == len(code), (name, code.hex(), cs, o, uc)
        assert skip_length(code) == len(code)
        assert classify(code, cs, o[0], uc) == "agree"


@needs_objdump
def test_avx_unicorn_has_no_length_but_decoders_agree():
    # DESIGN: VEX.256/EVEX are rejected by Unicorn 2.1.4.
    for hexcode in ("c5fe6f07", "c4e27d18c0", "62f17c4828c0"):
        code = bytes.fromhex(hexcode)
        cs, od, uc = oracles(code)
        assert cs == od == len(code) and uc is None
        assert classify(code, cs, od, uc) == "agree"


# --------------------------------------------------------------------------
# The oracles themselves
# --------------------------------------------------------------------------

@needs_objdump
def test_objdump_batch_matches_single_runs():
    snippets = [c for _, c in _corpus()[:20]] + [bytes.fromhex(h) for h in (
        "ddcc", "6648c23412", "66e93412", "0f", "f0f0f0f0f0f0f0f0f0f0f0f0f0f0f0")]
    batch = objdump_first_lengths(snippets)
    for s, b in zip(snippets, batch):
        alone = objdump_lengths(s)
        first = (alone[0][1], alone[0][2]) if alone else None
        if first is None or il.objdump_is_bad(first[1]) or first[0] > len(s):
            assert b is None, s.hex()
        else:
            assert b is not None and b[0] == first[0], s.hex()


def test_parse_objdump_folds_continuation_lines():
    out = [
        "Disassembly of section .data:",
        "",
        "0000000000000000 <.data>:",
        "   0:\tf3 0f 1e 90 90 90 90 \trepz nop DWORD PTR [rax-0x6f6f6f70]",
        "   7:\t90 ",
        "   8:\t66 48 c2 34 12       \tdata16 rex.W ret 0x1234",
        "   d:\tdd cc                \t(bad)",
    ]
    assert list(parse_objdump(out)) == [
        (".data", 0, 8, "repz nop DWORD PTR [rax-0x6f6f6f70]"),
        (".data", 8, 5, "data16 rex.W ret 0x1234"),
        (".data", 13, 2, "(bad)"),
    ]
    assert il.objdump_is_bad("(bad)") and il.objdump_is_bad(".byte 0xf")
    assert il.objdump_is_bad("mov edx,?") and il.objdump_is_bad("mov WORD PTR [rax],?")
    assert not il.objdump_is_bad("call 1000 <foo?bar>")
    assert il.objdump_prefix_only("ds rex.WRX") and not il.objdump_prefix_only("rex.W ret")


def test_unicorn_probe_methods():
    # fall-through: rip advanced by the length
    p = unicorn_probe(bytes.fromhex("48890424"))
    assert (p.length, p.rip_delta, p.block_size, p.method) == (4, 4, 4, "fallthrough")
    # taken branch: rip is the target, the one-instruction block gives the length
    p = unicorn_probe(bytes.fromhex("ebf0"))
    assert (p.length, p.block_size, p.method) == (2, 2, "block")
    assert p.rip_delta == 2 - 0x10
    # truncated: the fetch runs into the unmapped page
    assert unicorn_probe(bytes.fromhex("48c70425")).length is None
    # #UD
    assert unicorn_probe(bytes.fromhex("0f0b")).length is None


def test_unicorn_lock_bt_reg_is_refused_not_aborted():
    # Unicorn 2.1.4 aborts the process on lock bts reg; the probe must not
    # run it.  Checked in a child so a regression cannot kill the test run.
    src = ("from emulator.insn_length import unicorn_length as u;"
           "print([u(bytes.fromhex(h)) for h in "
           "('f00fabc0','f00fa3c0','f00fb3c0','f00fbbc0','f00fbae005','f00fab00')])")
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                         timeout=60, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[None, None, None, None, None, 4]"
