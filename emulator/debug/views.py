"""What a kernel developer looks at when the stepped call is stopped.

Every function here reads a Session and returns text; none of them changes
the process.  The stepper prints them, and the GDB stub sends the same text
to gdb's console for `monitor`, so the formatting lives here only.
"""
from __future__ import annotations

import re
from typing import TYPE_CHECKING

from emulator.errors import UsageError
from emulator.fault import error_code, predict, pte_state, vma_desc
from emulator.run import orig_bits
from emulator.records import X86_PF_INSTR, X86_PF_PROT, X86_PF_USER, X86_PF_WRITE
from emulator.debug.symbols import GPR_ORDER
from emulator.trace import kernel_function
from mm import flags as F
from mm.flags import PAGE_SIZE
from mm.smaps import vm_flags_str, vma_usage
from vdso.insn import MAX_INSN_LEN, decode_one, disassembler

if TYPE_CHECKING:
    from emulator.debug.session import Session, Stop

EFLAGS_BITS = [(0, "CF"), (2, "PF"), (4, "AF"), (6, "ZF"), (7, "SF"), (8, "TF"), (9, "IF"), (10, "DF"),
               (11, "OF")]

# What each trace event of a fault is, in the kernel's words (for `fstep`).
STAGE_HELP = {
    "fault_entry": "#PF entry: error code and cr2 latched, do_user_addr_fault()",
    "undo_split_store": "precise exception: bytes of a split store rolled back",
    "vma_lookup": "lock_vma_under_rcu()/find_vma(): the VMA and its vm_flags",
    "vma_check": "handle_mm_fault(): access checks against vm_flags",
    "sigsegv": "bad_area: VM_FAULT_SIGSEGV",
    "spurious": "spurious fault: the PTE already allows the access",
    "map_zero_page": "do_anonymous_page(): read fault maps the shared zero page",
    "swap_in": "do_swap_page(): bytes back from a swap slot",
    "reclaim": "direct reclaim before the allocation",
    "alloc": "alloc_pages() for the new frame",
    "zero_fill": "clear_user_highpage(): the new frame zeroed",
    "cow_copy": "do_wp_page(): copy of a shared frame",
    "reuse": "do_wp_page(): sole owner, made writable",
    "oom": "VM_FAULT_OOM on a non-droppable VMA",
    "droppable_oom": "VM_DROPPABLE: the OOM bit turned into the policy's action",
    "decode": "insn_fetch_from_user() + insn decode for VM_FAULT_SKIP_INSN",
    "signal": "force_sig_fault()",
    "fault_return": "return to user mode",
}


# ---------------------------------------------------------------------------- values
def fmt_value(v) -> str:
    """A detail value for humans: small ints in decimal, addresses in hex, no
    Python None or reprs."""
    if v is None:
        return "-"
    if isinstance(v, bool):
        return "yes" if v else "no"
    if isinstance(v, int):
        return hex(v) if v > 0xFFFF else str(v)
    if isinstance(v, float):
        return f"{v:.0f}" if abs(v) >= 10 else f"{v:g}"
    if isinstance(v, (tuple, list)):
        return ",".join(fmt_value(x) for x in v) or "-"
    return str(v)


def fmt_detail(kind: str, detail: dict) -> str:
    """An event's detail as key=value words: VM_FAULT bits by name (with what
    they were before the VM_DROPPABLE rule), a VMA as its range and flags."""
    out = []
    for k, v in detail.items():
        if k == "bits" and isinstance(v, int):
            text = F.vm_fault_str(v) if v else "none"
            if kind == "droppable_oom":
                text += " (handle_pte_fault returned OOM)"
            out.append(f"bits={text}")
        elif k == "vma" and isinstance(v, (tuple, list)) and len(v) == 3:
            out.append(f"vma={v[0]:#x}-{v[1]:#x} [{vm_flags_str(v[2])}]")
        else:
            out.append(f"{k}={fmt_value(v)}")
    return " ".join(out)


