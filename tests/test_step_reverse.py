"""Reverse execution in the stepping engine: snapshots plus deterministic
re-execution.  Going back N instructions must land where stepping forward
from the start would have been at that index (same rip, registers, memory),
going forward again must reproduce the same call, and reverse-continue must
land on the last event a forward run would have stopped at."""
from __future__ import annotations

import pytest

from emulator.debug.commands import execute
from emulator.debug.timeline import Pos


def session(image="builtin", every=None, **kw):
    from emulator.debug.session import Session
    from emulator.run import RunConfig
    from vdso.loader import load_image
    kw.setdefault("sizes", [256])
    kw.setdefault("calls", 2)
    extra = {} if every is None else {"snapshot_every": every}
    return Session(RunConfig(image=load_image(image), **kw), **extra)


def state_of(s) -> tuple:
    c = s.caller
    return (s.ctx.index, s.ctx.rip, tuple(sorted(s.m.regs().items())), tuple(s.m.xmm()),
            s.m.read(c.states[0], 144), s.m.read(c.buffer, 256), s.m.read(s.m.reg("rsp"), 64))


@pytest.mark.parametrize("every", [None, 37])
def test_reverse_stepi_lands_where_forward_stepping_was(every):
    ref = session(every=every, injections=["drop@2:0"])
    ref.faultstop = False
    seen = {}
    for _ in range(300):
        seen[ref.ctx.index] = state_of(ref)
        ref.resume("step", 1)
    s = session(every=every, injections=["drop@2:0"])
    s.faultstop = False
    s.resume("step", 300)
    assert s.ctx.index == ref.ctx.index
    for back in (1, 1, 5, 50, 13):
        st = s.reverse("step", back)
        assert st.reason == "step" and st.reverse
        assert state_of(s) == seen[s.ctx.index], s.ctx.index
    # and forward again: the same call to the end
    s.resume("cont")
    ref.resume("cont")
    assert s.ctx.result.output == ref.ctx.result.output and s.ctx.result.ret == ref.ctx.result.ret
    assert [f.decision for f in s.ctx.result.faults] == [f.decision for f in ref.ctx.result.faults]


def test_history_begins_at_the_start_of_the_call():
    s = session()
    assert s.reverse("step").reason == "history-begin"
    s.resume("step", 3)
    st = s.reverse("step", 10)
    assert st.reason == "history-begin" and s.position() == Pos(0)
    assert "no more history: back at the start of call 2" in execute(s, "reverse-stepi")


def test_a_change_by_hand_is_where_history_begins():
    s = session()
    s.resume("step", 20)
    execute(s, "inject reseed")
    s.resume("step", 10)
    out = execute(s, "reverse-stepi 50")
    assert "where `inject reseed` was applied by hand" in out and s.ctx.index == 20
    execute(s, "restart")                              # back to the call as it started
    assert s.ctx.index == 0 and s.kernel.generation == 1


def test_reverse_continue_lands_on_the_previous_breakpoint_hit():
    s = session(sizes=[1024])
    execute(s, "break __arch_chacha20_blocks_nostack")
    s.faultstop = False
    hits = []
    while True:
        st = s.resume("cont")
        if st.reason != "breakpoint":
            break
        hits.append(s.ctx.index)
    assert len(hits) >= 2
    for want in reversed(hits):
        st = s.reverse("cont")
        assert st.reason == "breakpoint" and s.ctx.index == want and st.breakpoint == 1
    assert s.reverse("cont").reason == "history-begin"


def test_reverse_continue_lands_on_the_last_write_fault_or_skip_of_a_watched_byte():
    s = session(injections=["drop@2:0", "oom:1@2:16"])
    s.faultstop = False
    execute(s, "watch state.in_use")
    forward = []
    while True:
        st = s.resume("cont")
        if st.reason == "done":
            break
        forward.append((s.position(), st.watch.why))
    assert [w for _, w in forward] == ["store-faulted", "store-skipped", "write"]
    st = s.reverse("cont")                               # the in_use = 0 store, before it runs
    assert st.watch.why == "write" and s.ctx.rip == st.watch.rip
    assert s.m.read(s.caller.states[0] + 137, 1) == b"\0"
    st = s.reverse("cont")                               # the skip, at its fault stop
    assert st.watch.why == "store-skipped" and s.pending() is not None
    assert s.position() == forward[0][0]


def test_reverse_nexti_steps_back_over_a_call():
    s = session()
    from vdso.insn import reachable_insns
    img = s.kernel.image
    calls = sorted(a for a, i in reachable_insns(img.text, img.base, [s.func]).items() if i.mnemonic == "call")
    s.faultstop = False
    stop = s.resume("cont", temp=(calls[0],))
    assert s.ctx.rip == calls[0]
    at_call = state_of(s)
    execute(s, "next")                                    # over the whole ChaCha20 call
    assert s.ctx.rip == calls[0] + 5
    execute(s, "reverse-nexti")
    assert state_of(s) == at_call
    execute(s, "stepi")
    execute(s, "finish")                                  # out of the routine again
    assert s.ctx.rip == calls[0] + 5
    assert "__vdso_getrandom" in execute(s, "bt").splitlines()[0]


def test_restart_reproduces_the_call():
    s = session(injections=["drop@2:0"])
    s.faultstop = False
    s.resume("cont")
    first = (s.ctx.result.output, s.ctx.result.instructions, [f.decision for f in s.ctx.result.faults])
    out = execute(s, "restart")
    assert "restarted call 2 at #0" in out and s.ctx.index == 0 and not s.ctx.done
    s.resume("cont")
    assert (s.ctx.result.output, s.ctx.result.instructions, [f.decision for f in s.ctx.result.faults]) == first
