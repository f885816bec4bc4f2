"""The run loop: let the CPU run, and turn each stop into what the kernel does.

This is the emulator's arch/x86/entry: Unicorn runs the task's code until it
stops; a stop on an invalid access goes to the page-fault entry
(emulator/fault.py), a `syscall` to the syscall layer (emulator/syscalls.py),
a due injection to emulator/inject.py; an instruction the CPU refuses becomes
the signal Linux delivers for it.  Retired instructions and their cycles are
counted from the native block hook's record of which blocks ran.
"""
from __future__ import annotations

from collections import Counter
from typing import TYPE_CHECKING

from unicorn import UcError
from unicorn import x86_const as X

from emulator import fault, inject, syscalls
from emulator.errors import EmulationError, UnfaithfulInstruction
from emulator.kernel import SENTINEL_PAGE
from emulator.records import CallContext, CallResult
from emulator.task import CHUNK
from emulator.trace import TraceEvent
from vdso.insn import decode_one

if TYPE_CHECKING:
    from emulator.task import Task


def run(m: "Task", ctx: CallContext, stop_at: int | None = None) -> None:
    """Run until the call ends, or until instruction index stop_at is reached."""
    while not ctx.done:
        if ctx.pending_fault is not None or ctx.stop_requested:
            return
        while ctx.injections and ctx.injections[0].at <= ctx.index:
            child = inject.apply(m, ctx, ctx.injections.pop(0))
            if child is not None:
                _continue_child(m, ctx, child)
            if ctx.done:
                return
        if stop_at is not None and ctx.index >= stop_at:
            return
        if ctx.index >= ctx.budget:
            m.finish(ctx, "budget", f"instruction budget of {ctx.budget} exhausted at rip={ctx.rip:#x}")
            return
        target = ctx.budget
        if ctx.injections:
            target = min(target, ctx.injections[0].at)
        if stop_at is not None:
            target = min(target, stop_at)
        run_chunk(m, ctx, max(1, min(CHUNK, target - ctx.index)))


def _continue_child(parent: "Task", ctx: CallContext, child: "Task") -> None:
    """A fork injected mid-call: the child resumes at this boundary with its own
    (wiped) memory and runs the rest of the call; its result hangs off the parent's."""
    res = CallResult(size=ctx.result.size, process=child.name)
    cctx = CallContext(result=res, rip=ctx.rip, budget=ctx.budget, index=ctx.index, rep_open=ctx.rep_open,
                       injections=[i for i in ctx.injections if i.kind != "fork"])
    child.sync()
    run(child, cctx)
    ctx.result.children.append(res)
    child.last_ctx = cctx


def handle_pending_fault(m: "Task", ctx: CallContext) -> None:
    """Carry out the fault the run stopped at (stop_on_fault)."""
    if ctx.pending_fault is None:
        return
    pf, rip = ctx.pending_fault
    ctx.pending_fault = None
    fault.do_user_addr_fault(m, ctx, pf, rip)


