"""The stepping engine (emulator.debug.session.Session) in-process: breakpoints,
next/until, fault stops and their handling under both droppable-oom
designs, faultstop off, interrupts, register writes, memory views."""
from __future__ import annotations

import re

import pytest

from emulator.debug import views
from emulator.debug.commands import execute as run_cmd
from emulator.errors import UsageError
from vdso.elf_image import host_has_vgetrandom


def session(image="builtin", **kw):
    from emulator.run import RunConfig
    from emulator.debug.session import Session
    from vdso.loader import load_image
    try:
        img = load_image(image)
    except Exception as e:
        pytest.skip(f"--image {image} unavailable: {e}")
    kw.setdefault("sizes", [256])
    kw.setdefault("calls", 2)
    return Session(RunConfig(image=img, **kw))


def images():
    return ["builtin"] + (["host"] if host_has_vgetrandom() else [])


def first_call_target(s) -> tuple[int, int]:
    """(address of the first `call` in __vdso_getrandom reached on this path, its target)."""
    from vdso.insn import reachable_insns
    img = s.kernel.image
    insns = reachable_insns(img.text, img.base, [s.func])
    calls = sorted(a for a, i in insns.items() if i.mnemonic == "call")
    return calls[0], int(insns[calls[0]].op_str, 16)


@pytest.mark.parametrize("image", images())
def test_break_continue_next_until(image):
    s = session(image)
    call_at, target = first_call_target(s)
    out = run_cmd(s, f"until {call_at:#x}")
    assert s.ctx.rip == call_at, out
    before = s.ctx.index
    out = run_cmd(s, "next")
    assert s.ctx.rip == call_at + 5, out           # stepped over the whole ChaCha20 call
    assert s.ctx.index - before > 20
    # a breakpoint inside a loop of the routine: hit, continue, hit again with progress
    s2 = session(image)
    run_cmd(s2, f"break {target:#x}")
    s2.faultstop = False
    st = s2.resume("cont")
    assert st.reason == "breakpoint" and st.breakpoint == 1 and s2.ctx.rip == target
    run_cmd(s2, "stepi 30")
    loop_pc = s2.ctx.rip
    run_cmd(s2, f"break {loop_pc:#x}")
    i1 = s2.ctx.index
    st = s2.resume("cont")
    assert st.reason == "breakpoint" and s2.ctx.rip == loop_pc and s2.ctx.index > i1
    run_cmd(s2, "delete")
    st = s2.resume("cont")
    assert st.reason == "done" and s2.ctx.result.ret == 256


def test_stepi_n_stops_early_at_a_fault_and_stepi_carries_it_out():
    s = session(injections=["drop@2:0"])
    st = s.resume("step", 1000)
    assert st.reason == "fault"
    idx, rip = s.ctx.index, s.ctx.rip
    assert idx < 1000
    assert "mm will: map zero page" in views.stop_text(s, st)
    out = run_cmd(s, "stepi")
    assert f"fault at #{idx} handled: zero-page" in out
    assert s.ctx.index == idx + 1                     # handled, then the instruction ran
    assert s.pending() is None


def test_retry_policy_under_persistent_oom_refaults_at_the_same_rip():
    s = session(injections=["drop@2:0"], droppable_oom="retry")
    s.resume("cont")                                  # read fault: zero page
    run_cmd(s, "stepi")
    st = s.resume("cont")                             # the write
    assert st.reason == "fault"
    idx, rip = s.ctx.index, s.ctx.rip
    run_cmd(s, "inject oom")
    assert "retry (refault)" in views.fault_stop(s)
    out = run_cmd(s, "stepi")
    assert "handled: retry-oom" in out
    assert s.ctx.index == idx and s.ctx.rip == rip and s.pending() is not None   # faulted again
    out = run_cmd(s, "policy skip")
    assert "mm will now: COW copy: OOM on droppable -> skip instruction" in out
    out = run_cmd(s, "stepi")
    assert re.search(r"handled: skip len=\d+", out) and s.ctx.index == idx + 1
    faults = run_cmd(s, "faults")
    assert "retry-oom" in faults and "skip len=" in faults


def test_fstep_then_stepi_and_fault_views():
    s = session(injections=["drop@2:0"])
    with pytest.raises(UsageError):
        run_cmd(s, "fstep")                            # nothing pending yet
    with pytest.raises(UsageError):
        run_cmd(s, "fault")
    s.resume("cont")
    idx = s.ctx.index
    first = run_cmd(s, "fstep")
    assert "handling fault" in first and "stage 1/" in first
    mid = run_cmd(s, "fault")
    assert "stage 1/" in mid and "stage 2/" not in mid and "more stage(s) to walk" in mid
    run_cmd(s, "stepi")                                    # abandons the walk, runs on
    assert s.ctx.index == idx + 1
    done = run_cmd(s, "fault")
    assert "handled: zero-page" in done and "stage 2/" in done and "to walk" not in done


