"""The skip length (emulator/insn_length.py), the two oracles it is checked
against (emulator/skipcheck/oracles.py: objdump, Unicorn) and the divergence
classes (emulator/skipcheck/divergence.py), measured on the exact byte
strings of capstone 5.0.x's known pitfalls and on a corpus of ordinary
instructions."""

import subprocess
import sys

import pytest

from emulator import insn_length as il
from emulator.insn_length import CAPSTONE_CORRECTIONS, capstone_length, skip_length
from emulator.skipcheck.divergence import CLASSES, classify
from emulator.skipcheck.oracles import (have_objdump, objdump_first_lengths, objdump_is_bad, objdump_lengths,
                                        objdump_prefix_only, parse_objdump, unicorn_length, unicorn_probe)

needs_objdump = pytest.mark.skipif(not have_objdump(), reason="GNU objdump not installed")

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
        if first is None or objdump_is_bad(first[1]) or first[0] > len(s):
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
    assert objdump_is_bad("(bad)") and objdump_is_bad(".byte 0xf")
    assert objdump_is_bad("mov edx,?") and objdump_is_bad("mov WORD PTR [rax],?")
    assert not objdump_is_bad("call 1000 <foo?bar>")
    assert objdump_prefix_only("ds rex.WRX") and not objdump_prefix_only("rex.W ret")


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
    src = ("from emulator.skipcheck.oracles import unicorn_length as u;"
           "print([u(bytes.fromhex(h)) for h in "
           "('f00fabc0','f00fa3c0','f00fb3c0','f00fbbc0','f00fbae005','f00fab00')])")
    out = subprocess.run([sys.executable, "-c", src], capture_output=True, text=True,
                         timeout=60, cwd=str(__import__("pathlib").Path(__file__).parents[1]))
    assert out.returncode == 0, out.stderr
    assert out.stdout.strip() == "[None, None, None, None, None, 4]"


# --------------------------------------------------------------------------
# decode.unfaithful_reason: lock prefixes and the unicorn-only encodings
# --------------------------------------------------------------------------
# Measured here: capstone and objdump reject these (capstone decodes the
# fence ones under other names), Unicorn 2.1.4 runs them, and this host's
# CPU (AMD EPYC) raised SIGILL for every one when run natively in a forked
# child.  The tests re-measure Unicorn's and capstone's side.

from vdso.insn import Insn, first_unfaithful, reachable_insns, unfaithful_reason  # noqa: E402

UNICORN_ONLY = [
    ("0f38f0c0", "movbe with a register operand"),
    ("660f38f1c8", "movbe with a register operand"),
    ("0f5000", "movmskps/movmskpd with a memory operand"),
    ("660f5000", "movmskps/movmskpd with a memory operand"),
    ("0f711000", "immediate shift (group 12)"),
    ("0f722000", "immediate shift (group 13)"),
    ("660f733800", "immediate shift (group 14)"),
    ("660f12c0", "movlpd with a register operand"),
    ("660f16c8", "movhpd with a register operand"),
    ("660f78000000", "extrq/insertq"),
    ("f20f7800000000", "extrq/insertq"),
    ("660f7900", "extrq/insertq"),
    ("f20f7900", "extrq/insertq"),
    ("660fc300", "movnti with a 66/f2/f3 prefix"),
    ("f30fc300", "movnti with a 66/f2/f3 prefix"),
    ("f20fd600", "movdq2q/movq2dq with a memory operand"),
    ("f30fd600", "movdq2q/movq2dq with a memory operand"),
    ("660faee8", "lfence/mfence/sfence with a 66/f2/f3 prefix"),
    ("f20faef8", "lfence/mfence/sfence with a 66/f2/f3 prefix"),
    ("8f08", "XOP"),          # 8f with ModRM.mmmmm >= 8: XOP, which this CPU lacks
    ("8f20", "8f /4"),        # 8f /4 with mmmmm < 8: not XOP, #UD; Unicorn pops
    ("668fe0", "8f /4"),
]


@pytest.mark.parametrize("hexcode,why", UNICORN_ONLY)
def test_unicorn_only_encodings_are_refused(hexcode, why):
    code = bytes.fromhex(hexcode)
    assert unicorn_length(code + PAD) is not None, "Unicorn runs it"
    if not hexcode.endswith(("faee8", "faef8")):
        assert capstone_length(code + PAD) is None or hexcode.startswith("8f")
    reason = unfaithful_reason(code + PAD)           # undecodable: raw bytes only
    assert reason and why in reason, reason
    assert "#UD on the CPU" in reason or why == "XOP"


