"""Watchpoints in the stepping engine: what stops them and with which reason.

- the Unicorn 2.1.4 behaviour watch.py is built on (a memory hook that stops
  the CPU leaves it *at* the instruction, registers as before it, the store
  committed), measured on bare Unicorn;
- a user store (old/new values), a store that faults, a store the OOM
  handler skips (the new stop reason), a drop that zeroes the watched bytes
  ("watched memory dropped"), the kernel's copy_to_user into them, a read
  watchpoint; each at the index and rip the trace confirms;
- no per-instruction hook: the hooks are ranged and exist only while a
  watchpoint does.
"""
from __future__ import annotations

import pytest

from emulator.debug.commands import execute
from emulator.errors import UsageError


def session(image="builtin", **kw):
    from emulator.debug.session import Session
    from emulator.run import RunConfig
    from vdso.loader import load_image
    kw.setdefault("sizes", [256])
    kw.setdefault("calls", 2)
    return Session(RunConfig(image=load_image(image), **kw))


# ----------------------------------------------------------------------------- Unicorn
@pytest.mark.parametrize("asm,regs,check", [
    ("push rax", {"RSP": 0x2108, "RAX": 0x55}, lambda r: r["RSP"] == 0x2108),
    ("add qword ptr [0x2100], rax", {"RAX": 2}, lambda r: True),
    ("rep stosq", {"RDI": 0x20F0, "RCX": 5, "RAX": 0x55}, lambda r: r["RCX"] == 5 and r["RDI"] == 0x20F0),
    ("xchg qword ptr [0x2100], rax", {"RAX": 0x55}, lambda r: r["RAX"] == 0x55),
])
def test_unicorn_stops_at_the_store_with_registers_before_it_and_memory_after(asm, regs, check):
    """What WatchSet.undo_journal relies on: re-running the instruction from
    there would apply it twice, so the journalled bytes are put back first."""
    from keystone import KS_ARCH_X86, KS_MODE_64, Ks
    from unicorn import UC_ARCH_X86, UC_HOOK_MEM_WRITE, UC_MODE_64, Uc
    from unicorn import x86_const as X
    code = bytes(Ks(KS_ARCH_X86, KS_MODE_64).asm(asm + "; inc rbx; hlt", 0x1000)[0])
    uc = Uc(UC_ARCH_X86, UC_MODE_64)
    uc.mem_map(0x1000, 0x1000)
    uc.mem_map(0x2000, 0x1000)
    uc.mem_write(0x1000, code)
    for r, v in regs.items():
        uc.reg_write(getattr(X, f"UC_X86_REG_{r}"), v)
    seen = []

    def hook(uc, access, address, size, value, _):
        seen.append(bytes(uc.mem_read(address, size)))
        uc.emu_stop()
    uc.hook_add(UC_HOOK_MEM_WRITE, hook, None, 0x2100 - 63, 0x2100 + 7)
    uc.emu_start(0x1000, 0x1000 + len(code), count=100)
    after = {r: uc.reg_read(getattr(X, f"UC_X86_REG_{r}")) for r in ("RIP", "RSP", "RAX", "RCX", "RDI", "RBX")}
    assert seen and after["RIP"] == 0x1000 and after["RBX"] == 0        # stopped at the store, nothing after
    assert check(after)                                                  # its registers not yet written
    assert bytes(uc.mem_read(0x2100 if asm != "rep stosq" else 0x20F0, 8)) != seen[0]   # ... but the store landed


# ----------------------------------------------------------------------------- reasons
def test_a_user_store_stops_after_it_with_old_and_new_value():
    s = session()
    out = execute(s, "watch state.in_use")
    assert "value 00" in out or "value 01" in out
    st = s.resume("cont")
    assert st.reason == "watch" and st.watch.why == "write"
    assert (st.watch.old, st.watch.new) == (b"\0", b"\1")            # the call takes the state
    writer = s.insn_at(st.watch.rip)
    assert writer.mnemonic == "mov" and "0x89" in writer.op_str
    assert s.ctx.rip == st.watch.rip + writer.size                       # stopped after the store
    assert s.m.read(s.caller.states[0] + 137, 1) == b"\1"
    st = s.resume("cont")
    assert st.watch is not None and (st.watch.old, st.watch.new) == (b"\1", b"\0")    # and gives it back
    assert s.resume("cont").reason == "done"
    assert s.ctx.result.outcome == "returned" and s.ctx.result.ret == 256


