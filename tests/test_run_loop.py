"""The run loop (emulator/entry.py, blockhook.py, mmu.py, instrument.py):
exact stops without `count`, no code hook on the default path, first sight
of new code, a 2^46-byte mapping, loads into a sentinel page, CPL 3."""
from __future__ import annotations

import pytest
from unicorn import UC_HOOK_CODE

from emulator.records import CallContext, CallResult
from emulator.run import RunConfig, new_process
from mm import flags as F
from snippets import mmap, snippet_machine
from vdso.loader import load_image

PAGE = 4096


def _process(image: str, size: int):
    _, m, caller = new_process(RunConfig(image=load_image(image), sizes=[size], calls=1))
    caller.getrandom(size)                      # warm: first-touch faults and first sight done
    return m, caller


def _prepare(m, caller, size: int):
    return m.prepare_call(caller.func, caller.args(size), size=size)


def _state(m) -> tuple:
    return (tuple(m.regs().values()), tuple(m.xmm()))


@pytest.mark.parametrize("image", ["builtin", pytest.param("host", marks=pytest.mark.host_vdso)])
def test_stepping_one_instruction_at_a_time_equals_the_whole_run(image):
    """Stops at every instruction boundary are exact: stepping reaches the same
    end in exactly as many steps as the call has instructions."""
    m, caller = _process(image, 64)
    snap = m.snapshot()
    whole = caller.getrandom(64)
    end = (_state(m), bytes(m.read(caller.buffer, 64)))
    m.restore(snap)
    ctx = _prepare(m, caller, 64)
    steps = 0
    while not ctx.done:
        before = ctx.index
        m.step(ctx, 1)
        steps += 1
        assert ctx.index in (before, before + 1), "a step retired more than one instruction"
        assert steps <= whole.instructions + 50
    assert ctx.result.outcome == "returned" and ctx.index == whole.instructions
    assert (_state(m), bytes(m.read(caller.buffer, 64))) == end


@pytest.mark.parametrize("stop", [1, 7, 100, 333, 1000])
def test_a_stop_at_instruction_n_retires_exactly_n(stop):
    m, caller = _process("builtin", 256)
    ctx = _prepare(m, caller, 256)
    m.run(ctx, stop_at=stop)
    assert ctx.index == stop and not ctx.done
    m.run(ctx)
    assert ctx.result.outcome == "returned" and ctx.result.ret == 256


def test_the_default_path_has_no_count_and_no_code_hook(monkeypatch):
    m, caller = _process("builtin", 4096)
    calls = []
    real = m.uc.emu_start

    def spy(begin, until, timeout=0, count=0):
        calls.append(count)
        return real(begin, until, timeout, count)
    monkeypatch.setattr(m.uc, "emu_start", spy)
    added = []
    real_add = m.uc.hook_add
    monkeypatch.setattr(m.uc, "hook_add", lambda kind, *a, **k: (added.append(kind), real_add(kind, *a, **k))[1])
    res = caller.getrandom(4096)
    assert res.outcome == "returned" and calls and set(calls) == {0}
    assert UC_HOOK_CODE not in added and not m.insn_hooks     # our own vDSO needs none


def test_new_code_at_the_same_address_is_met_afresh():
    """What was learned of code (block sizes, instruction hooks) goes with it:
    an `in` (#GP at CPL 3) replaced by a `nop` at the same address runs."""
    m = snippet_machine("ret")
    code = 0x4000_0000

    def run(src: str):
        from vdso.asm_build import assemble_snippet
        m.mm.mmap(code, PAGE, F.PROT_READ | F.PROT_WRITE, F.MAP_PRIVATE | F.MAP_ANONYMOUS | F.MAP_FIXED, -1, 0)
        m.mm.poke(code, assemble_snippet(src, code))
        m.mm.mprotect(code, PAGE, F.PROT_READ | F.PROT_EXEC)
        m.sync()
        res = m.call(code, [])
        m.mm.munmap(code, PAGE)
        m.sync()
        return res
    first = run("in al, dx\nret")
    assert first.outcome == "signal" and first.signal.signal == "SIGSEGV" and first.signal.code_name == "SI_KERNEL"
    second = run("nop\nret")
    assert second.outcome == "returned", second.outcome_detail


def test_a_load_into_the_page_after_a_writable_page_faults_there():
    """Unicorn reads through a PROT_NONE page on a split load; the CPU faults."""
    m = snippet_machine("mov rax, qword ptr [rdi]\nret")
    base = mmap(m, 2 * PAGE)
    m.user_write(base + PAGE - 8, b"\x11" * 8)        # page 0 present and writable, page 1 not present
    res = m.call(m.kernel.image.symbol("entry"), [base + PAGE - 4])
    assert res.outcome == "returned"
    reads = [f for f in res.faults if f.access == "read"]
    assert [(f.address, f.decision) for f in reads] == [(base + PAGE, "zero-page")]
    assert res.ret == 0x11111111


def test_a_read_modify_write_faults_once_for_writing():
    m = snippet_machine("lock add byte ptr [rdi], 1\nret")
    base = mmap(m, PAGE)
    res = m.call(m.kernel.image.symbol("entry"), [base + 8])
    assert [(f.access, f.decision) for f in res.faults] == [("write", "mapped")]
    assert m.read(base + 8, 1) == b"\x01"


def test_a_huge_droppable_mapping_costs_what_is_touched():
    m = snippet_machine("mov byte ptr [rdi], 1\nret")
    size = 1 << 46
    addr = m.mm.mmap(0, size, F.PROT_READ | F.PROT_WRITE, F.MAP_DROPPABLE | F.MAP_ANONYMOUS, -1, 0)
    assert addr > 0
    m.sync()
    res = m.call(m.kernel.image.symbol("entry"), [addr + size // 2])
    assert res.outcome == "returned"
    assert len(m.mmu.mapped) < 64            # the image, the stack and one data page, not 2^34 pages
    assert m.mm.munmap(addr, size) == 0
    m.sync()


@pytest.mark.parametrize("insn,signal,code", [
    ("cli", "SIGSEGV", "SI_KERNEL"), ("hlt", "SIGSEGV", "SI_KERNEL"), ("rdmsr", "SIGSEGV", "SI_KERNEL"),
    ("ud2", "SIGILL", "ILL_ILLOPN"), ("sysenter", "SIGILL", "ILL_ILLOPN"),
    ("xor ecx, ecx\ndiv ecx", "SIGFPE", "FPE_INTDIV"), ("int3", "SIGTRAP", "SI_KERNEL"),
])
def test_the_cpu_refuses_at_cpl3(insn, signal, code):
    """The emulated task runs at CPL 3: what user mode may not do raises the
    signal Linux sends (tests/test_diffcheck.py checks each against this CPU)."""
    m = snippet_machine(f"{insn}\nret")
    res = m.call(m.kernel.image.symbol("entry"), [])
    assert res.outcome == "signal" and (res.signal.signal, res.signal.code_name) == (signal, code)