# ---------------------------------------------------------------------------- registers
def registers(s: "Session", xmm: bool = False) -> str:
    m = s.m
    if xmm:
        return "\n".join(f"xmm{i:<2}  {v:#034x}" for i, v in enumerate(m.xmm())) + \
            f"\nmxcsr  {m.reg('mxcsr'):#010x}"
    r = m.regs()
    out = []
    row = []
    for name in GPR_ORDER:
        row.append(f"{name:<4} {r[name.upper()]:#018x}")
        if len(row) == 3:
            out.append("   ".join(row))
            row = []
    if row:
        out.append("   ".join(row))
    fl = r["RFLAGS"]
    names = " ".join(n for b, n in EFLAGS_BITS if fl >> b & 1)
    out.append(f"rip  {r['RIP']:#018x} {s.symbols.symbolize(r['RIP'])}".rstrip())
    out.append(f"eflags {fl:#010x} [ {names} ]   fs_base {r['FS_BASE']:#x}   gs_base {r['GS_BASE']:#x}")
    return "\n".join(out)


# ---------------------------------------------------------------------------- memory
def examine(s: "Session", arg: str) -> str:
    m_ = re.match(r"^\s*/(\w*)\s*(.*)$", arg)
    fmt, rest = (m_.group(1), m_.group(2)) if m_ else ("", arg)
    f = re.fullmatch(r"(\d*)([xduisc]?)([bhwg]?)([xduisc]?)", fmt)
    if not f:
        raise UsageError(f"x/{fmt}: bad format (x/[COUNT][x|d|u|i|s|c][b|h|w|g] ADDR)")
    count = int(f.group(1) or 1)
    kind = f.group(2) or f.group(4) or "x"
    size = {"b": 1, "h": 2, "w": 4, "g": 8}[f.group(3) or ("b" if kind == "c" else "w")]
    if not 1 <= count <= 4096:
        raise UsageError("x: count out of range (1..4096)")
    addr = s.eval_addr(rest) if rest.strip() else s.m.reg("rip")
    if not s.readable(addr):
        raise UsageError(f"cannot access memory at {addr:#x}")
    if kind == "i":
        return "\n".join(disasm_from(s, addr, count))
    if kind == "s":
        data = s.read_memory(addr, 256)
        text = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}"
                       for b in data.split(b"\0", 1)[0])
        return f'{s.where(addr)}:  "{text}"'
    data = s.read_memory(addr, count * size)
    if len(data) < count * size:
        raise UsageError(f"cannot access memory at {addr + len(data):#x}")
    per_row = {1: 8, 2: 8, 4: 4, 8: 2}[size]
    lines = []
    for r in range(0, count, per_row):
        vals = []
        for k in range(r, min(count, r + per_row)):
            v = int.from_bytes(data[k * size:(k + 1) * size], "little")
            if kind == "x":
                vals.append(f"{v:#0{2 + 2 * size}x}")
            elif kind == "d":
                vals.append(str(v - (1 << (8 * size)) if v >> (8 * size - 1) else v))
            elif kind == "c":
                vals.append(repr(chr(v)) if size == 1 else str(v))
            else:
                vals.append(str(v))
        lines.append(f"{s.where(addr + r * size)}:\t" + "\t".join(vals))
    return "\n".join(lines)


# ---------------------------------------------------------------------------- disassembly
def insn_line(s: "Session", addr: int, ins, mark: bool) -> str:
    bp = "*" if addr in s.breakpoints.values() else " "
    text = f"{ins.mnemonic} {ins.op_str}".strip() if ins else "(bad)"
    return f"{'=>' if mark else '  '}{bp}{s.where(addr):<44} {text}"


def disasm_from(s: "Session", addr: int, n: int) -> list[str]:
    rip = s.ctx.rip
    code = s.read_memory(addr, n * MAX_INSN_LEN)
    out = []
    for ins in disassembler().disasm(code, addr):
        out.append(insn_line(s, ins.address, ins, ins.address == rip))
        if len(out) >= n:
            break
    if not out:
        out.append(insn_line(s, addr, None, addr == rip))
    return out


