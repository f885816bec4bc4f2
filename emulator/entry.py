"""The run loop: let the CPU run, and turn each stop into what the kernel does.

This is the emulator's arch/x86/entry: Unicorn runs the task's code until it
stops; a stop on an invalid access goes to the page-fault entry
(emulator/fault.py), a `syscall` to the syscall layer (emulator/syscalls.py),
a due injection to emulator/inject.py; an instruction the CPU refuses becomes
the signal Linux delivers for it.  Retired instructions and their cycles are
counted from the native block hook's record of which blocks ran.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from unicorn import UC_ERR_READ_PROT, UC_ERR_WRITE_PROT, UcError
from unicorn import x86_const as X

from emulator import blockhook, fault, fixups, inject, syscalls
from emulator.errors import EmulationError, UnfaithfulInstruction
from emulator.instrument import refusal
from emulator.umip import fixup_umip_exception
from emulator.kernel import SENTINEL_PAGE
from emulator.records import CallContext, CallResult, PendingFault
from emulator.trace import TraceEvent
from emulator.traps import X86_TRAP_BP, X86_TRAP_GP, X86_TRAP_OF, X86_TRAP_UD, signal_for_trap
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
        run_until(m, ctx, target)


def _continue_child(parent: "Task", ctx: CallContext, child: "Task") -> None:
    """A fork injected mid-call: the child resumes at this boundary with its own
    (wiped) memory and runs the rest of the call; its result hangs off the parent's."""
    res = CallResult(size=ctx.result.size, process=child.name)
    cctx = CallContext(result=res, rip=ctx.rip, budget=ctx.budget, index=ctx.index, rep_open=ctx.rep_open,
                       injections=[i for i in ctx.injections if i.kind != "fork"])
    child.sync()
    child.trace.begin_call(cctx)        # the child's events on its own clock (emulator/trace.py)
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


def run_until(m: "Task", ctx: CallContext, target: int) -> None:
    """One step of the loop: run toward instruction index `target` and handle
    why the CPU stopped.  The native block hook stops before a block that
    would overrun the target; when the target lies inside that block, one more
    run with an exit at the target's address reaches it exactly (the block is
    dropped from Unicorn's cache first: exits are decided when a block is
    translated)."""
    reason = _run_once(m, ctx, target - ctx.index, m.readahead_exit)
    if ctx.done or ctx.pending_fault is not None or reason is None:
        return
    rec = m.recorder
    if reason == blockhook.UNKNOWN:
        learn_block(m, ctx.rip, rec.unknown_size)
        return
    if reason != blockhook.BUDGET:
        return
    left = target - ctx.index
    known = rec.lookup(ctx.rip)
    if left <= 0 or known is None or left >= known[1]:
        return
    start, size = ctx.rip, known[0]
    stop = m.blocks.get(start | size << 48).insn_addrs[left]
    rec.override(start, stop - start, left)
    m.uc.ctl_remove_cache(start, start + size)
    try:
        _run_once(m, ctx, left, stop)
    finally:
        rec.restore(start)


def learn_block(m: "Task", addr: int, size: int) -> None:
    """First sight of a translated block, before it runs: analyse it, refuse
    what Unicorn cannot run faithfully, hook the instructions it gets wrong,
    and tell the native hook how many instructions it holds."""
    info = m.blocks.get(addr | size << 48)
    why = refusal(m.read(addr, size), addr)
    if why is not None:
        raise UnfaithfulInstruction(f"{why}, refused before it runs")
    m.instrument(addr, size)
    rep_tail = info.insn_addrs[-1] if info.rep_tail else 0
    m.recorder.learn(addr, size, info.ninsns, rep_tail, rep_only=info.rep_tail and info.ninsns == 1)


