"""faultpath diffcheck: the emulator against this CPU (issue 12).

The native half needs x86-64 Linux and skips elsewhere.  A difference is
allowed only where emulator/diffcheck/explain.py explains it (flags the SDM
leaves undefined, a refused 66h near call): every other one fails.
"""
from __future__ import annotations

import ctypes
import signal
from dataclasses import replace

import pytest

from emulator.diffcheck.build import SequenceBuilder
from emulator.diffcheck.compare import compare
from emulator.diffcheck.explain import REGISTRY, explain
from emulator.diffcheck.layout import CODE_ADDR, DATA_ADDR, data_page
from emulator.diffcheck.native import unavailable_reason
from emulator.diffcheck.privileged import GROUPS, ITEMS
from emulator.diffcheck.records import SI_KERNEL
from emulator.diffcheck.run import plan, run_plan, sequence, without_faults

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")


@pytest.fixture(scope="module")
def checker():
    from emulator.diffcheck.run import Checker
    c = Checker()
    yield c
    c.close()


# ----------------------------------------------------------------------------- the sequence
MINIMAL = ("mov rax, 0x7ffff000", "mov rsi, 1", "cmp rsi, rax", "mov byte ptr [r14 + 0x89], 1", "mov ebx, 0",
           "setb bl")


def minimal(state: str):
    """The issue's sequence with the store's page (data page 0) in `state`."""
    import random
    b = SequenceBuilder("test", 0, 0, random.Random(0))
    for line in MINIMAL:
        b.emit(line)
    b.pages[0] = state
    b.regs.update({"r14": DATA_ADDR, "rsp": data_page(5) + 0x800, "rflags": 0x202})
    return b.finish()


def test_native_minimal_sequence_restarts_the_store(checker):
    """The reference itself: the store faults once, is restarted, and setb sees CF."""
    st = checker.native.run(minimal("first-touch"))
    assert st.signal is None
    assert st.gprs["rbx"] == 1
    assert [(f.rip, f.address, f.access) for f in st.faults] == [(CODE_ADDR + 17, DATA_ADDR + 0x89, "write")]
    assert st.pages[0][0x89] == 1


@pytest.mark.parametrize("state", ["first-touch", "dropped", "zero-page", "cow"])
def test_minimal_sequence_equals_native(checker, state):
    seq = minimal(state)
    diff = compare(seq, checker.native.run(seq), checker.emulated.run(seq))
    assert diff is None, f"{diff.klass}: {'; '.join(diff.details)}"


def test_minimal_sequence_without_a_fault_equals_native(checker):
    """No fault, no restart: the emulator must agree (this one holds today)."""
    seq = without_faults(minimal("first-touch"))
    assert compare(seq, checker.native.run(seq), checker.emulated.run(seq)) is None


# ----------------------------------------------------------------------------- privileged instructions
def _expected(item) -> tuple[str | None, int | None, bool]:
    """(signal, si_code, rip past the instruction) Linux delivers for a
    user-mode CPU exception (arch/x86/kernel/traps.c); None: no signal."""
    t = item.text
    if item.group in ("privileged", "io", "alignment"):
        return "SIGSEGV", SI_KERNEL, False
    if item.group == "invalid":
        return "SIGILL", 2, False                                # ILL_ILLOPN
    if item.group == "divide":
        return "SIGFPE", 1, False                                # FPE_INTDIV
    if item.group == "trap":
        if t in ("int3", ".byte 0xcd, 0x03"):
            return "SIGTRAP", SI_KERNEL, True
        if t == ".byte 0xf1":
            return "SIGTRAP", 1, True                            # icebp: #DB, TRAP_BRKPT
        if t == "int 4":
            return "SIGSEGV", SI_KERNEL, True                    # the overflow gate is open to user mode
        return "SIGSEGV", SI_KERNEL, False                       # int n through a DPL-0 gate: #GP
    return None, None, False