def disassemble(s: "Session", n: int = 9) -> str:
    """n instructions around rip (about a third before), rip marked with =>."""
    if not 1 <= n <= 1000:
        raise UsageError("dis: count out of range (1..1000)")
    rip = s.ctx.rip
    start = _linear_start(s, rip)
    before: list[int] = []
    if start is not None:
        code = s.read_memory(start, rip - start + MAX_INSN_LEN)
        for ins in disassembler().disasm(code, start):
            if ins.address >= rip:
                break
            before.append(ins.address)
        want = n // 3
        before = before[-want:] if want else []
    first = before[0] if before else rip
    return "\n".join(disasm_from(s, first, n))


def _linear_start(s: "Session", rip: int) -> int | None:
    """The nearest symbol at or below rip from which a linear sweep lands on rip."""
    cands = [a for a, _ in s.symbols.code if a <= rip]
    if not cands:
        return None
    start = cands[-1]
    if rip - start > 1 << 16:
        return None
    code = s.read_memory(start, rip - start + MAX_INSN_LEN)
    for ins in disassembler().disasm(code, start):
        if ins.address == rip:
            return start
        if ins.address > rip:
            return None
    return None


def status_line(s: "Session") -> str:
    ctx = s.ctx
    if ctx.done:
        return ended(s)
    ins = s.insn_at(ctx.rip)
    return f"#{ctx.index:<6} {s.where(ctx.rip):<44} {ins.text if ins else '(bad)'}"


def ended(s: "Session") -> str:
    res = s.ctx.result
    out = (f"call {s.call_no} ended: getrandom({s.size}) -> {res.ret}  outcome={res.outcome}  "
           f"instructions={res.instructions}  cycles={res.cycles:.0f}")
    if res.outcome_detail:
        out += f"\n  {res.outcome_detail}"
    if res.output:
        h = res.output.hex()
        out += f"\n  output: {h if len(h) <= 64 else h[:32] + '...' + h[-8:]} ({len(res.output)} bytes)"
    return out


def banner(s: "Session") -> str:
    img = s.kernel.image
    c = s.caller
    injs = ", ".join(str(i) for i in s.ctx.result.injections) or "none"
    lines = [f"faultpath step: image={img.name} (abi {img.abi}) __vdso_getrandom at {s.func:#x}",
             f"call {s.call_no} of {s.call_no}: getrandom({s.size}) buffer={c.buffer:#x} "
             f"state={c.states[0]:#x}; injections: {injs}",
             f"policy={s.m.mm.droppable_oom} memory={s.kernel.phys.memory_pages} pages "
             f"scenario={s.scenario.name} seed={s.cfg.seed}"]
    lines += [inject_line(ev) for ev in s.start_events]
    lines.append(status_line(s))
    return "\n".join(lines)


def stop_text(s: "Session", stop: "Stop") -> str:
    out = event_lines(s, stop.events, stop.syscalls)
    if stop.watch is not None:
        out.append(stop.watch.text(s.where, stop.reverse))
    if stop.reason == "fault" or (stop.reason == "watch" and s.pending() is not None):
        out.append(fault_stop(s))
    elif stop.reason == "done":
        out.append(ended(s))
    else:
        if stop.reason == "breakpoint":
            out.append((f"breakpoint {stop.breakpoint}, " if stop.breakpoint else "stopped at ")
                       + s.where(s.ctx.rip))
        elif stop.reason == "interrupt":
            out.append("interrupted")
        elif stop.reason == "kernel-fault":
            out.append("stopped after a syscall in which the kernel faulted on a user address "
                       "(`fault` shows its stages)")
        elif stop.reason == "history-begin":
            why = s.timeline.barrier_why
            out.append(f"no more history: back at {s.timeline.start}, where {why}" if why else
                       f"no more history: back at the start of call {s.call_no}")
        out.append(status_line(s))
    return "\n".join(out)


# ---------------------------------------------------------------------------- events in order
MAX_EVENT_LINES = 40          # per stop: a spin of refaults must not flood a console


