"""The native twin (emulator/twin): the host's real __vdso_getrandom, stopped
at instruction boundaries by ptrace, checked against independent references:
Unicorn running the same bytes, the Python model of the algorithm
(vdso/reference.py), the x86 rules for rep string single-stepping, and the
kernel semantics each event must show (VM_WIPEONFORK, drop -> reseed path,
the in_use guard)."""
from __future__ import annotations

import os

import pytest

from vdso.abi import STATE_GENERATION, STATE_IN_USE, STATE_KEY, STATE_SIZE
from vdso.elf_image import host_has_vgetrandom

pytestmark = pytest.mark.host_vdso


@pytest.fixture(scope="module")
def native(twin_native):
    return twin_native


def _twin(size, **kw):
    from emulator.twin import Twin, TwinConfig
    return Twin(TwinConfig(size, **kw))


def _getrandoms(call):
    return [(s.args[0], s.args[1]) for s in call.getrandom_calls()]


# ---------------------------------------------------------------------------- counting
def test_rep_string_single_steps_fold_into_one_instruction(native):
    """x86 traps after every iteration of a rep string op under TF; the twin
    counts architecturally.  References: capstone's decode of the probe (its
    instructions up to ret) and rcx (the iterations)."""
    import capstone

    from emulator.twin.tracee import Tracee
    from emulator.twin.tracee_image import BUFFERS, build
    from emulator.twin.walk import Stepper

    img = build()
    start = img.rep_probe - (img.labels["serve"])
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    probe = []
    for insn in md.disasm(img.code[start:], img.rep_probe):
        probe.append(insn)
        if insn.mnemonic == "ret":
            break
    iterations = 7
    t = Tracee.spawn(img)
    try:
        r = t.regs()
        r.rsp = ((r.rsp - 4096) & ~0xF) - 8
        t.write(r.rsp, img.after_call.to_bytes(8, "little"))
        r.rip, r.rdi, r.rsi = img.rep_probe, BUFFERS, iterations
        t.set_regs(r)
        s = Stepper(t)
        n = 0
        while r.rip != img.after_call:
            r, _ = s.step(r)
            n += 1
        assert n == len(probe)
        assert s.raw_steps == len(probe) - 1 + iterations
        assert t.read(BUFFERS, iterations + 1) == b"\x5a" * iterations + b"\0"
    finally:
        t.kill()


def _unicorn_call(twin, base):
    """Run the tracee's own vDSO bytes in Unicorn from the baseline call's
    starting state: (instructions, output, state after)."""
    import unicorn
    from unicorn import x86_const as X

    L = twin.layout
    text = twin.parked.vdso_text
    size = twin.cfg.size
    uc = unicorn.Uc(unicorn.UC_ARCH_X86, unicorn.UC_MODE_64)
    page = 4096
    uc.mem_map(L.vdso_base, (len(text) + page - 1) & ~(page - 1), unicorn.UC_PROT_READ | unicorn.UC_PROT_EXEC)
    uc.mem_write(L.vdso_base, text)
    vvar = L.rng_data & ~(page - 1)
    uc.mem_map(vvar, page, unicorn.UC_PROT_READ)
    gen = int.from_bytes(base.call.state_before[STATE_GENERATION:STATE_GENERATION + 8], "little")
    uc.mem_write(L.rng_data, gen.to_bytes(8, "little") + b"\x01")     # as the kernel's, at the call
    uc.mem_map(L.state_map, L.state_map_len)
    uc.mem_write(L.state, base.call.state_before)
    uc.mem_map(L.buffer & ~(page - 1), page * 4)
    stack = (L.rsp & ~(page - 1)) - 4 * page
    uc.mem_map(stack, 5 * page)
    sentinel = 0x1000
    uc.mem_write(L.rsp - 8, sentinel.to_bytes(8, "little"))
    for reg, v in ((X.UC_X86_REG_RDI, L.buffer), (X.UC_X86_REG_RSI, size), (X.UC_X86_REG_RDX, 0),
                   (X.UC_X86_REG_RCX, L.state), (X.UC_X86_REG_R8, STATE_SIZE), (X.UC_X86_REG_RSP, L.rsp - 8)):
        uc.reg_write(reg, v)
    count = [0]
    uc.hook_add(unicorn.UC_HOOK_CODE, lambda *a: count.__setitem__(0, count[0] + 1))
    uc.emu_start(L.func, sentinel)
    return count[0], bytes(uc.mem_read(L.buffer, size)), bytes(uc.mem_read(L.state, STATE_SIZE))