def run_chunk(m: "Task", ctx: CallContext, chunk: int) -> None:
    uc = m.uc
    m.recorder.reset()
    m.fault = None
    m.fault_cpu = None
    m.syscall = None
    m.hook_error = None
    m.mmu.hook_error = None
    m.mmu.journal.clear()
    err = None
    exit_at = m.readahead_exit
    m.readahead_exit = None
    try:
        if exit_at is not None:
            # Stop translation at the page end (see the read-ahead note below).
            uc.ctl_exits_enabled(True)
            uc.ctl_set_exits([SENTINEL_PAGE, exit_at])
        uc.emu_start(ctx.rip, SENTINEL_PAGE, count=chunk)
    except UcError as e:
        err = e
    finally:
        if exit_at is not None:
            uc.ctl_exits_enabled(False)
    hook_error = m.hook_error or m.mmu.hook_error
    if hook_error is not None:
        raise EmulationError(f"error inside a Unicorn hook: {type(hook_error).__name__}: {hook_error}") \
            from hook_error
    if err is not None and m.fault_cpu is not None:
        hook_rip, hook_flags, hook_ctx = m.fault_cpu
        if uc.reg_read(X.UC_X86_REG_RIP) != hook_rip:
            # Precise exceptions for helper-implemented stores (fxsave,
            # cmpxchg8b/16b, maskmovdqu, x87 stores...): Unicorn leaves rip past
            # the instruction and has updated registers; the CPU state at the
            # faulting access is right.  (The saved context's lazy flags are
            # stale, so RFLAGS comes from reg_read in the hook.)
            uc.context_restore(hook_ctx)
            uc.reg_write(X.UC_X86_REG_RFLAGS, hook_flags)
        if hook_rip in m.saved_flags:
            # rcl/rcr on memory update CF/OF before the store faults.
            uc.reg_write(X.UC_X86_REG_RFLAGS, m.saved_flags[hook_rip])
    if m.syscall is not None:
        stop_rip = m.syscall.rip + 2
    else:
        stop_rip = uc.reg_read(X.UC_X86_REG_RIP)
    pf = m.fault
    if err is not None and pf is not None and pf.access == "exec" and pf.address != stop_rip \
            and exit_at is None:
        # Read-ahead: Unicorn translates past the end of a page before the
        # instruction ending there has run; a fetch fault on the next page at
        # translation time is not the CPU's fault yet.  Rerun with an exit at
        # the fault address: the instructions before it execute, and a real
        # fetch there faults with rip == address.
        account(m, ctx, stop_rip)
        ctx.rip = stop_rip
        m.readahead_exit = pf.address
        return
    before = ctx.index
    account(m, ctx, stop_rip)
    if ctx.index != before:
        ctx.refaults = 0
        ctx.last_fault_key = None
    if err is not None:
        if pf is None:
            cpu_exception(m, ctx, err, stop_rip)
            return
        ctx.rip = stop_rip
        if pf.access == "write":
            # Precise exceptions: roll back what Unicorn committed of a split
            # store before anyone (handler, stepper, gdb) looks at memory.
            pf.restored = m.undo_partial_store(stop_rip)
        if ctx.stop_on_fault:
            ctx.pending_fault = (pf, stop_rip)
            return
        fault.do_user_addr_fault(m, ctx, pf, stop_rip)
        return
    if m.syscall is not None:
        ctx.rip = stop_rip
        syscalls.do_syscall(m, ctx, m.syscall.rip)
        return
    ctx.rip = stop_rip
    if stop_rip == SENTINEL_PAGE:
        ctx.result.ret = uc.reg_read(X.UC_X86_REG_RAX)
        if ctx.result.ret >= 1 << 63:
            ctx.result.ret -= 1 << 64
        m.finish(ctx, "returned")


def cpu_exception(m: "Task", ctx: CallContext, err: UcError, rip: int) -> None:
    """An instruction the CPU refused (Unicorn: invalid instruction)."""
    code = m.read(rip, 15)
    ins = decode_one(code, rip)
    text = ins.text if ins else code[:4].hex()
    m.trace.emit(TraceEvent(ctx.index, rip, "signal", {"signal": "SIGILL", "insn": text, "unicorn": str(err)}))
    m.finish(ctx, "signal", f"SIGILL at {rip:#x} [{text}]: {err}")


def account(m: "Task", ctx: CallContext, stop_rip: int) -> None:
    """Turn the recorded blocks into retired instructions and cycles."""
    entries = m.recorder.entries()
    if not entries:
        return
    blocks = m.blocks
    # Fast path: order only matters for rep-string continuations and for the
    # last (possibly partial) block, so count identical entries in C and
    # multiply by their cached per-block figures.
    counts = Counter(entries)
    infos = {e: blocks.get(e) for e in counts}
    if not any(i.rep_tail or i.unfaithful for i in infos.values()):
        last = infos[entries[-1]]
        ninsn = 0
        cyc = 0.0
        for e, c in counts.items():
            info = infos[e]
            ninsn += c * info.ninsns
            cyc += c * info.prefix_cost[-1]
        k = last.executed_before(stop_rip)
        ninsn -= last.ninsns - k
        cyc -= last.prefix_cost[-1] - last.prefix_cost[k]
        ctx.index += ninsn
        ctx.rep_open = None
        ctx.cycles += cyc
        ctx.result.instructions = ctx.index
        return
    last = len(entries) - 1
    idx = ctx.index
    cyc = 0.0
    rep_open = ctx.rep_open
    for i, e in enumerate(entries):
        info = blocks.get(e)
        if info.unfaithful:
            raise UnfaithfulInstruction(f"{info.unfaithful} at {info.addr:#x} reached at run time")
        if rep_open is not None and info.addr == rep_open and info.ninsns == 1 and info.rep_tail:
            # another iteration of a rep string insn that is already counted
            cyc += info.rep_element_cost or blocks.rep_element_cost
            continue
        k = info.executed_before(stop_rip) if i == last else info.ninsns
        idx += k
        cyc += info.prefix_cost[k]
        rep_open = info.insn_addrs[-1] if (info.rep_tail and k == info.ninsns) else None
    ctx.index = idx
    ctx.rep_open = rep_open
    ctx.cycles += cyc
    ctx.result.instructions = idx