def event_lines(s: "Session", events: list, syscalls: list) -> list[str]:
    """One line per thing that happened, in the order it happened: a handled
    fault, a syscall (the kernel's own faults inside it indented below it),
    an injection.  Runs of identical lines fold into one with a count, and
    past MAX_EVENT_LINES a summary line says what was left out."""
    lines: list[str] = []
    sys_iter = iter(syscalls)
    i = 0
    n = len(events)
    while i < n:
        ev = events[i]
        if ev.kind == "fault_entry":
            j = _group_end(events, i + 1, ("fault_entry", "syscall", "syscall_return", "inject"))
            kernel = ev.detail.get("mode") == "kernel"
            lines.append(("  " if kernel else "") + fault_group_line(s, events[i:j]))
            i = j
            continue
        if ev.kind == "syscall":
            rec = next(sys_iter, None)
            lines.append(syscall_line(ev, rec))
        elif ev.kind == "inject":
            lines.append(inject_line(ev))
        elif ev.kind == "signal":
            lines.append(f"signal at #{ev.index}: {ev.detail.get('signal', '?')} "
                         f"({ev.detail.get('insn') or ev.detail.get('why', '')})".rstrip())
        i += 1
    return _rate_limit(_fold(lines))


def _group_end(events: list, j: int, enders: tuple[str, ...]) -> int:
    while j < len(events) and events[j].kind not in enders:
        j += 1
    return j


def fault_group_line(s: "Session", group: list) -> str:
    """A fault from its trace events (fault_entry .. its last stage)."""
    entry = group[0]
    d = entry.detail
    decision = "?"
    new_rip = None
    length = None
    for ev in group:
        if ev.kind == "fault_return":
            decision = ev.detail.get("decision", decision)
            new_rip = ev.detail.get("new_rip")
        elif ev.kind == "decode":
            length = ev.detail.get("length")
        elif ev.kind == "signal":
            decision = str(ev.detail.get("signal", "signal")).lower()
        elif ev.kind == "exception_fixup":
            decision = "efault (exception-table fixup: the copy comes back short)"
        elif ev.kind == "oom" and "victim" in ev.detail:
            decision = "oom-kill"
    cyc = sum(e.cycles for e in group)
    if d.get("mode") == "kernel":
        return (f"kernel fault at #{entry.index} in {d.get('in', 'the kernel')}: {d.get('access', '?')} "
                f"{s.where(d.get('address', 0))} -> {decision} ({cyc:.0f} cycles)")
    out = f"fault at #{entry.index} handled: {decision}"
    if decision == "skip" and length is not None:
        out += f" len={length}"
    if new_rip is not None:
        out += f" new_rip={s.where(new_rip)}"
    return out + f" ({cyc:.0f} cycles)"


def syscall_line(ev, rec) -> str:
    if rec is None:
        return f"syscall at #{ev.index}: {ev.detail.get('name', ev.detail.get('nr', '?'))}()"
    args = ", ".join(hex(a) for a in rec.args[:3])
    ret = "" if rec.outcome == "livelock" else f" -> {rec.ret}"
    tail = f"  [{rec.outcome}]" if rec.outcome else ""
    return f"syscall at #{rec.index}: {rec.name}({args}){ret}{tail}"


def _fold(lines: list[str]) -> list[str]:
    out: list[str] = []
    count = 0
    for line in lines + [None]:
        if out and line == out[-1]:
            count += 1
            continue
        if count:
            out[-1] += f"  (x{count + 1})"
        count = 0
        if line is not None:
            out.append(line)
    return out


def _rate_limit(lines: list[str]) -> list[str]:
    if len(lines) <= MAX_EVENT_LINES:
        return lines
    head = lines[:MAX_EVENT_LINES - 1]
    rest = lines[MAX_EVENT_LINES - 1:]
    faults = sum(1 for x in rest if "fault at #" in x)
    sysc = sum(1 for x in rest if x.startswith("syscall at #"))
    return head + [f"... {len(rest)} more line(s) not shown ({faults} fault(s), {sysc} syscall(s)); "
                   f"`faults` and `trace N` list them"]


