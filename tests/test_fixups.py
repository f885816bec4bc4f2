"""What first sight puts right after Unicorn 2.1.4 runs an instruction
(emulator/fixups.py, emulator/simd_fp.py), each against this CPU: the same
bytes run natively and in a Machine through the diffcheck harness, and the
states compared.  Every test here fails with the fixup switched off (see
test_fixups_matter)."""
from __future__ import annotations

import random

import pytest

from emulator import instrument
from emulator.diffcheck.build import SequenceBuilder
from emulator.diffcheck.compare import compare
from emulator.diffcheck.layout import CODE_ADDR, DATA_ADDR, data_page
from emulator.diffcheck.native import unavailable_reason

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

RDI = data_page(0) + 0x100           # 64-byte aligned, in data page 0
F32 = (0, 0x80000000, 0x3F800000, 0x7F800000, 0xFF800000, 0x7FC00000, 0x7FA00000, 0x00000001, 0x007FFFFF,
       0x7F7FFFFF, 0x4F000000, 0x3EAAAAAB)
F64 = (0, 1 << 63, 0x3FF0000000000000, 0x7FF0000000000000, 0x7FF8000000000000, 0x7FF4000000000000, 1,
       0x7FEFFFFFFFFFFFFF, 0x41E0000000000000, 0x3FD5555555555555, 0x36A0000000000000)


@pytest.fixture(scope="module")
def checker():
    from emulator.diffcheck.run import Checker
    c = Checker(control=False)
    yield c
    c.close()


def sequence(lines, regs=None, pages=None, xmm=None, mm=None, mxcsr=0x1F80, seed=0):
    b = SequenceBuilder("test", 0, seed, random.Random(seed))
    for line in lines:
        b.emit(line)
    b.regs.update({"rdi": RDI, "rsp": data_page(5) + 0x800, "rflags": 0x202})
    b.regs.update(regs or {})
    b.content[0] = bytearray(b"\xa5" * 4096)
    for i, state in (pages or {}).items():
        b.pages[i] = state
    for i, v in (xmm or {}).items():
        b.xmm[i] = v
    for i, v in (mm or {}).items():
        b.mm[i] = v
    b.mxcsr = mxcsr
    return b.finish()


def differences(checker, seq) -> str | None:
    """None when both sides agree on everything (undefined flags aside)."""
    with checker.native.armed():
        nat = checker.native.run(seq)
    d = compare(seq, nat, checker.emulated.run(seq))
    if d is None or d.klass == "rflags-undefined":
        return None
    return f"{' ; '.join(seq.lines)}: {d.klass}: {'; '.join(d.details[:4])}"


def all_equal(checker, seqs) -> None:
    bad = [x for x in (differences(checker, s) for s in seqs) if x]
    assert not bad, "\n".join(bad)


# ----------------------------------------------------------------------------- flags
@pytest.mark.parametrize("insn", ["cmpxchg8b qword ptr [rdi]", "cmpxchg16b xmmword ptr [rdi]",
                                  "lock cmpxchg16b xmmword ptr [rdi]"])
@pytest.mark.parametrize("state", ["present", "first-touch"])
def test_cmpxchg8b_16b_change_only_zf(checker, insn, state):
    """SDM: only ZF; QEMU's helper recomputes the others from a stale op."""
    seqs = []
    for k, (a, b) in enumerate(((1, 5), (5, 1), (0x7F, 0x80), (0xA5A5A5A5A5A5A5A5, 0xA5A5A5A5A5A5A5A5))):
        # rax:rdx against memory: equal for the last pair (the page holds a5 bytes)
        seqs.append(sequence(["cmp rax, rbx", insn], regs={"rax": a, "rbx": b, "rdx": 0xA5A5A5A5A5A5A5A5},
                             pages={0: state}, seed=k))
    all_equal(checker, seqs)


@pytest.mark.parametrize("width", ["byte", "word", "dword", "qword"])
def test_lock_neg_flags_are_the_results(checker, width):
    """QEMU takes SF and PF from the operand instead of -operand."""
    seqs = [sequence(["cmp rax, rbx", f"lock neg {width} ptr [rdi]", "nop"], regs={"rax": 1, "rbx": 5}),
            sequence([f"lock neg {width} ptr [rdi + 3]"], pages={0: "first-touch"}),
            sequence(["stc", f"lock neg {width} ptr [rdi + 8]", "setp al", "sets bl"])]
    all_equal(checker, seqs)