@pytest.mark.parametrize("group", GROUPS)
def test_native_privileged_signals(checker, group):
    """What this CPU and kernel do with each instruction of the class."""
    for i, item in enumerate(ITEMS):
        if item.group != group:
            continue
        seq = sequence(0, "privileged", i)
        st = checker.native.run(seq)
        name, code, past = _expected(item)
        if group == "umip":
            # Linux emulates sgdt/sidt/sldt/str/smsw for user space where the
            # CPU has UMIP; without UMIP they simply run.  Either way: no signal
            # or #GP.
            assert st.signal is None or (st.signal.name, st.signal.si_code) == ("SIGSEGV", SI_KERNEL), item.text
            continue
        got = (st.signal.name, st.signal.si_code) if st.signal else (None, None)
        assert got == (name, code), f"{item.text}: {st.signal.text() if st.signal else 'no signal'}"
        if name is not None:
            at = int(seq.tags["at"], 16)
            assert st.signal.rip == (int(seq.tags["end"], 16) if past else at), item.text


@pytest.mark.parametrize("group", GROUPS)
def test_emulated_privileged_equals_native(checker, group):
    bad = []
    for i, item in enumerate(ITEMS):
        if item.group != group:
            continue
        seq = sequence(0, "privileged", i)
        diff = compare(seq, checker.native.run(seq), checker.emulated.run(seq, fresh=True))
        if diff is not None and explain(diff) is None:      # undefined flags of the producer are not errors
            bad.append(f"{item.text}: {diff.klass}")
    assert not bad, "; ".join(bad)


# ----------------------------------------------------------------------------- the comparison can fail
def test_compare_names_a_lost_carry(checker):
    seq = minimal("present")
    native = checker.native.run(seq)
    wrong = replace(native, rflags=native.rflags ^ 1, gprs={**native.gprs, "rbx": 0})
    diff = compare(seq, native, wrong)
    assert diff is not None and diff.klass == "rflags gpr" and diff.flag_bits == ["CF"]


def test_compare_sets_undefined_flags_apart(checker):
    """AF after a shift is undefined: named apart (explain.py explains it); CF is compared."""
    import random
    b = SequenceBuilder("test", 0, 0, random.Random(0))
    b.emit("shl rax, 3")
    b.regs.update({"rax": 0x1234, "rsp": data_page(5) + 0x800, "rflags": 0x202})
    seq = b.finish()
    native = checker.native.run(seq)
    assert compare(seq, native, replace(native, rflags=native.rflags ^ 0x10)).parts == ["rflags-undefined[AF]"]
    assert compare(seq, native, replace(native, rflags=native.rflags ^ 0x1)).parts == ["rflags[CF]"]


def test_fault_lists_are_compared_in_words():
    from emulator.diffcheck.compare import fault_kinds
    from emulator.diffcheck.records import Fault
    w = Fault(0x30000004, 0x30101000, "write", 6)
    assert fault_kinds([w], [Fault(0x30000004, 0x30101000, "read", 4), replace(w, error_code=7)]) == \
        ["read-then-write"]
    assert fault_kinds([w], [Fault(0x30000004, 0x30100ffe, "write", 7), w]) == ["extra"]
    assert fault_kinds([w], []) == ["missing"]
    assert fault_kinds([w], [replace(w, address=0x30101008)]) == ["address"]
    assert fault_kinds([w], [replace(w, error_code=7)]) == ["error-code"]


# ----------------------------------------------------------------------------- determinism and hygiene
def test_sequences_are_a_function_of_seed_kind_index():
    for kind, i in (("flags", 7), ("forms", 123), ("privileged", 5)):
        a, b = sequence(3, kind, i), sequence(3, kind, i)
        assert (a.code, a.regs, a.pages, a.content, a.xmm) == (b.code, b.regs, b.pages, b.content, b.xmm)
    assert sequence(3, "flags", 7).code != sequence(4, "flags", 7).code or \
        sequence(3, "flags", 7).regs != sequence(4, "flags", 7).regs


def test_native_runs_are_repeatable(checker):
    seq = sequence(0, "flags", 11)
    a, b = checker.native.run(seq), checker.native.run(seq)
    assert (a.gprs, a.rflags, a.xmm, a.pages, a.faults, a.signal) == (b.gprs, b.rflags, b.xmm, b.pages, b.faults,
                                                                      b.signal)


class _Sigaction(ctypes.Structure):
    _fields_ = [("handler", ctypes.c_void_p), ("mask", ctypes.c_uint64 * 16), ("flags", ctypes.c_int),
                ("restorer", ctypes.c_void_p)]