# ---------------------------------------------------------------------------- mm
def vmas(s: "Session") -> str:
    m = s.m
    rows = []
    for name, start, backing, perms in s.kernel.special_mappings():
        end = start + len(backing)
        p = ("r" if "r" in perms else "-") + "-" + ("x" if "x" in perms else "-") + "p"
        rows.append((start, f"{start:#014x}-{end:#014x} {p} {len(backing) // 1024:>6} kB  "
                            f"{'':>12}  {name:<16} (special mapping)"))
    for v in m.mm.vmas:
        u = vma_usage(m.mm, v)
        f = v.vm_flags
        p = (("r" if f & F.VM_READ else "-") + ("w" if f & F.VM_WRITE else "-")
             + ("x" if f & F.VM_EXEC else "-") + ("s" if f & F.VM_MAYSHARE else "p"))
        label = s.symbols.area_name(v.start, v.end) or (f"[anon:{v.name}]" if v.name else "[anon]")
        dp = "  <- droppable" if f & F.VM_DROPPABLE else ""
        rows.append((v.start, f"{v.start:#014x}-{v.end:#014x} {p} {u['Size']:>6} kB  "
                              f"rss {u['Rss']:>5} kB  {label:<16} VmFlags: {vm_flags_str(f)}{dp}"))
    return "\n".join(r for _, r in sorted(rows))


def page_state(s: "Session", va: int) -> str:
    st = pte_state(s.m, va)
    return "none (never touched)" if st == "none" else st


def pages(s: "Session", arg: str = "") -> str:
    m = s.m
    if arg.strip():
        addr = s.eval_addr(arg)
        vma = m.mm.find_vma(addr)
        if vma is None:
            sp = m.special_at(addr)
            if sp:
                return f"{addr & ~(PAGE_SIZE - 1):#014x}  {sp}: special mapping, always present (read-only)"
            raise UsageError(f"no VMA contains {addr:#x}")
        vs = [vma]
    else:
        vs = m.mm.vmas
    out = []
    for v in vs:
        label = s.symbols.area_name(v.start, v.end) or "[anon]"
        out.append(f"{label} {v.start:#x}-{v.end:#x} [{vm_flags_str(v.vm_flags)}]")
        # runs of pages in the same state are folded into one line
        run_start, run_state, n = None, None, 0
        for va in list(range(v.start, v.end, PAGE_SIZE)) + [None]:
            st = page_state(s, va) if va is not None else None
            if st == run_state and "pfn=" not in (st or ""):
                n += 1
                continue
            if run_state is not None:
                if n == 1:
                    out.append(f"  {run_start:#014x}  {run_state}")
                else:
                    out.append(f"  {run_start:#014x}  {run_state}  (x{n} pages, to "
                               f"{run_start + n * PAGE_SIZE:#x})")
            run_start, run_state, n = va, st, 1
    return "\n".join(out)


def memory(s: "Session") -> str:
    ph = s.kernel.phys
    return (f"memory: {ph.memory_pages} pages, {ph.charged} charged, {ph.free_pages} free; "
            f"swap {ph.swap_pages} pages; allocation failure injection: {ph.failing}; "
            f"droppable-oom policy: {s.m.mm.droppable_oom}")


def prediction_suffix(s: "Session") -> str:
    pf = s.pending()
    if pf is None:
        return ""
    return f"\nmm will now: {predict(s.m, pf[0].address, pf[0].access)}"


# ---------------------------------------------------------------------------- faults
def fault_stop(s: "Session") -> str:
    pf, rip = s.pending()
    m = s.m
    ins = s.insn_at(rip)
    code = error_code(m, pf.address, pf.access, True)
    bits = [n for b, n in ((X86_PF_PROT, "prot"), (X86_PF_WRITE, "write"), (X86_PF_USER, "user"),
                           (X86_PF_INSTR, "instr")) if code & b]
    rng, flags, vma = vma_desc(m, pf.address)
    if vma is not None:
        label = s.symbols.area_name(vma.start, vma.end)
        vtext = f"{rng} {label + ' ' if label else ''}[{flags}]"
    else:
        vtext = f"{rng or 'none'}"
    lines = [
        f"fault at #{s.ctx.index} rip={s.where(rip)}",
        f"  insn:    {ins.text if ins else '(undecodable)'}   ({(ins.raw if ins else b'').hex(' ')}; "
        f"{ins.size if ins else 0} bytes)",
        f"  access:  {pf.access} {s.where(pf.address)} size={pf.size} user  "
        f"error_code={code:#x} ({'|'.join(bits) or 'not-present|read'})",
        f"  vma:     {vtext}",
        f"  pte:     {pte_state(m, pf.address)}",
    ]
    if pf.restored:
        lines.append(f"  split store: {pf.restored} bytes committed by Unicorn rolled back (precise exception)")
    lines.append(f"  mm will: {predict(m, pf.address, pf.access)}   "
                 f"[policy={m.mm.droppable_oom} memory={s.kernel.phys.free_pages}/"
                 f"{s.kernel.phys.memory_pages} free alloc-failure={s.kernel.phys.failing}]")
    lines.append("  (stepi carries it out; fstep walks it stage by stage)")
    return "\n".join(lines)