def _run_once(m: "Task", ctx: CallContext, remaining: int, exit_at: int | None) -> int | None:
    """One emu_start from ctx.rip with `remaining` instructions of budget (and
    an exit at exit_at, if any); then carry out what the stop means.  Returns
    the native hook's stop reason, or None when the stop was handled here."""
    uc = m.uc
    m.recorder.reset(max(0, remaining), ctx.rep_open or 0)
    m.fault = None
    m.fault_cpu = None
    m.syscall = None
    m.exception = None
    m.hook_error = None
    m.mmu.hook_error = None
    m.mmu.split_read = None
    m.mmu.journal.clear()
    m.readahead_exit = None
    err = None
    try:
        if exit_at is not None:
            # With exits enabled Unicorn ignores `until`: the sentinel joins them.
            uc.ctl_exits_enabled(True)
            uc.ctl_set_exits([SENTINEL_PAGE, exit_at])
        uc.emu_start(ctx.rip, SENTINEL_PAGE)
    except UcError as e:
        err = e
    finally:
        if exit_at is not None:
            uc.ctl_exits_enabled(False)
    hook_error = m.hook_error or m.mmu.hook_error
    if hook_error is not None:
        raise EmulationError(f"error inside a Unicorn hook: {type(hook_error).__name__}: {hook_error}") \
            from hook_error
    if m.mmu.split_read is not None and (m.fault is None or m.fault_cpu[0] == m.mmu.split_read[1]):
        # A load into a sentinel page (emulator/mmu.py): the CPU faults there.
        addr, rip, rflags, cpu = m.mmu.split_read
        uc.context_restore(cpu)
        uc.reg_write(X.UC_X86_REG_RFLAGS, m.saved_flags.get(rip, rflags))
        m.fault, m.fault_cpu = PendingFault("read", addr, 1), None
        err = err or UcError(UC_ERR_READ_PROT)
    if err is None and m.fault is not None:
        # A fault a hook found before the access (emulator/fixups.py): the CPU
        # checks a whole operand that Unicorn stores only in part.
        err = UcError(UC_ERR_WRITE_PROT)
    pf = m.fault
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
            # A hooked instruction faulted: its hook saw the true flags
            # (rcl/rcr also update CF/OF before the store faults).
            uc.reg_write(X.UC_X86_REG_RFLAGS, m.saved_flags[hook_rip])
    if m.syscall is not None:
        stop_rip = m.syscall.rip + 2
    else:
        stop_rip = m.regs64.read(X.UC_X86_REG_RIP)
    if m.pending_fixup is not None:
        fixups.settle(m, stop_rip)      # stopped right after an instruction Unicorn gets wrong
    reason = m.recorder.reason
    if err is not None and pf is not None and pf.access == "exec" and pf.address != stop_rip \
            and exit_at is None:
        # Read-ahead: Unicorn translates past the end of a page before the
        # instruction ending there has run; a fetch fault on the next page at
        # translation time is not the CPU's fault yet.  Rerun with an exit at
        # the fault address: the instructions before it execute, and a real
        # fetch there faults with rip == address.
        account(m, ctx, stop_rip, partial=False)
        ctx.rip = stop_rip
        m.readahead_exit = pf.address
        return None
    before = ctx.index
    # Unless the native hook stopped us at a block boundary, the stop came
    # from inside the last block (a fault, an exception, a hook that stopped
    # the CPU before its instruction: a breakpoint): it retired only the
    # instructions before stop_rip.
    stopped_in_block = reason == blockhook.NONE or err is not None or m.exception is not None
    account(m, ctx, stop_rip, partial=stopped_in_block)
    if ctx.index != before:
        ctx.refaults = 0
        ctx.last_fault_key = None
    ctx.rip = stop_rip
    # A fault comes first: after a store done in a QEMU helper faults, the
    # rest of its block still runs (and may trap) before Unicorn stops; the
    # state was put back to the faulting instruction above.
    if m.exception is not None and not (err is not None and pf is not None):
        exc = m.exception
        if exc.rip in m.saved_flags and exc.rip == stop_rip:
            uc.reg_write(X.UC_X86_REG_RFLAGS, m.saved_flags[exc.rip])
        if exc.rip != stop_rip:                 # a trap reported past its instruction
            uc.reg_write(X.UC_X86_REG_RIP, exc.rip)
            if exc.rip > stop_rip:
                ctx.index += 1                  # ... which retired
        cpu_trap(m, ctx, exc.trapno, exc.rip, exc.why)
        return None
    if err is not None:
        if pf is None:
            cpu_exception(m, ctx, err, stop_rip)
            return None
        if pf.access == "write":
            # Precise exceptions: roll back what Unicorn committed of a split
            # store before anyone (handler, stepper, gdb) looks at memory.
            pf.restored = m.undo_partial_store(stop_rip)
        if ctx.stop_on_fault:
            if pf.access == "write" and fault.resolve_snapshot_cow(m, pf.address, True):
                return None             # a snapshot's write-protection: not a fault to stop at
            ctx.pending_fault = (pf, stop_rip)
            return None
        fault.do_user_addr_fault(m, ctx, pf, stop_rip)
        return None
    if m.syscall is not None:
        syscalls.do_syscall(m, ctx, m.syscall.rip)
        return None
    if stop_rip == SENTINEL_PAGE:
        ctx.result.ret = m.regs64.read(X.UC_X86_REG_RAX)
        if ctx.result.ret >= 1 << 63:
            ctx.result.ret -= 1 << 64
        m.finish(ctx, "returned")
        return None
    return reason