def _action(sig: int) -> tuple:
    libc = ctypes.CDLL(None)
    act = _Sigaction()
    assert libc.sigaction(sig, None, ctypes.byref(act)) == 0
    return act.handler, act.flags


def test_previous_signal_actions_come_back(checker):
    before = {s: _action(s) for s in (signal.SIGSEGV, signal.SIGBUS, signal.SIGILL, signal.SIGFPE, signal.SIGTRAP)}
    mask = signal.pthread_sigmask(signal.SIG_BLOCK, [])
    checker.native.run(sequence(0, "privileged", 0))      # ends with SIGSEGV
    assert {s: _action(s) for s in before} == before
    assert signal.pthread_sigmask(signal.SIG_BLOCK, []) == mask


# ----------------------------------------------------------------------------- a differential run
@pytest.fixture(scope="module")
def run2000(checker):
    return run_plan(0, plan(["flags"], 2000), checker=checker)


def test_differential_run_covers_2000_sequences(run2000):
    assert run2000.total == 2000 and run2000.equal + run2000.different == 2000
    assert not any(k.startswith("error") for k in run2000.classes), dict(run2000.classes)


def test_differential_run_finds_no_unexplained_difference(run2000):
    """Every difference is one explain.py names, with its reason."""
    assert run2000.unexplained == 0, dict(run2000.classes.most_common())
    assert set(run2000.explained) <= {e.name for e in REGISTRY}


# ----------------------------------------------------------------------------- explained differences
def _difference(checker, lines, native_change, regs=None):
    """A real native state, and an emulated one changed by native_change."""
    import random
    b = SequenceBuilder("test", 0, 0, random.Random(0))
    for line in lines:
        b.emit(line)
    b.regs.update({"rax": 0x1234, "rbx": 3, "rsp": data_page(5) + 0x800, "rflags": 0x202, **(regs or {})})
    seq = b.finish()
    native = checker.native.run(seq)
    return compare(seq, native, native_change(native))


def test_undefined_flags_are_explained_with_the_instruction(checker):
    d = _difference(checker, ["shl rax, 3"], lambda n: replace(n, rflags=n.rflags ^ 0x10))     # AF
    e = explain(d)
    assert e is not None and e.name == "undefined-flags" and "AF undefined after shl rax, 3" in e.reason


def test_an_explanation_covers_no_more_than_its_reason(checker):
    """A defined flag, or anything besides the undefined flag, is unexplained."""
    assert explain(_difference(checker, ["shl rax, 3"], lambda n: replace(n, rflags=n.rflags ^ 1))) is None  # CF
    both = _difference(checker, ["shl rax, 3"],
                       lambda n: replace(n, rflags=n.rflags ^ 0x10, gprs={**n.gprs, "rbx": 0}))
    assert both.klass == "rflags-undefined gpr"
    assert explain(both) is None


def test_a_refused_66h_near_call_is_explained_and_no_other_refusal(checker):
    seq = sequence(0, "flags", 1380)
    assert seq.lines[1].startswith(".byte 0x66, 0xe8")
    d = compare(seq, checker.native.run(seq), checker.emulated.run(seq))
    assert d.parts == ["refused"] and explain(d).name == "refused-66h-near"
    other = replace(d, details=["emulator: UnfaithfulInstruction: VEX.128-encoded (AVX) instruction ..."])
    assert explain(other) is None


def test_a_split_xmm_load_ending_the_run_is_explained_only_as_such(checker):
    """movdqu straddling into an unmapped page: SIGSEGV on both sides, Unicorn
    has loaded the first 8 bytes into xmm0; any other xmm change is not covered."""
    import random
    b = SequenceBuilder("test", 0, 0, random.Random(0))
    b.emit("movdqu xmm0, xmmword ptr [rdi]")
    b.regs.update({"rdi": data_page(1) - 9, "rsp": data_page(5) + 0x800, "rflags": 0x202})
    b.pages[1] = "unmapped"
    seq = b.finish()
    native, emulated = checker.native.run(seq), checker.emulated.run(seq)
    d = compare(seq, native, emulated)
    assert d is not None and d.parts == ["xmm"] and explain(d).name == "split-xmm-load-at-a-fatal-fault"
    other = compare(seq, native, replace(emulated, xmm=[x ^ (1 << 100) if i == 0 else x
                                                       for i, x in enumerate(emulated.xmm)]))
    assert explain(other) is None