def handled_line(s: "Session", info: dict) -> str:
    out = f"fault at #{info['index']} handled: {info['decision']}"
    if info["skip_len"] is not None:
        out += f" len={info['skip_len']}"
    if info["new_rip"] is not None:
        out += f" new_rip={s.where(info['new_rip'])}"
    return out + f" ({info['cycles']:.0f} cycles)"


def faults(s: "Session") -> str:
    res = s.ctx.result
    out = [f"call {s.call_no}: {len(res.faults)} fault record(s)"]
    out += ["  " + f.line() for f in res.faults]
    if s.pending():
        out.append(f"  pending: #{s.ctx.index} rip={s.pending()[1]:#x} (not handled yet)")
    return "\n".join(out)


def stage_line(i: int, n: int, ev) -> str:
    det = fmt_detail(ev.kind, ev.detail)
    return (f"stage {i + 1}/{n} {ev.kind:<16} {ev.cycles:>7.0f} cycles  {kernel_function(ev.kind)}  "
            f"{det}").rstrip()


def fault(s: "Session") -> str:
    if s.pending():
        return fault_stop(s)
    info = s.walk or s.last_fault
    if info is None:
        raise UsageError("no fault in this call yet")
    rec = info["rec"]
    shown = info.get("pos", len(info["events"]))
    out = [f"fault at #{info['index']} rip={s.where(info['rip'])} [{rec.insn}]",
           f"  address {s.where(info['pf'].address)} {info['pf'].access}  "
           f"vma [{rec.vm_flags}]  pte before: {rec.pte}",
           f"  VM_FAULT bits: {bits_text(rec)}"]
    for i, ev in enumerate(info["events"][:shown]):
        out.append("  " + stage_line(i, len(info["events"]), ev))
    if shown < len(info["events"]):
        out.append(f"  (fstep: {len(info['events']) - shown} more stage(s) to walk)")
    else:
        out.append("  " + handled_line(s, info))
    return "\n".join(out)


def bits_text(rec) -> str:
    """A fault record's VM_FAULT_* bits by name, with the original ones when the
    VM_DROPPABLE rule rewrote them."""
    now = "|".join(rec.bits) or "none"
    orig = orig_bits(rec)
    return now if orig == rec.bits else f"{now} (handle_pte_fault returned {'|'.join(orig)})"


def inject_line(ev) -> str:
    det = fmt_detail(ev.kind, {k: v for k, v in ev.detail.items() if k != "event"})
    return f"inject {ev.detail.get('event', '?')} at #{ev.index}" + (f": {det}" if det else "")


# ---------------------------------------------------------------------------- cycles / trace
def cycles(s: "Session") -> str:
    ctx = s.ctx
    res = ctx.result
    fault_c = sum(f.cycles for f in res.faults)
    sys_c = sum(x.cycles for x in res.syscalls)
    lines = [f"call {s.call_no}: #{ctx.index} instructions, {ctx.cycles:.0f} cycles "
             f"(faults {fault_c:.0f} over {len(res.faults)} record(s), syscalls {sys_c:.0f} over "
             f"{len(res.syscalls)})"]
    for i, r in enumerate(s.previous, start=1):
        lines.append(f"call {i}: {r.instructions} instructions, {r.cycles:.0f} cycles, {r.outcome}")
    return "\n".join(lines)


def event_line(ev) -> str:
    det = fmt_detail(ev.kind, ev.detail)
    return f"#{ev.index:<6} {ev.rip:#014x} {ev.kind:<16} {ev.cycles:>7.0f}c  {det}".rstrip()