@pytest.mark.parametrize("size", [4, 64])
def test_instruction_count_and_bytes_match_unicorn_and_the_model(native, size):
    """The single-stepped native count equals Unicorn's count of the same bytes
    from the same state; the output and state equal Unicorn's and the Python
    model's (a fast-path call is a function of the state alone)."""
    from vdso.reference import ModelRng, ModelState, vgetrandom

    with _twin(size) as tw:
        base = tw.baseline()
        assert base.call.outcome == "returned" and base.call.ret == size
        assert base.call.path() == "fast"
        n, out, state = _unicorn_call(tw, base)
        assert base.n == n
        assert base.raw_steps == n             # no rep string op on this path
        assert len(base.rips) == n and base.rips[0] == tw.layout.func
        assert base.call.output == out
        assert base.call.state_after == state
        sb = base.call.state_before
        ms = ModelState(bytearray(sb[:96]), bytearray(sb[96:128]),
                        int.from_bytes(sb[128:136], "little"), sb[136], sb[137])

        def no_syscall(k):
            raise AssertionError("the model wanted a syscall on the fast path")
        res = vgetrandom(ms, ModelRng(ms.generation, True), size, 0, no_syscall)
        assert res.output == base.call.output
        assert ms.pack()[:138] == base.call.state_after[:138]


# ---------------------------------------------------------------------------- events
def test_process_madvise_pageout_drops_the_dirty_droppable_state(native):
    """MADV_PAGEOUT from another process discards the warm (dirty, never
    swapped) state page: no PTE is left and it reads back as zeros."""
    from emulator.twin import events

    with _twin(16) as tw:
        w, _ = tw.parked.walker()
        try:
            L = tw.layout
            (page,) = L.state_pages()
            assert w.page_state(page) == "backed"
            assert any(w.read(L.state, STATE_SIZE))
            e = events.drop(w, L, read_back=True)
            assert e.applied, e.detail
            assert e.state == bytes(STATE_SIZE)
            assert w.read(L.state, STATE_SIZE) == bytes(STATE_SIZE)
            assert w.page_state(page) == "zero"        # the read-back mapped the shared zero page
        finally:
            w.kill()


def test_drop_sends_the_call_to_the_reseed_path(native):
    """A drop before the call's generation check (boundary 0) leaves a state
    whose generation reads 0: the call reseeds its key with a 32-byte
    getrandom into state->key.  Undisturbed at the same boundary it makes no
    syscall; a drop after the return hits the next call instead."""
    with _twin(64) as tw:
        base = tw.baseline()
        L = tw.layout
        plain = tw.run_at(0, "none")
        assert _getrandoms(plain.call("[parent]")) == []
        run = tw.run_at(0, "drop")
        (e,) = run.events
        assert e.applied and e.state == bytes(STATE_SIZE)
        swept = run.call(f"call {tw.K} [parent]")
        assert swept.ret == 64
        assert (L.state + STATE_KEY, 32) in _getrandoms(swept)
        assert swept.path() == "reseed"
        late = tw.run_at(base.n, "drop")
        assert late.call(f"call {tw.K} [parent]").path() == "fast"
        assert late.call(f"call {tw.K + 1} [parent]").path() == "reseed"