# ----------------------------------------------------------------------------- x87
@pytest.mark.parametrize("store", ["fst dword ptr [rdi]", "fstp qword ptr [rdi]", "fstp tbyte ptr [rdi]",
                                   "fist word ptr [rdi]", "fistp dword ptr [rdi]", "fistp qword ptr [rdi]",
                                   "fisttp word ptr [rdi]", "fisttp qword ptr [rdi]", "fbstp tbyte ptr [rdi]"])
def test_x87_store_from_an_empty_stack_stores_the_indefinite(checker, store):
    """Stack underflow, IM masked: the indefinite value, IE and SF set (the
    status word is compared through the fnstenv image that follows)."""
    all_equal(checker, [sequence([store, "fnstenv [rdi + 0x40]"]),
                        sequence([store, "fnstenv [rdi + 0x40]"], pages={0: "first-touch"})])


@pytest.mark.parametrize("lines", [["fnstenv [rdi]"], ["fld1", "fnstenv [rdi]"],
                                   ["fld1", "fadd st(0), st(0)", "fnstenv [rdi]"],
                                   ["fld dword ptr [rdi + 0x80]", "fnsave [rdi]", "fnstenv [rdi + 0x80]"],
                                   ["fnsave [rdi]"], ["fld1", "data16 fnstenv [rdi]"]])
def test_fnstenv_fnsave_images(checker, lines):
    """Reserved halves 0xffff and FOP, as this CPU writes them."""
    all_equal(checker, [sequence(lines)])


@pytest.mark.parametrize("lines", [["fxsave [rdi]"], ["fld1", "fxsave64 [rdi]"], ["fldz", "fxsave [rdi]"],
                                   ["xsave [rdi]"], ["fld1", "xsaveopt [rdi]"], ["fld1", "xsave64 [rdi]"]])
def test_fxsave_xsave_images(checker, lines):
    """FOP/FIP/FDP zero without a pending exception, this CPU's MXCSR_MASK,
    zero pads in the ST slots."""
    all_equal(checker, [sequence(lines, regs={"rax": 3, "rdx": 0})])


# ----------------------------------------------------------------------------- SSE floating point
SIMD_FP = ["addss xmm0, xmm1", "addpd xmm0, xmm1", "subsd xmm0, xmm1", "mulps xmm0, xmm1", "divss xmm0, xmm1",
           "divpd xmm0, xmm1", "sqrtsd xmm0, xmm1", "minps xmm0, xmm1", "maxsd xmm0, xmm1", "cvtss2sd xmm0, xmm1",
           "cvtsd2ss xmm0, xmm1", "cvtpd2ps xmm0, xmm1", "cvtps2dq xmm0, xmm1", "cvttpd2dq xmm0, xmm1",
           "cvtss2si eax, xmm1", "cvttsd2si r10, xmm1", "cvtsi2ss xmm0, rbx", "cvtsi2sd xmm0, rbx",
           "cvtsi2ss xmm0, ebx",
           "haddps xmm0, xmm1", "addsubpd xmm0, xmm1", "dpps xmm0, xmm1, 0xff", "roundsd xmm0, xmm1, 4",
           "cmpltps xmm0, xmm1", "cmpunordsd xmm0, xmm1", "comiss xmm0, xmm1", "ucomisd xmm0, xmm1",
           "addss xmm0, dword ptr [rdi]", "mulsd xmm8, qword ptr [rdi]", "cvtsd2si rax, qword ptr [rdi]",
           "cvtpi2ps xmm0, mm1", "cvtps2pi mm0, xmm1", "sqrtps xmm12, xmm1"]