def test_faultstop_off_runs_to_the_end_reporting_handled_faults():
    s = session(injections=["drop@2:0"])
    assert "off" in run_cmd(s, "faultstop off")
    st = s.resume("cont")
    assert st.reason == "done" and s.ctx.result.ret == 256
    text = views.stop_text(s, st)
    assert "handled: zero-page" in text and "syscall at #" in text
    assert "call 2 ended: getrandom(256) -> 256  outcome=returned" in text
    assert s.resume("step").reason == "done"          # nothing more to run


def test_interrupt_stops_a_long_run():
    s = session(injections=["drop@2:0", "oom@2:0"], droppable_oom="retry", livelock_limit=10_000_000)
    s.faultstop = False
    polls = []
    st = s.resume("cont", poll=lambda: polls.append(1) or len(polls) >= 2)
    assert st.reason == "interrupt" and not s.ctx.done
    assert s.ctx.result.faults[-1].decision == "retry-oom"


def test_register_write_moves_the_call():
    s = session(injections=["drop@2:0"])
    s.resume("cont")
    assert s.pending() is not None
    rip = s.ctx.rip
    s.set_register("rip", s.func)                      # gdb: set $pc = ...
    assert s.ctx.rip == s.func and s.pending() is None
    s.set_register("rax", 0x1234)
    assert s.m.reg("rax") == 0x1234
    st = s.resume("cont")
    assert st.reason == "fault" and s.ctx.rip == rip


def test_examine_and_expressions():
    s = session()
    st = s.caller.states[0]
    assert s.eval_addr("state") == st
    assert s.eval_addr("state+0x89") == st + 0x89
    assert s.eval_addr("$rsp - 8") == s.m.reg("rsp") - 8
    assert s.eval_addr("*__vdso_getrandom+4") == s.func + 4
    out = run_cmd(s, "x/4xb state+0x80")
    assert out.startswith(f"{st + 0x80:#x} <state+0x80>:")
    assert len(out.split("\t")) == 5
    assert "=>" in run_cmd(s, "x/2i $pc")
    assert run_cmd(s, "x/2dg $rsp").count("\t") == 2
    for bad in ("x/4xb nosuch", "x/q 0", "x/4xb 0x10", "break +", "until"):
        with pytest.raises(UsageError):
            run_cmd(s, bad)
    with pytest.raises(UsageError):
        run_cmd(s, "continue", monitor=True)           # execution is gdb's job under monitor


def test_memory_budget_and_pages_views():
    s = session(injections=["drop@2:0"])
    assert "4096 pages" in run_cmd(s, "memory")
    assert "20 pages" in run_cmd(s, "memory 20")
    assert s.kernel.phys.memory_pages == 20
    pages = run_cmd(s, "pages state")
    assert "dropped" in pages
    vmas = run_cmd(s, "vmas")
    assert "[vdso]" in vmas and "<- droppable" in vmas
    run_cmd(s, "faultstop off")
    s.resume("cont")
    assert "present(rw)" in run_cmd(s, "pages state")
    assert "instructions" in run_cmd(s, "cycles")
    assert len(run_cmd(s, "trace 4").splitlines()) == 4


def test_a_skip_that_lands_on_a_breakpoint_stops_there():
    s = session(injections=["drop@2:0"])
    s.resume("cont")
    run_cmd(s, "stepi")                                # the read: zero page
    s.resume("cont")                                  # the write fault
    rip = s.ctx.rip
    length = s.insn_at(rip).size
    run_cmd(s, f"break {rip + length:#x}")
    run_cmd(s, "inject oom:1")
    st = s.resume("cont")
    assert st.reason == "breakpoint" and st.breakpoint == 1
    assert s.ctx.rip == rip + length
    assert "handled: skip" in views.stop_text(s, st)


def test_rip_register_follows_skips_and_syscalls():
    """gdb and `regs` read Unicorn's RIP: it must be the architectural rip after
    a skip (rip += length) and after stepping over a syscall."""
    s = session(injections=["drop@2:0"])
    s.resume("cont")
    run_cmd(s, "stepi")
    s.resume("cont")                                  # the write fault
    rip = s.ctx.rip
    length = s.insn_at(rip).size
    run_cmd(s, "inject oom:1")
    run_cmd(s, "stepi")                                # skip
    assert s.ctx.rip == rip + length and s.m.reg("rip") == rip + length
    assert f"rip  {rip + length:#018x}" in run_cmd(s, "regs")
    # step onto the syscall, then over it
    while not s.ctx.done and s.insn_at(s.ctx.rip).mnemonic != "syscall":
        st = s.resume("step", 1)
        if st.reason == "fault":
            run_cmd(s, "stepi")
    sys_rip = s.ctx.rip
    s.resume("step", 1)
    assert s.ctx.rip == sys_rip + 2 and s.m.reg("rip") == sys_rip + 2