def test_a_faulting_store_then_its_skip_are_stop_reasons():
    """The state page dropped at instruction 0 and one allocation failing at the
    in_use store: the store faults (first stop) and is skipped (second stop,
    in_use stays 0 while the call uses the state)."""
    s = session(injections=["drop@2:0", "oom:1@2:16"])
    s.faultstop = False
    execute(s, "watch state.in_use")
    st = s.resume("cont")
    assert st.reason == "watch" and st.watch.why == "store-faulted"
    assert s.pending() is not None and "skip instruction" in st.watch.detail
    fault_rip = s.ctx.rip
    st = s.resume("cont")
    assert st.watch.why == "store-skipped" and st.watch.rip == fault_rip
    assert s.ctx.rip == fault_rip + s.insn_at(fault_rip).size
    assert st.watch.new == b"\0" and s.ctx.result.faults[-1].decision == "skip"
    text = execute(s, "info watchpoints")
    assert "hit 2 time(s)" in text


def test_a_drop_that_zeroes_watched_memory_stops_where_it_happens():
    s = session(injections=["drop@2:100"])
    s.faultstop = False
    execute(s, "watch state.generation")
    st = s.resume("cont")
    assert st.watch.why == "dropped" and s.ctx.index == 100
    assert st.watch.old != bytes(8) and st.watch.new == bytes(8)
    assert "inject drop at #100" in st.watch.detail
    assert s.m.mm.pte(s.caller.states[0]).frame is None


def test_the_kernels_copy_to_user_stops_right_after_the_syscall():
    """After the drop the generation reads 0 and the vDSO reseeds: the
    getrandom syscall writes the new key into the state."""
    s = session(injections=["drop@2:100"])
    s.faultstop = False
    execute(s, "watch state.key 4")
    while True:
        st = s.resume("cont")
        assert st.reason == "watch", st.reason
        if st.watch.why == "kernel-write":
            break
    prev = s.insn_at(st.watch.rip)
    assert prev.mnemonic == "syscall" and s.ctx.rip == st.watch.rip + 2
    rec = s.ctx.result.syscalls[-1]
    assert rec.name == "getrandom" and rec.args[0] == s.caller.states[0] + 96
    assert st.watch.new == rec.data[:4]


def test_a_read_watchpoint_stops_after_the_load():
    s = session()
    execute(s, "rwatch state.generation")
    st = s.resume("cont")
    assert st.watch.why == "read"
    ins = s.insn_at(st.watch.rip)
    assert "0x80" in ins.op_str and s.ctx.rip == st.watch.rip + ins.size


def test_watch_arguments_and_lists():
    s = session()
    for bad in ("watch state.nosuch", "watch vdso_rng_data.x", "watch 0x10 0", "watch nosuch", "rwatch"):
        if bad == "rwatch":
            assert execute(s, bad) == "no watchpoints"
            continue
        with pytest.raises(UsageError):
            execute(s, bad)
    out = execute(s, "watch state")
    assert "144 byte(s)" in out
    execute(s, "break __arch_chacha20_blocks_nostack")
    assert execute(s, "info breakpoints").startswith("2 ")          # one numbering, as in gdb
    assert "deleted watchpoint 1" in execute(s, "delete 1")
    assert execute(s, "info watchpoints") == "no watchpoints"
    assert not s._syscall_insns or all(a in s._hooks for a in s._syscall_insns)   # faultstop on
    s.faultstop = False
    assert not any(a in s._hooks for a in s._syscall_insns)        # nothing left behind