@pytest.mark.parametrize("insn", SIMD_FP)
def test_simd_fp_flags_and_results_are_this_cpus(checker, insn):
    """MXCSR exception flags (QEMU 5 never sets them) and results (QEMU picks
    the other NaN of two) from NaNs, infinities, denormals, 1/0, inexact and
    out-of-range conversions, under DAZ/FTZ and every rounding mode."""
    rng = random.Random(insn)
    m = insn.split()[0]
    # 64-bit lanes where the source is double precision (cvtss2sd reads singles).
    wide = m.startswith(("cvtsd2", "cvttsd2", "cvtpd2", "cvttpd2")) or (
        not m.startswith(("cvtss2", "cvttss2", "cvtps2", "cvttps2", "cvtsi2", "cvtpi2")) and m.endswith(("sd", "pd")))
    seqs = []
    table = F64 if wide else F32
    for k in range(12):
        # Lane 0 (what the scalar forms use) walks the special values; the others are random.
        lanes = [table[k % len(table)]] + [rng.choice(table) for _ in range(1 if wide else 3)]
        other = [table[(5 * k + 3) % len(table)]] + [rng.choice(table) for _ in range(1 if wide else 3)]
        w = 64 if wide else 32
        x = sum(v << (w * i) for i, v in enumerate(lanes))
        y = sum(v << (w * i) for i, v in enumerate(other))
        s = sequence([insn], regs={"rbx": rng.choice((1, -1 & (1 << 64) - 1, 1 << 63, 16777217, (1 << 53) + 1))},
                     xmm={0: x, 1: y, 8: x, 12: x}, mm={1: y & (1 << 64) - 1},
                     mxcsr=rng.choice((0x1F80, 0x3F80, 0x5F80, 0x7F80, 0x9FC0, 0x1FC0)), seed=k)
        s.content[0] = s.content[0][:0x100] + y.to_bytes(16, "little") + s.content[0][0x110:]
        seqs.append(s)
    all_equal(checker, seqs)


def test_integer_simd_and_the_vdso_get_no_hook():
    """No hook where nothing needs one: integer SIMD never sets MXCSR flags."""
    from vdso.asm_build import assemble_snippet
    code = assemble_snippet("paddd xmm0, xmm1\npxor xmm2, xmm3\npshufd xmm4, xmm5, 0x1b\nmovdqu xmm6, [rdi]\n"
                            "por xmm7, xmm0\npsrld xmm1, 7\n", CODE_ADDR)
    assert instrument.hooks_for(code, CODE_ADDR) == []


def test_unmasked_simd_exception_is_refused_not_guessed(checker):
    """IM clear and an invalid operation: the CPU raises #XM; the emulator
    says it cannot, instead of running on."""
    seq = sequence(["divss xmm0, xmm1"], xmm={0: 0, 1: 0}, mxcsr=0x1F00)
    with checker.native.armed():
        assert checker.native.run(seq).signal.name == "SIGFPE"
    assert "#XM is not emulated" in checker.emulated.run(seq).error


# ----------------------------------------------------------------------------- fault addresses
@pytest.mark.parametrize("insn,size", [("fnstenv [rdi]", 28), ("fnsave [rdi]", 108), ("data16 fnstenv [rdi]", 14),
                                       ("xsave [rdi]", 576)])