def trace(s: "Session", arg: str = "") -> str:
    try:
        n = int(arg, 0) if arg.strip() else 20
    except ValueError:
        raise UsageError(f"trace {arg!r}: expected a number of events") from None
    if n < 1:
        raise UsageError("trace: N must be positive")
    evs = s.m.trace.events[-n:]
    return "\n".join(event_line(ev) for ev in evs) if evs else "(no trace events)"


def breakpoints(s: "Session") -> str:
    if not s.breakpoints:
        return "no breakpoints"
    return "\n".join(f"{n:<3} {s.where(a)}" for n, a in sorted(s.breakpoints.items()))


def watchpoints(s: "Session") -> str:
    ws = sorted(s.watches.watches.values(), key=lambda w: w.num)
    if not ws:
        return "no watchpoints"
    out = []
    for w in ws:
        val = s.read_memory(w.addr, w.length)
        out.append(f"{w.num:<3} {w.kind:<6} {s.where(w.addr)} ({w.expr or hex(w.addr)}), {w.length} byte(s)  "
                   f"value {val.hex(' ')}  hit {w.hits} time(s)" + ("  [set by gdb]" if w.origin == "gdb" else ""))
    return "\n".join(out)


# ---------------------------------------------------------------------------- the vDSO's structs
def state(s: "Session", arg: str = "") -> str:
    """struct vgetrandom_state at `arg` (default: the caller's first state) and
    the vdso_rng_data it is compared with."""
    from vdso import abi
    addr = s.eval_addr(arg) if arg.strip() else s.caller.states[0]
    raw = s.read_memory(addr, abi.STATE_SIZE)
    if len(raw) < abi.STATE_SIZE:
        raise UsageError(f"cannot read a vgetrandom_state at {addr:#x}")
    st = abi.VgetrandomState.unpack(raw)
    rng = s.read_memory(s.kernel.image.rng_data_addr, 16)
    rgen = int.from_bytes(rng[:8], "little") if len(rng) >= 9 else None
    ready = rng[8] if len(rng) >= 9 else None
    pos = st.pos
    used = st.batch[:min(pos, abi.STATE_BATCH_LEN)]
    left = st.batch[min(pos, abi.STATE_BATCH_LEN):]
    gen_note = ""
    if rgen is not None:
        gen_note = "  (= vdso_rng_data.generation)" if st.generation == rgen else \
            f"  (vdso_rng_data.generation is {rgen}: the next call reseeds)"
    out = [f"struct vgetrandom_state at {s.where(addr)}   page: {page_state(s, addr)}",
           f"  batch[96]   {abi.STATE_BATCH_LEN - len(used)} unused byte(s) from pos {pos}"
           + (f" (pos is past the batch: empty)" if pos >= abi.STATE_BATCH_LEN else ""),
           f"    used:     {_short(used)}",
           f"    unused:   {_short(left)}",
           f"  key[32]     {_short(st.key)}",
           f"  generation  {st.generation}{gen_note}",
           f"  pos         {pos}",
           f"  in_use      {st.in_use}" + ("  (a call is using this state)" if st.in_use else "")]
    if rgen is not None:
        out.append(f"struct vdso_rng_data at {s.where(s.kernel.image.rng_data_addr)}: generation {rgen}, "
                   f"is_ready {ready}")
    return "\n".join(out)


def _short(b: bytes) -> str:
    if not b:
        return "(none)"
    h = b.hex()
    return h if len(h) <= 48 else f"{h[:32]}...{h[-8:]} ({len(b)} bytes)"


# ---------------------------------------------------------------------------- frames
def backtrace(s: "Session") -> str:
    from emulator.debug.unwind import frames
    if s.ctx.done:
        return "no stack: the call has ended"
    out = []
    for f in frames(s):
        name = s.symbols.symbolize(f.pc)
        how = "" if f.how == "cfi" else "  (no CFI: a leaf using no stack)" if f.how == "leaf" else ""
        out.append(f"#{f.level:<2} {f.pc:#018x} {name}{how}".rstrip())
    return "\n".join(out)