@pytest.mark.parametrize("hexcode", [
    "0f38f007",        # movbe with memory: valid
    "f20f38f0c0",      # crc32 (f2 0f 38 f0 /r with a register): valid
    "0f50c0",          # movmskps with a register
    "660f71d003",      # psrlw xmm, imm
    "660f1200",        # movlpd xmm, m64
    "0fc300",          # movnti
    "0faee8", "0faef0", "0faef8",  # fences without a prefix (and the aliases)
    "f30faec0",        # rdfsbase
    "8f00",            # pop qword ptr [rax]
    "f30fd6c0",        # movq2dq xmm, mm
])
def test_neighbours_of_the_unicorn_only_encodings_are_accepted(hexcode):
    code = bytes.fromhex(hexcode)
    assert unfaithful_reason(code + PAD) is None


LOCKABLE = [
    "f0010f", "f0480107", "f0660107", "f0800705", "f08307ff", "f0813700000000",
    "f0863f", "f0873f", "f00fab07", "f00fb307", "f00fbb07", "f00fba2f05", "f00fba3705",
    "f00fba3f05", "f00fb00f", "f00fb10f", "f00fc007", "f0480fc107", "f00fc70f", "f0480fc70f",
    "f0f617", "f0f71f", "f0fe07", "f0ff0f", "f2f00107", "f3f00107",
]
NOT_LOCKABLE = [
    "f0880000",        # lock mov: capstone rejects, Unicorn runs it as mov
    "f0020000",        # lock add al, [rax]: register destination (capstone accepts)
    "f001c0",          # lock add eax, eax
    "f00f1f00",        # lock nop (capstone accepts)
    "f00fa300",        # lock bt m, r: bt does not write
    "f0803805",        # lock cmp
    "f0f60005",        # lock test
    "f0ff10",          # lock call
    "f00fba2005",      # lock bt m, imm
    "f00fc737",        # lock 0f c7 /6 (memory form of the rdrand group)
    "f0c60000",        # lock mov m8, imm8
]


@pytest.mark.parametrize("hexcode", LOCKABLE)
def test_lockable_instructions_are_accepted(hexcode):
    code = bytes.fromhex(hexcode)
    assert capstone_length(code + PAD) == len(code), hexcode
    assert unfaithful_reason(code + PAD) is None


@pytest.mark.parametrize("hexcode", NOT_LOCKABLE)
def test_lock_on_an_instruction_that_cannot_take_it_is_refused(hexcode):
    code = bytes.fromhex(hexcode)
    reason = unfaithful_reason(code + PAD)
    assert reason and "lock prefix" in reason, reason
    # with capstone's decode, where it has one, the same answer
    ins = il.capstone_insn(code + PAD)
    if ins is not None:
        mnem, _, ops = ins[1].partition(" ")
        assert unfaithful_reason(code, mnem, ops)


def test_lock_bt_register_keeps_its_own_reason():
    for h in ("f00fabc0", "f0480fb3c8", "f00fbae005"):
        assert "aborts Unicorn" in unfaithful_reason(bytes.fromhex(h))


def test_unfaithful_reason_old_signature_and_vex():
    assert "VEX" in unfaithful_reason(bytes.fromhex("c5f9efc0"), "vpxor", "xmm0, xmm0, xmm0")
    assert "EVEX" in unfaithful_reason(bytes.fromhex("62f17c4828c0"), "vmovaps", "zmm0, zmm0")
    assert unfaithful_reason(bytes.fromhex("488907"), "mov", "qword ptr [rdi], rax") is None
    assert unfaithful_reason(b"") is None and unfaithful_reason(b"\xf0") is None


def test_image_check_sees_undecodable_unfaithful_bytes():
    # entry: nop; lock mov [rdi], al (capstone rejects it); ret
    code = bytes.fromhex("90f0880790c3")
    insns = reachable_insns(code, 0x1000, [0x1000])
    bad = first_unfaithful(insns)
    assert isinstance(bad, Insn) and bad.address == 0x1001 and bad.mnemonic == ".byte"
    # plain undecodable bytes that Unicorn would not run differently end the
    # path silently, as before
    assert first_unfaithful(reachable_insns(bytes.fromhex("900f0b"), 0, [0])) is None


def test_no_false_refusals_in_this_machines_libc():
    """Only VEX/EVEX in libc (its AVX2/AVX-512 string functions); none of
    the lock or unicorn-only rules fires on real compiler output."""
    import capstone as cs
    from elftools.elf.elffile import ELFFile
    path = "/usr/lib/x86_64-linux-gnu/libc.so.6"
    try:
        f = open(path, "rb")
    except OSError:
        pytest.skip(f"{path} not present")
    with f:
        text = ELFFile(f).get_section_by_name(".text")
        data, addr = text.data(), text["sh_addr"]
    md = cs.Cs(cs.CS_ARCH_X86, cs.CS_MODE_64)
    for a, size, mnem, ops in md.disasm_lite(data, addr):
        off = a - addr
        r = unfaithful_reason(data[off:off + size], mnem, ops)
        assert r is None or "VEX" in r, (hex(a), mnem, ops, r)
