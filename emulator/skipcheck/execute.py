"""One skipcheck run: an instruction in one placement under one policy, and
the checks on its outcome.

Under `skip`: exactly one skip by the instruction's length (new rip = rip +
length), no destination byte changed, registers and flags unchanged except
the rep progress, and the next instruction ran (the `layout` marker; after
a page-end skip, the fetch at the page end faults instead).  Under `retry`:
the instruction refaults until the Machine reports a livelock, with the same
memory and register checks and the marker not run.  A 16-byte instruction
must be refused by the CPU (Unicorn raises an exception; the handler never
skips 16 bytes).
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.errors import FaultpathError, UnfaithfulInstruction
from emulator.insn_length import skip_length
from emulator.kernel import SENTINEL_PAGE
from emulator.machine import Machine
from emulator.records import CallContext, CallResult
from emulator.skipcheck.instructions import Instruction
from emulator.skipcheck.layout import MARKER, MARKER_LEN, code_page, data_pattern, regions
from emulator.skipcheck.oom_machine import cpu_state, new_machine, set_cpu
from emulator.skipcheck.placements import Plan, plan_run
from mm.flags import PAGE_SIZE


@dataclass
class Run:
    """The outcome of one instruction in one placement under one policy."""
    instruction: str
    variant: str
    line: int
    placement: str
    policy: str
    status: str                   # pass | fail | n/a | refused | error
    detail: str = ""
    mnemonic: str = ""
    code: bytes = b""
    length: int = 0
    rip: int = 0
    new_rip: int | None = None
    skip_len: int | None = None
    skipped: bool = False
    refaulted: bool = False
    livelock: bool = False
    dest_unchanged: bool | None = None
    regs_unchanged: bool | None = None
    next_ran: bool | None = None
    readahead: bool = False       # hit "unicorn-readahead" (page-end; checked with the workaround)
    issue: str = ""               # an ISSUES key explaining a failure or a note
    faults: list[str] = field(default_factory=list)

    @property
    def ok(self) -> bool:
        """Passed: the expected skip (or refault) and nothing else changed;
        for a 16-byte instruction, refused."""
        return self.status in ("pass", "refused")

    @property
    def refused(self) -> bool:
        return self.status == "refused"

    def __str__(self) -> str:
        s = f"{self.instruction} @{self.placement} ({self.policy}): {self.status}"
        if self.status != "n/a":
            s += (f"; length {self.length}, skip_len {self.skip_len}, rip {self.rip:#x} -> "
                  f"{self.new_rip:#x}" if self.new_rip is not None else f"; length {self.length}")
        return s + (f"; {self.detail}" if self.detail else "")

    def as_dict(self) -> dict:
        d = {"instruction": self.instruction, "variant": self.variant, "line": self.line,
             "mnemonic": self.mnemonic, "placement": self.placement, "policy": self.policy,
             "status": self.status, "detail": self.detail}
        if self.status in ("n/a",):
            return d
        d.update({"bytes": self.code.hex(), "length": self.length, "rip": hex(self.rip),
                  "new_rip": None if self.new_rip is None else hex(self.new_rip),
                  "skip_len": self.skip_len, "skipped": self.skipped, "refaulted": self.refaulted,
                  "livelock": self.livelock, "dest_unchanged": self.dest_unchanged,
                  "regs_unchanged": self.regs_unchanged, "next_ran": self.next_ran,
                  "unicorn_readahead": self.readahead, "issue": self.issue or None,
                  "faults": self.faults})
        return d


def not_run(ins: Instruction, placement: str, policy: str, status: str, detail: str) -> Run:
    """A Run that never executed: "n/a" (``detail`` says why the placement
    does not apply) or "error"."""
    return Run(ins.name, ins.variant.name, ins.form.line, placement, policy, status, detail,
               code=ins.code, mnemonic=ins.info.mnemonic)


def _expected_memory(plan: Plan, before: dict[int, bytes], m_state: dict[str, object]) -> dict[int, bytes]:
    """Memory after the run: unchanged but for the rep elements done."""
    exp = dict(before)
    if plan.rep_done:
        info = plan.info
        n = plan.rep_done * info.width
        if info.mnemonic.startswith("stos"):
            val = (m_state["rax"] & ((1 << (8 * info.width)) - 1)).to_bytes(info.width, "little")
            data = val * plan.rep_done
        else:
            data = data_pattern(plan.rep_src, n)
        for start, blob in exp.items():
            if start <= plan.target < start + len(blob):
                off = plan.target - start
                exp[start] = blob[:off] + data + blob[off + n:]
    return exp


def _expected_regs(plan: Plan, before: dict[str, object], policy: str, page_end: bool,
                   refused: bool = False) -> dict[str, object]:
    exp = dict(before)
    info = plan.info
    if plan.rep_done:
        mask = 0xFFFF_FFFF if info.addr32 else (1 << 64) - 1
        n = plan.rep_done * info.width
        exp["rcx"] = (before["rcx"] - plan.rep_done) & mask
        exp["rdi"] = (before["rdi"] + n) & mask
        if info.mnemonic.startswith("movs"):
            exp["rsi"] = (before["rsi"] + n) & mask
    if policy == "skip" and plan.marker and not page_end and not refused:
        exp[plan.marker] = MARKER
    return exp


def _diff(a: dict, b: dict) -> list[str]:
    out = []
    for k in a:
        if a[k] != b.get(k):
            va, vb = a[k], b.get(k)
            fa = hex(va) if isinstance(va, int) else str(va)
            fb = hex(vb) if isinstance(vb, int) else str(vb)
            out.append(f"{k}: {fb} (want {fa})")
    return out


# Emulator issues skipcheck recognises, by key.  Runs name the key; the
# report explains each once.
ISSUES = {
    "unicorn-readahead": (
        "Unicorn 2.1.4 fetches the page after an instruction that ends exactly at a page end before "
        "running it: with that page unmapped (or PROT_NONE) the Machine sees an instruction-fetch fault "
        "at the page end and delivers SIGSEGV instead of running the instruction (reproduced with a bare "
        "Uc).  An exit at the page end (emu_start until=, or ctl_set_exits) avoids it; skipcheck notes "
        "the run and checks the skip again with such an exit."),
    "unicorn-helper-rip": (
        "Unicorn 2.1.4 leaves rip past an instruction whose store is done in a QEMU helper (fxsave, "
        "fnsave, fnstenv, fstp m80, fbstp, cmpxchg8b/16b, maskmovdqu/maskmovq) when the store faults, "
        "and the helper goes on (more pieces, register updates: cmpxchg8b/16b load rdx:rax).  The "
        "Machine takes rip after emu_start, so it decodes and skips the *next* instruction and keeps the "
        "partial pieces.  Inside the fault hook rip is still right: the Machine should take rip (and the "
        "registers) from the hook."),
    "unicorn-flags-before-store": (
        "Unicorn 2.1.4 computes rcl/rcr on memory in a helper that updates RFLAGS (CF, OF) before the "
        "store; when the store faults the flags stay changed (the CPU leaves them alone).  Under retry "
        "the rotate re-executes with the changed CF."),
    "unicorn-len16-access": (
        "For a 16-byte instruction whose last byte is an immediate fetched after the memory operand "
        "(bt*/bts imm8), Unicorn 2.1.4 (QEMU 5) performs the operand's load before raising the "
        "exception for the over-long instruction; the CPU refuses it before any access."),
}


def _readahead(ctx: CallContext, plan: Plan) -> bool:
    """The run ended in a fetch fault at the end of the instruction's page
    before the instruction did anything."""
    end = (plan.insn_addr | (PAGE_SIZE - 1)) + 1
    f = ctx.result.faults
    return (ctx.result.outcome == "signal" and len(f) >= 1 and f[0].access == "exec"
            and f[0].address == end and f[0].rip == plan.insn_addr)


def _start(plan: Plan, policy: str, page_end: bool, workaround: bool,
           m: Machine | None = None) -> tuple[Machine, CallContext, dict[int, bytes], dict[str, object]]:
    """A fresh Machine for ``plan`` (or ``m`` again, when nothing ran), run
    up to and including the instruction (and the marker)."""
    if m is None:
        m = new_machine(plan.layout, code_page(plan.insn_addr, plan.code, plan.marker), plan.insn_addr, policy)
    data = plan.layout[1]
    before_mem = {a: m.read(a, n) for a, n in regions(data)}
    set_cpu(m, plan.regs, plan.insn_addr, plan.fs_base, plan.gs_base)
    before = cpu_state(m)
    ctx = CallContext(result=CallResult(size=0, process=m.name), rip=plan.insn_addr, budget=10_000)
    if workaround:
        m.uc.ctl_flush_tb()
        m.uc.ctl_exits_enabled(True)
        m.uc.ctl_set_exits([SENTINEL_PAGE, (plan.insn_addr | (PAGE_SIZE - 1)) + 1])
    # Page-end: stop once the instruction retired (skipped).  Otherwise run to
    # the int3 after the marker (an instruction count would not do: the
    # Machine counts a rep that made progress and was then skipped twice).
    m.run(ctx, stop_at=1 if page_end else None)
    if workaround:
        m.uc.ctl_exits_enabled(False)
    return m, ctx, before_mem, before


def execute(ins: Instruction, placement: str, policy: str) -> Run:
    """Run ``ins`` in ``placement`` under ``policy`` and check the outcome."""
    code = ins.riprel if placement == "riprel" else ins.code
    run = Run(ins.name, ins.variant.name, ins.form.line, placement, policy, "error", code=code,
              length=len(code), mnemonic=ins.info.mnemonic)
    plan = plan_run(ins, placement)
    if isinstance(plan, str):
        run.status, run.detail = "n/a", plan
        return run
    run.code = plan.code
    run.rip = plan.insn_addr
    refuse16 = len(plan.code) > 15
    page_end = placement == "page-end"
    try:
        m, ctx, before_mem, before = _start(plan, policy, page_end, workaround=False)
    except UnfaithfulInstruction as e:
        # Refused before it ran (a 66h near call/ret: this CPU's 16-bit operand
        # size is not what Unicorn does): like a 16-byte form, never skipped.
        run.status, run.detail = "refused", f"refused: {e}"
        return run
    try:
        data = plan.layout[1]
        if page_end and _readahead(ctx, plan):
            # Unicorn 2.1.4 fetched the (unmapped) page after the instruction
            # before running it; see ISSUES["unicorn-readahead"].  Note it, and check the
            # skip itself with the Machine stopped at the page end.
            run.readahead = True
            run.issue = "unicorn-readahead"
            # nothing ran: the same Machine again, with an exit at the page end
            m, ctx, before_mem, before = _start(plan, policy, page_end, workaround=True, m=m)
        res = ctx.result
        writes = [f for f in res.faults if f.access == "write" and f.rip == plan.insn_addr]
        skips = [f for f in res.faults if f.decision == "skip"]
        run.faults = [f.line() for f in res.faults]
        run.skipped = bool(skips)
        run.skip_len = skips[0].skip_len if skips else None
        run.new_rip = skips[0].new_rip if skips else ctx.rip
        run.refaulted = any(f.repeats > 1 or f.decision in ("retry", "retry-oom", "livelock") for f in writes)
        run.livelock = res.outcome == "livelock"
        after_mem = {a: m.read(a, n) for a, n in regions(data)}
        after = cpu_state(m)
        exp_mem = _expected_memory(plan, before_mem, before)
        exp_regs = _expected_regs(plan, before, policy, page_end, refuse16)
        problems: list[str] = []
        run.dest_unchanged = after_mem == exp_mem
        if not run.dest_unchanged:
            for a in exp_mem:
                if exp_mem[a] != after_mem[a]:
                    k = next(i for i in range(len(exp_mem[a])) if exp_mem[a][i] != after_mem[a][i])
                    problems.append(f"memory at {a + k:#x} changed "
                                    f"({exp_mem[a][k:k + 8].hex()} -> {after_mem[a][k:k + 8].hex()})")
                    break
        rdiff = _diff(exp_regs, after)
        run.regs_unchanged = not rdiff
        if rdiff:
            problems.append("registers: " + ", ".join(rdiff[:6]))
            if all(d.startswith("rflags") for d in rdiff) and plan.info.mnemonic in ("rcl", "rcr"):
                run.issue = "unicorn-flags-before-store"
        if refuse16:
            # The CPU refuses an instruction longer than 15 bytes (#GP); Unicorn
            # raises an exception before any access; the handler never skips it.
            fetched = m.read(plan.insn_addr, 15)
            if skip_length(fetched) is not None:
                problems.append(f"skip_length of the first 15 bytes is {skip_length(fetched)}, not None")
            if skips:
                problems.append(f"a {skips[0].skip_len}-byte skip of a 16-byte instruction")
            if res.outcome != "signal" or any(f.access != "read" for f in res.faults):
                problems.append(f"not refused: outcome {res.outcome}, {len(res.faults)} fault(s)")
            elif res.faults:
                run.issue = "unicorn-len16-access"       # refused, after a read access
            if ctx.rip != plan.insn_addr:
                problems.append(f"rip moved to {ctx.rip:#x}")
            run.next_ran = False
            run.status = "fail" if problems else "refused"
            run.detail = "; ".join(problems) or f"refused: {res.outcome_detail}" + (
                " (after a read of the operand)" if run.issue else "")
            return run
        if not writes:
            late = [f for f in res.faults if f.access == "write" and f.rip != plan.insn_addr]
            if late and late[0].rip == plan.insn_addr + len(plan.code):
                run.issue = "unicorn-helper-rip"
                problems.append(f"the write fault was reported at the next instruction ({late[0].rip:#x}, "
                                f"[{late[0].insn}])")
            else:
                problems.append(f"no write fault at the instruction (outcome {res.outcome}: "
                                f"{res.outcome_detail})")
        bad = [f for f in writes if "dp" not in f.vm_flags.split()]
        if bad:
            problems.append(f"write fault outside the droppable mapping at {bad[0].address:#x}")
        if policy == "skip":
            end = plan.insn_addr + len(plan.code)
            if len(skips) != 1:
                problems.append(f"{len(skips)} skips (want 1); outcome {res.outcome} {res.outcome_detail}")
            elif run.skip_len != len(plan.code) or skips[0].new_rip != end:
                problems.append(f"skipped {run.skip_len} bytes to {skips[0].new_rip:#x} "
                                f"(want {len(plan.code)} to {end:#x})")
            if page_end:
                ran_to = ctx.rip
                if ran_to != end:
                    problems.append(f"rip {ran_to:#x} after the skip (want the page end {end:#x})")
                # the next "instruction" is the page end: its fetch must fault
                m.run(ctx, stop_at=2)
                ex = [f for f in ctx.result.faults if f.access == "exec"]
                run.next_ran = bool(ex) and ex[-1].rip == end and ctx.result.outcome == "signal"
                if not run.next_ran:
                    problems.append(f"no instruction-fetch fault at the page end {end:#x} "
                                    f"(outcome {ctx.result.outcome}: {ctx.result.outcome_detail})")
            else:
                # the run ends at the int3 after the marker (a trap: rip after it)
                final = m.reg("rip")
                run.next_ran = (after.get(plan.marker) == MARKER and final == end + MARKER_LEN + 1
                                and res.outcome == "signal")
                if not run.next_ran:
                    problems.append(f"the marker after the instruction did not run (rip {final:#x}, "
                                    f"outcome {res.outcome}: {res.outcome_detail})")
        else:
            run.next_ran = plan.marker is not None and after.get(plan.marker) == MARKER
            if skips:
                problems.append("skipped under retry")
            if not run.livelock:
                problems.append(f"no livelock (outcome {res.outcome}: {res.outcome_detail})")
            if not run.refaulted:
                problems.append("no refault")
            if ctx.rip != plan.insn_addr:
                problems.append(f"rip {ctx.rip:#x} (want the instruction, {plan.insn_addr:#x})")
            if run.next_ran:
                problems.append("the next instruction ran")
        run.status = "fail" if problems else "pass"
        run.detail = "; ".join(problems)
        return run
    except FaultpathError as e:
        run.status, run.detail = "error", f"{type(e).__name__}: {e}"
        return run
    finally:
        m.close()