def cpu_trap(m: "Task", ctx: CallContext, trapno: int, rip: int, why: str = "") -> None:
    """A CPU exception in user mode: the signal Linux delivers for it (after
    the kernel's own fixups: a UMIP-covered instruction is emulated)."""
    if trapno == X86_TRAP_GP and fixup_umip_exception(m, ctx, rip):
        return
    code = m.read(rip, 15)
    ins = decode_one(code, rip)
    # `int n` reports rip past the instruction with vector n; the CPU raises
    # #GP there (Linux's IDT gates have DPL 0 for every n but 3 and 4, which
    # trap with rip past the instruction: SIGTRAP, and SIGSEGV for #OF).
    prev = decode_one(m.read(rip - 2, 2), rip - 2) if rip >= 2 else None
    if trapno not in (X86_TRAP_BP, X86_TRAP_OF) and prev is not None and prev.mnemonic == "int" \
            and prev.size == 2 and int(prev.op_str, 0) == trapno:
        rip = rip - 2
        ins = prev
        trapno = X86_TRAP_GP
        why = why or "int n: gate not accessible from user mode"
    ctx.rip = rip
    text = ins.text if ins else code[:4].hex()
    sig = signal_for_trap(trapno, rip, why or text)
    _deliver(m, ctx, sig, text)


def cpu_exception(m: "Task", ctx: CallContext, err: UcError, rip: int) -> None:
    """Unicorn gave up on an instruction: #UD on the CPU (invalid opcode)."""
    code = m.read(rip, 15)
    ins = decode_one(code, rip)
    text = ins.text if ins else code[:4].hex()
    sig = signal_for_trap(X86_TRAP_UD, rip, f"invalid opcode ({err})")
    _deliver(m, ctx, sig, text)


def _deliver(m: "Task", ctx: CallContext, sig, text: str) -> None:
    m.trace.emit(TraceEvent(ctx.index, sig.rip, "signal", {"signal": sig.signal, "si_code": sig.code_name,
                                                            "insn": text, "why": sig.why}))
    m.force_sig(ctx, sig, f"{sig.signal} ({sig.code_name}) at {sig.rip:#x} [{text}]: {sig.why}")


def account(m: "Task", ctx: CallContext, stop_rip: int, partial: bool) -> None:
    """Turn the recorded blocks into retired instructions and cycles.  The last
    block ran only up to stop_rip when the run stopped inside it (a fault, a
    CPU exception); a stop at a block boundary means every recorded block ran."""
    entries = m.recorder.entries()
    if not entries:
        return
    # Blocks are charged each after the two before it, loops whole and straight
    # code by the busier of its front and back end over the call (emulator/
    # cycles/sequence.py, context.py); a run seen before costs what it cost
    # then.  What carries from run to run is the call's, kept with its context
    # (a snapshot copies it), so where the run loop stops changes nothing.
    # Rep-string continuations go in order.
    seq = m.blocks.seq
    st = ctx.cycle_state
    if st is None:
        st = ctx.cycle_state = seq.new_call()
    r = seq.account(entries, stop_rip, partial, st)
    if r is None:
        return _account_in_order(m, ctx, entries, stop_rip, partial)
    ctx.index += r[0]
    ctx.rep_open = None
    ctx.cycles += r[1]
    ctx.result.instructions = ctx.index


def _account_in_order(m: "Task", ctx: CallContext, entries: list[int], stop_rip: int, partial: bool) -> None:
    """Blocks with a rep-string tail: each further element re-enters a
    one-instruction block and is the same architectural instruction."""
    blocks = m.blocks
    last = len(entries) - 1
    idx = ctx.index
    cyc = 0.0
    rep_open = ctx.rep_open
    for i, e in enumerate(entries):
        info = blocks.get(e)
        if rep_open is not None and info.addr == rep_open and info.ninsns == 1 and info.rep_tail:
            # another iteration of a rep string insn that is already counted
            cyc += info.rep_element_cost or blocks.rep_element_cost
            continue
        k = info.executed_before(stop_rip) if (i == last and partial) else info.ninsns
        idx += k
        cyc += info.prefix_cost[k]
        rep_open = info.insn_addrs[-1] if (info.rep_tail and k == info.ninsns) else None
    st = ctx.cycle_state
    if st is not None:
        # Charged block by block: the next run's first block comes after this one.
        st.prev, st.done, st.cut = entries[-1], 0, None
    ctx.index = idx
    ctx.rep_open = rep_open
    ctx.cycles += cyc
    ctx.result.instructions = idx