def test_fork_child_state_is_wiped(native):
    """fork at a boundary: two processes go on from the same point; the
    child's droppable state reads zeros (VM_WIPEONFORK), so only the child
    reseeds, and the two end with different keys."""
    with _twin(64) as tw:
        base = tw.baseline()
        run = tw.run_at(base.n // 2, "fork")
        (e,) = run.events
        assert e.name == "fork" and e.state == bytes(STATE_SIZE)
        assert any(run.state_at_i), "the parent's state at the fork is the warm state"
        parent = [c for c in run.calls if c.label.endswith("[parent]")]
        child = [c for c in run.calls if c.label.endswith("[child]")]
        assert [c.outcome for c in parent] == ["returned", "returned"]
        assert [c.outcome for c in child] == ["returned", "returned"]
        assert all(c.getrandom_calls() == [] for c in parent)
        assert any(c.path().startswith("reseed") for c in child)
        assert parent[-1].state_after[STATE_KEY:STATE_KEY + 32] != child[-1].state_after[STATE_KEY:STATE_KEY + 32]


def test_reenter_while_claimed_falls_back(native):
    """A nested call while the state is claimed (in_use set on a present page)
    must fall back to the syscall for its whole request; the interrupted call
    then finishes on the fast path."""
    with _twin(64) as tw:
        base = tw.baseline()
        L = tw.layout
        run = tw.run_at(base.n // 2, "reenter")
        assert run.state_at_i[STATE_IN_USE] == 1
        nested = run.call("[handler]")
        assert nested.state_backed
        assert nested.ret == 64 and _getrandoms(nested) == [(L.hbuffer, 64)]
        assert nested.output == nested.syscalls[-1].data
        outer = run.call(f"call {tw.K} [parent]")
        assert outer.ret == 64 and outer.path() == "fast"


def test_drop_then_reenter_defeats_the_guard(native):
    """compare's finding, natively: with the state page dropped, the nested
    call finds in_use == 0, proceeds and zeroes batch bytes the interrupted
    call then copies out.  Without the drop, no boundary hands out a zero
    word (8-byte zero words occur by chance with probability 2^-64).
    compare's configuration (40-byte warm call, 128-byte call, 32-byte handler
    call), every 4th boundary."""
    with _twin(128, warm_size=40, nested_size=32, after_size=64) as tw:
        tw.baseline()
        outer = f"call {tw.K} [parent]"
        plain = tw.sweep(["reenter"], every=4)
        assert all(r.call(outer).zero_words() == 0 for r in plain)
        dropped = tw.sweep(["drop+reenter"], every=4)
        assert all(e.applied for r in dropped for e in r.events)
        hit = [r for r in dropped if r.call(outer).zero_words()]
        assert hit
        # Each zero word is batch bytes the nested call consumed: it found no
        # backed state (so no claim) and reseeded.
        assert all(r.call("[handler]").path() == "reseed" and not r.call("[handler]").state_backed for r in hit)


@pytest.mark.skipif(os.geteuid() != 0, reason="RNDRESEEDCRNG needs CAP_SYS_ADMIN (not root)")
def test_reseed_bumps_the_generation(native):
    """RNDRESEEDCRNG moves vdso_rng_data.generation (read by the tracee), so a
    call at boundary 0 sees its state stale and reseeds."""
    with _twin(4) as tw:
        tw.baseline()
        run = tw.run_at(0, "reseed")
        (e,) = run.events
        assert e.applied, e.detail
        assert run.generation_after > run.generation_before
        assert tw.layout.state + STATE_KEY in [a for a, _ in _getrandoms(run.call(f"call {tw.K} [parent]"))]


def test_not_ready_has_no_native_form(native):
    with _twin(4) as tw:
        tw.baseline()
        run = tw.run_at(0, "not-ready")
        assert run.skipped and run.calls == []


# ---------------------------------------------------------------------------- bounds
def test_time_bound_kills_and_reaps(native):
    """A call that never returns ends as a timeout, and the tracee is gone."""
    from emulator.twin.tracee import Tracee
    from emulator.twin.tracee_image import build

    img = build()
    t = Tracee.spawn(img)
    r = t.regs()
    r.rip = img.spin
    t.set_regs(r)
    stop = t.run_to_trap(0.2)
    assert stop.kind == "timeout"
    assert not t.alive and not os.path.exists(f"/proc/{t.pid}")


def test_close_leaves_no_process(native):
    with _twin(4) as tw:
        tw.baseline()
        pid = tw.parked.t.pid
        tw.run_at(3, "fork")
        assert os.path.exists(f"/proc/{pid}")
    assert not os.path.exists(f"/proc/{pid}")


def _oom_unavailable() -> str:
    from emulator.twin.oom import unavailable
    return unavailable()


def test_oom_persistent_refaults_a_state_store_forever(native):
    """A memory cgroup limit the state page cannot be charged under, the memcg
    OOM killer off: 6.11 clears VM_FAULT_OOM on a droppable VMA, so the store
    refaults without end (a user-mode livelock at a store into the state), and
    with the limit lifted after 3 failed charges (oom:3) the call completes
    on the reseed path."""
    why = _oom_unavailable()
    if why:
        pytest.skip(why)
    import capstone
    with _twin(64, seconds=0.5) as tw:
        tw.baseline()
        L = tw.layout
        run = tw.run_at(0, "oom")
        (e,) = run.events
        assert e.applied, e.detail
        swept = run.call(f"call {tw.K} [parent]")
        assert swept.outcome == "livelock", swept.detail
        assert L.func <= swept.rip < L.vdso_base + L.vdso_size
        off = swept.rip - L.vdso_base
        md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
        md.detail = True
        insn = next(md.disasm(tw.parked.vdso_text[off:off + 15], swept.rip))
        mem = [op for op in insn.operands if op.type == capstone.x86.X86_OP_MEM]
        assert mem and insn.mnemonic.startswith("mov") and insn.operands[0].type == capstone.x86.X86_OP_MEM, \
            f"{insn.mnemonic} {insn.op_str}"
        run = tw.run_at(0, "oom:3")
        swept = run.call(f"call {tw.K} [parent]")
        assert swept.outcome == "returned" and swept.ret == 64 and swept.path() == "reseed"


def test_reseed_path_stepped_and_traced_agree_with_the_model(native):
    """A first call on a fresh state reseeds.  The walker sees its getrandom by
    single-stepping over `syscall`; a run from boundary 0 sees it through
    PTRACE_SYSCALL stops: same syscall.  A run resumed after the syscall keeps
    it as history.  Fed the key the kernel delivered, the Python model makes
    the same output and state."""
    from vdso.reference import ModelRng, ModelState, vgetrandom

    with _twin(64, calls_before=0) as tw:
        base = tw.baseline()
        L = tw.layout
        (stepped,) = base.call.syscalls
        assert (stepped.args[0], stepped.args[1], stepped.ret) == (L.state + STATE_KEY, 32, 32)
        assert stepped.step is not None and 0 < stepped.step < base.n
        traced = tw.run_at(0, "none").call(f"call {tw.K} [parent]").syscalls
        assert [(s.nr, s.args[:3], s.ret) for s in traced] == [(stepped.nr, stepped.args[:3], stepped.ret)]
        assert traced[0].step is None
        resumed = tw.run_at(stepped.step + 1, "none").call(f"call {tw.K} [parent]")
        assert [s.step for s in resumed.syscalls] == [stepped.step]
        assert resumed.ret == 64
        sa = base.call.state_after
        ms = ModelState.zeroed()
        gen = int.from_bytes(sa[STATE_GENERATION:STATE_GENERATION + 8], "little")
        keys = [stepped.data]
        res = vgetrandom(ms, ModelRng(gen, True), 64, 0, lambda k: keys.pop(0))
        assert res.reseeds == 1 and res.output == base.call.output
        assert ms.pack()[:138] == sa[:138]