def test_state_save_faults_where_this_cpu_does(checker, insn, size):
    """First field, then the last byte (measured): CR2 there."""
    seqs = []
    for k in sorted({1, 2, 3, 4, 8, size // 2, size - 1}):
        if insn.startswith("xsave") and k % 64:
            continue                        # 64-byte aligned or #GP
        for pages in ({1: "first-touch"}, {0: "first-touch"}, {1: "cow"}):
            seqs.append(sequence([insn], regs={"rdi": data_page(1) - k, "rax": 3, "rdx": 0}, pages=pages))
    all_equal(checker, seqs)


@pytest.mark.parametrize("insn,size", [("maskmovq mm0, mm1", 8), ("maskmovdqu xmm0, xmm1", 16)])
def test_masked_stores_fault_on_their_whole_operand(checker, insn, size):
    """This CPU takes the write fault on a page the mask leaves alone."""
    seqs = []
    for k in (1, size // 2, size - 1):
        for mask in (0, 0xFF, 0x80 << 8 * (size - 1)):
            seqs.append(sequence([insn], regs={"rdi": data_page(1) - k}, pages={1: "first-touch"},
                                 xmm={0: 0x1122334455667788, 1: mask},
                                 mm={0: 0x1122334455667788, 1: mask & (1 << 64) - 1}))
    all_equal(checker, seqs)


@pytest.mark.parametrize("seg", ["fs", "gs"])
@pytest.mark.parametrize("insn,size", [("maskmovq mm0, mm1", 8), ("maskmovdqu xmm0, xmm1", 16)])
def test_masked_stores_honour_a_segment_override(checker, seg, insn, size):
    """seg:[rdi]: the whole-operand check is made at base + rdi, where this CPU
    writes (with rdi alone pointing at no mapping at all)."""
    base = 0x10_0000
    seqs = []
    for k in (1, size - 1, 64):
        for pages in ({1: "first-touch"}, {1: "cow"}, {}):
            prefix = ".byte 0x64" if seg == "fs" else ".byte 0x65"
            seqs.append(sequence([prefix, insn], regs={"rdi": data_page(1) - k - base, f"{seg}_base": base},
                                 pages=pages, xmm={0: 0x1122334455667788, 1: 0x8080808080808080},
                                 mm={0: 0x1122334455667788, 1: 0x8080808080808080}))
    all_equal(checker, seqs)


def test_fxsave_faults_on_a_page_only_its_reserved_tail_reaches(checker):
    """Unicorn writes bytes 0..415 only; the CPU checks all 512."""
    all_equal(checker, [sequence(["fxsave [rdi]"], regs={"rdi": data_page(1) - k}, pages={1: state})
                        for k in (496, 480, 416, 256) for state in ("first-touch", "cow", "zero-page")])


def test_non_canonical_address_unicorn_truncates_is_gp(checker):
    """Unicorn drops address bits 63..48 and reports a page fault at the
    truncated address; the CPU raises #GP (SIGSEGV, SI_KERNEL, no address).
    (When the truncated address is mapped, Unicorn makes the access without
    any fault: only a hook on every access could see it.)"""
    all_equal(checker, [sequence(["mov rax, qword ptr [rbx + 0x80]"], regs={"rbx": 0x6B0019A96D59EE9B}),
                        sequence(["mov qword ptr [rbx], rax"], regs={"rbx": 0x8000_0000_0000_0000 | 0x10_0000})])


# ----------------------------------------------------------------------------- a fixup across a stop
@pytest.mark.parametrize("lines,regs", [
    (["cmp rax, rbx", "cmpxchg16b xmmword ptr [rdi]"], {"rax": 0x7F, "rbx": 0x80}),
    (["cmp rax, rbx", "lock neg dword ptr [rdi]"], {"rax": 1, "rbx": 5}),
    (["addss xmm0, xmm1"], {}),
    (["fstp dword ptr [rdi]"], {}),
])
def test_a_stop_right_after_the_instruction_sees_the_fixed_state(checker, lines, regs):
    """An exact stop at the next instruction (budget, step, injection) comes
    before that instruction's hook: the run loop applies the fixup there."""
    from emulator.records import CallContext, CallResult
    seq = sequence(lines, regs=regs, xmm={0: 0x3F800000, 1: 3})
    with checker.native.armed():
        nat = checker.native.run(seq)
    runner = checker.emulated
    m = runner._machine(fresh=True)
    child, snap = runner._load(m, seq)
    try:
        ctx = CallContext(result=CallResult(size=0, process=m.name), rip=CODE_ADDR, budget=100)
        m.run(ctx, stop_at=len(lines))
        assert ctx.index == len(lines) and m.reg("rip") == CODE_ADDR + seq.exit_slot - 6
        assert m.reg("rflags") & 0x8D5 == nat.rflags & 0x8D5
        assert m.reg("mxcsr") == nat.mxcsr and m.xmm() == nat.xmm
        assert m.read(RDI, 16) == nat.pages[0][0x100:0x110]
    finally:
        m.mm.munmap(CODE_ADDR, 0x4000)
        m.mm.munmap(DATA_ADDR, 0x6000)
        m.sync()


# ----------------------------------------------------------------------------- refusals
def test_66h_near_call_refused_where_capstone_decodes_nothing():
    """66 e8 rel16: capstone 5 wants a rel32 and often decodes nothing."""
    code = bytes.fromhex("f8" "66e80001" "9f")
    assert "66h-prefixed near call" in instrument.refusal(code, CODE_ADDR)
    assert instrument.refusal(bytes.fromhex("f8" "66" "48e800010000" "9f"), CODE_ADDR) is None   # REX.W: 64-bit


# ----------------------------------------------------------------------------- the tests have teeth
def test_fixups_matter(checker, monkeypatch):
    """With first sight's fixups off, the same checks find the differences."""
    monkeypatch.setattr(instrument, "_fixup", lambda *a: None)
    seqs = {"lock neg": sequence(["cmp rax, rbx", "lock neg qword ptr [rdi]", "nop"], regs={"rax": 1, "rbx": 5}),
            "fstp": sequence(["fstp dword ptr [rdi]"]),
            "fnstenv": sequence(["fnstenv [rdi]"]),
            "fxsave": sequence(["fxsave [rdi]"]),
            "comiss": sequence(["comiss xmm0, xmm1"], xmm={0: 0x7FC00000, 1: 0}),
            "mulps": sequence(["mulps xmm0, xmm1"], xmm={0: 0x7FC00000, 1: 0x7FF00000}),
            "maskmovq": sequence(["maskmovq mm0, mm1"], regs={"rdi": data_page(1) - 4}, pages={1: "first-touch"},
                                 mm={1: 0})}
    runner = checker.emulated
    for name, seq in seqs.items():
        runner.close()                      # a Machine that never saw these blocks
        assert differences(checker, seq) is not None, f"{name}: no difference without its fixup"
    runner.close()


def test_running_hooked_instructions_first_matters(checker, monkeypatch):
    """With every hooked instruction run where it stands (no stop before it),
    a pushf whose store a journal hook sees leaves a stale lazy-flags op
    behind it (measured); without a hook, cmpxchg8b/16b keep QEMU's flags."""
    import emulator.task
    from emulator.task import Task
    pushf = sequence(["xor bpl, dl", "add r13d, r12d", "pushf", "rcl bp, 1"],
                     regs={"rsp": data_page(5) - 1, "rdx": 0x100, "rbp": 0x7004EB9E1FDA9A4A,
                           "r12": 0x4A5FE1D9ADF92B61, "r13": 1 << 63}, pages={5: "readonly"})
    with monkeypatch.context() as mp:
        mp.setattr(Task, "_first_of_run", lambda self, address: True)
        checker.emulated.close()
        assert differences(checker, pushf) is not None, "pushf: no difference when run in place"
    real = instrument.hooks_for
    monkeypatch.setattr(emulator.task, "hooks_for",
                        lambda code, addr: [h for h in real(code, addr) if h.address != CODE_ADDR + 3])
    for name, seq in {"cmpxchg8b": sequence(["cmp rax, rbx", "cmpxchg8b qword ptr [rdi]"], regs={"rax": 1, "rbx": 5}),
                      "cmpxchg16b": sequence(["cmp rax, rbx", "cmpxchg16b xmmword ptr [rdi]"],
                                             regs={"rax": 0x7F, "rbx": 0x80})}.items():
        checker.emulated.close()
        assert differences(checker, seq) is not None, f"{name}: no difference without its hook"
    checker.emulated.close()


def test_hooked_instructions_run_first_in_a_run(checker):
    """The same sequences, as they run: equal to this CPU."""
    all_equal(checker, [sequence(["cmp rax, rbx", "cmpxchg8b qword ptr [rdi]"], regs={"rax": 1, "rbx": 5}),
                        sequence(["xor bpl, dl", "add r13d, r12d", "pushf", "rcl bp, 1"],
                                 regs={"rsp": data_page(5) - 1, "rdx": 0x100, "rbp": 0x7004EB9E1FDA9A4A,
                                       "r12": 0x4A5FE1D9ADF92B61, "r13": 1 << 63}, pages={5: "readonly"})])


# ----------------------------------------------------------------------------- cmpxchg, cmps
@pytest.mark.parametrize("lines,regs", [
    (["cmpxchg dword ptr [rdi], ecx"], {"rax": 0xDEAD0000A5A5A5A5}),            # success: RAX kept
    (["cmpxchg dword ptr [rdi], ecx"], {"rax": 0xDEAD000000000001}),            # failure: EAX loaded
    (["lock cmpxchg dword ptr [rdi], ecx"], {"rax": 0xDEAD0000A5A5A5A5}),
    (["cmpxchg edx, ecx"], {"rax": 0xDEAD000000000007, "rdx": 0xBEEF000000000007}),   # success
    (["cmpxchg edx, ecx"], {"rax": 0xDEAD000000000001, "rdx": 0xBEEF000000000007}),   # failure: edx kept whole
    (["cmpxchg eax, ecx"], {"rax": 0xDEAD000000000001}),
])
def test_cmpxchg32_writes_what_this_cpu_writes(checker, lines, regs):
    """QEMU writes EAX and the destination either way (zero-extended)."""
    all_equal(checker, [sequence(lines, regs={"rcx": 0x1111222233334444, **regs})])


def test_repe_cmpsb_faults_on_rsi_first(checker):
    """Both operands not present: `repe cmpsb` faults on [rsi] first on this
    CPU, QEMU on [rdi]; the other cmps forms fault on [rdi] first on both."""
    all_equal(checker, [sequence([insn], regs={"rsi": data_page(0) + 0x2DB, "rdi": data_page(2) + 0xA13, "rcx": 2},
                                 pages={0: "dropped", 2: "dropped"})
                        for insn in ("cmpsb", "repe cmpsb", "cmpsq", "repne cmpsd")])
