"""Stepping the fault path one instruction, and one fault stage, at a time.

A Session is one process set up exactly like `faultpath run` (new_process,
calls 1..K-1 made normally) and stopped at instruction 0 of its last call.
It owns the stepping engine (stepi / next / continue / until, breakpoints,
fault stops) and every view a kernel developer asks for at a stop (registers,
memory, disassembly, VMAs, pages, faults, the current fault's stages, trace,
cycles).  `faultpath step` (emulator/cli/step.py) is a REPL over it; the GDB
stub (emulator/debug/gdbstub.py) drives the same engine and answers `monitor`
commands with the same text, so the formatting lives here only.

Fault stops.  The stepped call runs with ctx.stop_on_fault: Unicorn stops on a
fault and the Machine hands it back *before* do_user_addr_fault runs.  At that
stop the session shows the instruction, the access, the VMA, the PTE and what
mm will decide (emulator.fault.predict).  The next `stepi` carries the handling
out and retires the instruction (a skip retires it as a no-op; a mapped or
retried fault re-executes it, which may fault again); `fstep` carries the
handling out once and then reveals its trace events one stage per command,
each with its cycle cost.

Breakpoints are ranged UC_HOOK_CODE hooks that stop Unicorn before the
instruction executes; no per-instruction Python hook is ever installed.
"""
from __future__ import annotations

import re
import signal
import threading
import time
from dataclasses import dataclass, field

from unicorn import UC_HOOK_CODE

from vdso.insn import MAX_INSN_LEN, decode_one, disassembler, reachable_insns
from emulator.errors import UsageError
from emulator.fault import error_code, predict, pte_state, vma_desc
from emulator.inject import apply as inject_apply
from emulator.inject import parse_kind
from emulator.kernel import SENTINEL_PAGE
from emulator.machine import STACK_SIZE, STACK_TOP
from emulator.records import Injection
from emulator.records import X86_PF_INSTR, X86_PF_PROT, X86_PF_USER, X86_PF_WRITE
from emulator.run import MAX_PAGES, RunConfig, new_process, plan_calls
from mm import flags as F
from mm.smaps import vm_flags_str, vma_usage

PAGE_SIZE = 4096
POLL_CHUNK = 1 << 16          # instructions between interrupt polls while running

GPR_ORDER = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp", "r8", "r9", "r10", "r11",
             "r12", "r13", "r14", "r15"]
REG_NAMES = set(GPR_ORDER) | {"rip", "eflags", "rflags", "fs_base", "gs_base", "pc", "sp", "fp"}
_REG_ALIAS = {"pc": "rip", "sp": "rsp", "fp": "rbp", "eflags": "rflags"}
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


@dataclass
class Stop:
    """Why a resume ended, plus what happened on the way (handled faults,
    injections, syscalls, the end of the call), one line each."""
    reason: str                       # step | breakpoint | fault | done | interrupt
    lines: list[str] = field(default_factory=list)
    breakpoint: int | None = None     # breakpoint number (user breakpoints only)


class Session:
    """One stepped process."""

    def __init__(self, cfg: RunConfig):
        cfg.validate()
        self.cfg = cfg
        scen, calls = plan_calls(cfg)
        self.scenario = scen
        self.kernel, self.m, self.caller = new_process(cfg)
        self.previous = [self.caller.getrandom(c.size, cfg.flags, injections=c.injections, budget=cfg.budget)
                         for c in calls[:-1]]
        self.call_no = len(calls)
        self.size = calls[-1].size
        injs = calls[-1].injections
        self.func = self.caller.func
        self.ctx = self.m.prepare_call(self.func, self.caller.args(self.size, cfg.flags), size=self.size,
                                       injections=injs, budget=cfg.budget)
        self.ctx.stop_on_fault = True     # always: faultstop off is handled by the session
        self.faultstop = True
        self.breakpoints: dict[int, int] = {}    # number -> address
        self._next_bp = 1
        self._hooks: dict[int, int] = {}         # address -> unicorn hook handle
        self._resume_rip = -1
        self._left_resume = False
        self._hit: int | None = None
        self._interrupt = False
        self._reveal: dict | None = None         # fstep walk in progress
        self.last_fault: dict | None = None      # the last fault handled in this call
        self._labels = self._make_labels()
        self._code_syms = self._make_code_symbols()
        self.start_lines = self._settle()

    # ================================================================= naming
    def _make_labels(self) -> list[tuple[int, int, str]]:
        c = self.caller
        out = []
        for i, st in enumerate(c.states):
            out.append((st, st + c.state_size, "state" if i == 0 else f"state{i}"))
        out.append((c.buffer, c.buffer + c.buffer_size, "buffer"))
        out.append((c.scratch, c.scratch + PAGE_SIZE, "scratch"))
        out.append((STACK_TOP - STACK_SIZE, STACK_TOP, "stack"))
        rng = self.kernel.image.rng_data_addr
        out.append((rng, rng + 16, "vdso_rng_data"))
        out.append((SENTINEL_PAGE, SENTINEL_PAGE + PAGE_SIZE, "return_sentinel"))
        return out

    def _make_code_symbols(self) -> list[tuple[int, str]]:
        img = self.kernel.image

        def rank(name: str) -> tuple:
            return (not name.startswith("__vdso_"), not name.startswith("__arch_"),
                    name.startswith("__vgetrandom"), name)
        by_addr: dict[int, str] = {}
        for name, off in sorted(img.symbols.items(), key=lambda kv: rank(kv[0])):
            if name.startswith("__fp_"):
                continue
            by_addr.setdefault(img.base + off, name)
        # Direct call targets without a symbol (the host vDSO exports only the
        # entry points; its ChaCha20 routine is reached by a `call`).
        try:
            insns = reachable_insns(img.text, img.base, [self.func])
            for ins in insns.values():
                if ins.mnemonic == "call" and ins.op_str.startswith("0x"):
                    t = int(ins.op_str, 16)
                    if t not in by_addr and img.base <= t < img.base + img.size:
                        by_addr[t] = f"sub_{t - img.base:x}"
        except Exception:   # naming is cosmetic; never fail a session on it
            pass
        return sorted(by_addr.items())

    def symbolize(self, addr: int) -> str:
        img = self.kernel.image
        if img.base <= addr < img.base + img.size:
            best = None
            for a, name in self._code_syms:
                if a <= addr:
                    best = (a, name)
                else:
                    break
            if best:
                off = addr - best[0]
                return f"<{best[1]}+{off}>" if off else f"<{best[1]}>"
            return ""
        for lo, hi, name in self._labels:
            if lo <= addr < hi:
                off = addr - lo
                return f"<{name}+{off:#x}>" if off else f"<{name}>"
        return ""

    def where(self, addr: int) -> str:
        s = self.symbolize(addr)
        return f"{addr:#x} {s}" if s else f"{addr:#x}"

    def area_name(self, start: int, end: int) -> str:
        for lo, hi, name in self._labels:
            if start <= lo < end and name not in ("vdso_rng_data", "return_sentinel"):
                return name
        return ""

    # ================================================================= expressions
    def eval_addr(self, expr: str) -> int:
        """ADDR | SYMBOL[+OFF] | $reg[+OFF] | state/buffer/... ; `*` prefix allowed."""
        s = expr.strip().lstrip("*").strip()
        if not s:
            raise UsageError("an address is needed")
        tokens = re.findall(r"[+-]|[^+\-\s]+", s.replace(" ", ""))
        total = 0
        sign = 1
        expect_term = True
        for t in tokens:
            if t in "+-":
                if expect_term and t == "-":
                    sign = -sign
                elif expect_term:
                    pass
                else:
                    sign = 1 if t == "+" else -1
                    expect_term = True
                continue
            total += sign * self._term(t)
            sign = 1
            expect_term = False
        if expect_term:
            raise UsageError(f"incomplete address expression {expr!r}")
        return total & (2 ** 64 - 1)

    def _term(self, t: str) -> int:
        name = t[1:] if t.startswith("$") else t
        low = name.lower()
        if re.fullmatch(r"0x[0-9a-fA-F]+|\d+", name):
            return int(name, 0)
        if low in REG_NAMES:
            return self.m.reg(_REG_ALIAS.get(low, low))
        img = self.kernel.image
        if img.has_symbol(name):
            return img.symbol(name)
        for a, sym in self._code_syms:
            if sym == name:
                return a
        for lo, _, lab in self._labels:
            if lab == name:
                return lo
        raise UsageError(f"no symbol, register or number {t!r}")

    # ================================================================= registers
    def regs_text(self, xmm: bool = False) -> str:
        m = self.m
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
        out.append(f"rip  {r['RIP']:#018x} {self.symbolize(r['RIP'])}".rstrip())
        out.append(f"eflags {fl:#010x} [ {names} ]   fs_base {r['FS_BASE']:#x}   gs_base {r['GS_BASE']:#x}")
        return "\n".join(out)

    def set_register(self, name: str, value: int) -> None:
        """A register write from the user (gdb P/G): rip also moves the call."""
        name = _REG_ALIAS.get(name.lower(), name.lower())
        self.m.set_reg(name, value)
        if name == "rip":
            if value != self.ctx.rip:
                self.ctx.pending_fault = None     # the faulting instruction is abandoned
                self._end_walk()
            self.ctx.rip = value

    # ================================================================= memory
    def readable(self, addr: int) -> bool:
        return self.m.mm.find_vma(addr) is not None or self.m.special_at(addr) is not None

    def read_memory(self, addr: int, n: int) -> bytes:
        """Bytes at addr without faulting; stops at the first address outside any
        mapping (empty if addr itself is unmapped)."""
        out = bytearray()
        while n > 0:
            if not self.readable(addr):
                break
            chunk = min(n, PAGE_SIZE - (addr & (PAGE_SIZE - 1)))
            out += self.m.read(addr, chunk)
            addr += chunk
            n -= chunk
        return bytes(out)

    def write_memory(self, addr: int, data: bytes) -> int:
        """A debugger's write: ptrace POKEDATA semantics (FOLL_FORCE, faults pages
        in, breaks COW).  The vDSO, vvar and sentinel pages are read-only."""
        done = 0
        while done < len(data):
            a = addr + done
            if self.m.special_at(a) is not None:
                break
            n = min(len(data) - done, PAGE_SIZE - (a & (PAGE_SIZE - 1)))
            w = self.m.mm.poke(a, data[done:done + n])
            self.m.sync()
            done += w
            if w < n:
                break
        return done

    def examine(self, arg: str) -> str:
        m_ = re.match(r"^\s*/(\w*)\s*(.*)$", arg)
        if m_:
            fmt, rest = m_.group(1), m_.group(2)
        else:
            fmt, rest = "", arg
        f = re.fullmatch(r"(\d*)([xduisc]?)([bhwg]?)([xduisc]?)", fmt)
        if not f:
            raise UsageError(f"x/{fmt}: bad format (x/[COUNT][x|d|u|i|s|c][b|h|w|g] ADDR)")
        count = int(f.group(1) or 1)
        kind = f.group(2) or f.group(4) or "x"
        size = {"b": 1, "h": 2, "w": 4, "g": 8}[f.group(3) or ("b" if kind == "c" else "w")]
        if not 1 <= count <= 4096:
            raise UsageError("x: count out of range (1..4096)")
        addr = self.eval_addr(rest) if rest.strip() else self.m.reg("rip")
        if not self.readable(addr):
            raise UsageError(f"cannot access memory at {addr:#x}")
        if kind == "i":
            return "\n".join(self._disasm_from(addr, count))
        if kind == "s":
            data = self.read_memory(addr, 256)
            s = data.split(b"\0", 1)[0]
            text = "".join(chr(b) if 0x20 <= b < 0x7F and b not in (0x22, 0x5C) else f"\\x{b:02x}" for b in s)
            return f'{self.where(addr)}:  "{text}"'
        data = self.read_memory(addr, count * size)
        if len(data) < count * size:
            raise UsageError(f"cannot access memory at {addr + len(data):#x}")
        per_row = {1: 8, 2: 8, 4: 4, 8: 2}[size]
        lines = []
        for r in range(0, count, per_row):
            a = addr + r * size
            vals = []
            for k in range(r, min(count, r + per_row)):
                raw = data[k * size:(k + 1) * size]
                v = int.from_bytes(raw, "little")
                if kind == "x":
                    vals.append(f"{v:#0{2 + 2 * size}x}")
                elif kind == "d":
                    vals.append(str(v - (1 << (8 * size)) if v >> (8 * size - 1) else v))
                elif kind == "c":
                    vals.append(repr(chr(v)) if size == 1 else str(v))
                else:
                    vals.append(str(v))
            lines.append(f"{self.where(a)}:\t" + "\t".join(vals))
        return "\n".join(lines)

    # ================================================================= disassembly
    def insn_at(self, addr: int):
        return decode_one(self.read_memory(addr, MAX_INSN_LEN), addr)

    def _insn_line(self, addr: int, ins, mark: bool) -> str:
        bp = "*" if addr in self.breakpoints.values() else " "
        text = f"{ins.mnemonic} {ins.op_str}".strip() if ins else "(bad)"
        return f"{'=>' if mark else '  '}{bp}{self.where(addr):<44} {text}"

    def _disasm_from(self, addr: int, n: int) -> list[str]:
        rip = self.ctx.rip
        code = self.read_memory(addr, n * MAX_INSN_LEN)
        out = []
        for ins in disassembler().disasm(code, addr):
            out.append(self._insn_line(ins.address, ins, ins.address == rip))
            if len(out) >= n:
                break
        if not out:
            out.append(self._insn_line(addr, None, addr == rip))
        return out

    def disassemble(self, n: int = 9) -> str:
        """n instructions around rip (about a third before), rip marked with =>."""
        if not 1 <= n <= 1000:
            raise UsageError("dis: count out of range (1..1000)")
        rip = self.ctx.rip
        start = self._linear_start(rip)
        before: list[int] = []
        if start is not None:
            code = self.read_memory(start, rip - start + MAX_INSN_LEN)
            for ins in disassembler().disasm(code, start):
                if ins.address >= rip:
                    break
                before.append(ins.address)
            want = n // 3
            before = before[-want:] if want else []
        first = before[0] if before else rip
        return "\n".join(self._disasm_from(first, len(before) + n - len(before)))

    def _linear_start(self, rip: int) -> int | None:
        """The nearest symbol at or below rip from which a linear sweep lands on rip."""
        cands = [a for a, _ in self._code_syms if a <= rip]
        if not cands:
            return None
        start = cands[-1]
        if rip - start > 1 << 16:
            return None
        code = self.read_memory(start, rip - start + MAX_INSN_LEN)
        for ins in disassembler().disasm(code, start):
            if ins.address == rip:
                return start
            if ins.address > rip:
                return None
        return None

    def status_line(self) -> str:
        ctx = self.ctx
        if ctx.done:
            return self._ended_text()
        ins = self.insn_at(ctx.rip)
        return f"#{ctx.index:<6} {self.where(ctx.rip):<44} {ins.text if ins else '(bad)'}"

    # ================================================================= mm views
    def vmas_text(self) -> str:
        m = self.m
        rows = []
        for name, start, backing, perms in self.kernel.special_mappings():
            end = start + len(backing)
            p = ("r" if "r" in perms else "-") + "-" + ("x" if "x" in perms else "-") + "p"
            rows.append((start, f"{start:#014x}-{end:#014x} {p} {len(backing) // 1024:>6} kB  "
                                f"{'':>12}  {name:<16} (special mapping)"))
        for v in m.mm.vmas:
            u = vma_usage(m.mm, v)
            f = v.vm_flags
            p = (("r" if f & F.VM_READ else "-") + ("w" if f & F.VM_WRITE else "-")
                 + ("x" if f & F.VM_EXEC else "-") + ("s" if f & F.VM_MAYSHARE else "p"))
            label = self.area_name(v.start, v.end) or (f"[anon:{v.name}]" if v.name else "[anon]")
            flags = vm_flags_str(f)
            dp = "  <- droppable" if f & F.VM_DROPPABLE else ""
            rows.append((v.start, f"{v.start:#014x}-{v.end:#014x} {p} {u['Size']:>6} kB  "
                                  f"rss {u['Rss']:>5} kB  {label:<16} VmFlags: {flags}{dp}"))
        return "\n".join(r for _, r in sorted(rows))

    def pages_text(self, arg: str = "") -> str:
        m = self.m
        if arg.strip():
            addr = self.eval_addr(arg)
            vma = m.mm.find_vma(addr)
            if vma is None:
                sp = m.special_at(addr)
                if sp:
                    return f"{addr & ~(PAGE_SIZE - 1):#014x}  {sp}: special mapping, always present (read-only)"
                raise UsageError(f"no VMA contains {addr:#x}")
            vmas = [vma]
        else:
            vmas = m.mm.vmas
        out = []
        for v in vmas:
            label = self.area_name(v.start, v.end) or "[anon]"
            out.append(f"{label} {v.start:#x}-{v.end:#x} [{vm_flags_str(v.vm_flags)}]")
            # runs of pages in the same state are folded into one line
            run_start, run_state, n = None, None, 0
            for va in list(range(v.start, v.end, PAGE_SIZE)) + [None]:
                st = self.page_state(va) if va is not None else None
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

    def page_state(self, va: int) -> str:
        s = pte_state(self.m, va)
        if s == "none":
            return "none (never touched)"
        return s

    def memory_text(self) -> str:
        ph = self.kernel.phys
        return (f"memory: {ph.memory_pages} pages, {ph.charged} charged, {ph.free_pages} free; "
                f"swap {ph.swap_pages} pages; allocation failure injection: {ph.failing}; "
                f"droppable-oom policy: {self.m.mm.droppable_oom}")

    def set_memory(self, arg: str) -> str:
        try:
            n = int(arg, 0)
        except ValueError:
            raise UsageError(f"memory {arg!r}: expected a number of pages") from None
        if not 1 <= n <= MAX_PAGES:
            raise UsageError(f"memory {n}: out of range (1..{MAX_PAGES} pages)")
        self.kernel.phys.memory_pages = n
        return self.memory_text() + self._prediction_suffix()

    def set_policy(self, arg: str) -> str:
        p = arg.strip()
        if p not in ("skip", "retry"):
            raise UsageError(f"policy {p!r}: expected skip or retry")
        self.m.mm.droppable_oom = p
        return f"droppable-oom policy: {p}" + self._prediction_suffix()

    def _prediction_suffix(self) -> str:
        pf = self._pending()
        if pf is None:
            return ""
        return f"\nmm will now: {predict(self.m, pf[0].address, pf[0].access)}"

    # ================================================================= faults
    def _pending(self):
        pf = self.ctx.pending_fault
        return pf

    def fault_stop_text(self) -> str:
        pf, rip = self._pending()
        m = self.m
        ins = self.insn_at(rip)
        code = error_code(m, pf.address, pf.access, True)
        bits = [n for b, n in ((X86_PF_PROT, "prot"), (X86_PF_WRITE, "write"), (X86_PF_USER, "user"),
                               (X86_PF_INSTR, "instr")) if code & b]
        rng, flags, vma = vma_desc(m, pf.address)
        if vma is not None:
            label = self.area_name(vma.start, vma.end)
            vtext = f"{rng} {label + ' ' if label else ''}[{flags}]"
        else:
            vtext = f"{rng or 'none'}"
        lines = [
            f"fault at #{self.ctx.index} rip={self.where(rip)}",
            f"  insn:    {ins.text if ins else '(undecodable)'}   ({(ins.raw if ins else b'').hex(' ')}; "
            f"{ins.size if ins else 0} bytes)",
            f"  access:  {pf.access} {self.where(pf.address)} size={pf.size} user  "
            f"error_code={code:#x} ({'|'.join(bits) or 'not-present|read'})",
            f"  vma:     {vtext}",
            f"  pte:     {pte_state(m, pf.address)}",
        ]
        if pf.restored:
            lines.append(f"  split store: {pf.restored} bytes committed by Unicorn rolled back (precise exception)")
        lines.append(f"  mm will: {predict(m, pf.address, pf.access)}   "
                     f"[policy={m.mm.droppable_oom} memory={self.kernel.phys.free_pages}/"
                     f"{self.kernel.phys.memory_pages} free alloc-failure={self.kernel.phys.failing}]")
        lines.append("  (stepi carries it out; fstep walks it stage by stage)")
        return "\n".join(lines)

    def _handle_pending(self) -> tuple:
        ctx = self.ctx
        pf, rip = ctx.pending_fault
        trace = self.m.trace
        mark = len(trace.events)
        self.m.handle_pending_fault(ctx)
        self._sync_rip()
        events = list(trace.events[mark:])
        rec = ctx.result.faults[-1]
        info = {"rec": rec, "events": events, "pf": pf, "rip": rip,
                "cycles": sum(e.cycles for e in events), "index": rec.index,
                "decision": rec.decision, "skip_len": rec.skip_len, "new_rip": rec.new_rip}
        self.last_fault = info
        return info

    def handled_line(self, info: dict) -> str:
        s = f"fault at #{info['index']} handled: {info['decision']}"
        if info["skip_len"] is not None:
            s += f" len={info['skip_len']}"
        if info["new_rip"] is not None:
            s += f" new_rip={self.where(info['new_rip'])}"
        s += f" ({info['cycles']:.0f} cycles)"
        return s

    def faults_text(self) -> str:
        res = self.ctx.result
        out = [f"call {self.call_no}: {len(res.faults)} fault record(s)"]
        out += ["  " + f.line() for f in res.faults]
        if self._pending():
            out.append(f"  pending: #{self.ctx.index} rip={self._pending()[1]:#x} (not handled yet)")
        return "\n".join(out)

    def fault_text(self) -> str:
        if self._pending():
            return self.fault_stop_text()
        info = self._reveal or self.last_fault
        if info is None:
            raise UsageError("no fault in this call yet")
        rec = info["rec"]
        shown = info.get("pos", len(info["events"]))
        out = [f"fault at #{info['index']} rip={self.where(info['rip'])} [{rec.insn}]",
               f"  address {self.where(info['pf'].address)} {info['pf'].access}  "
               f"vma [{rec.vm_flags}]  pte before: {rec.pte}"]
        for i, ev in enumerate(info["events"][:shown]):
            out.append("  " + self._stage_line(i, len(info["events"]), ev))
        if shown < len(info["events"]):
            out.append(f"  (fstep: {len(info['events']) - shown} more stage(s) to walk)")
        else:
            out.append("  " + self.handled_line(info))
        return "\n".join(out)

    def _stage_line(self, i: int, n: int, ev) -> str:
        det = " ".join(f"{k}={_fmt(v)}" for k, v in ev.detail.items())
        return f"stage {i + 1}/{n} {ev.kind:<16} {ev.cycles:>7.0f} cycles  {det}".rstrip()

    def _end_walk(self) -> None:
        if self._reveal is not None:
            self._reveal["pos"] = len(self._reveal["events"])
            self._reveal = None

    def fstep(self) -> str:
        out = []
        if self._reveal is None:
            if self._pending() is None:
                raise UsageError("no fault pending (stepi or continue until a fault stops the call)")
            info = self._handle_pending()
            info["pos"] = 0
            self._reveal = info
            out.append(f"handling fault at #{info['index']} rip={self.where(info['rip'])}: "
                       f"{len(info['events'])} stages")
        info = self._reveal
        events = info["events"]
        if info["pos"] < len(events):
            ev = events[info["pos"]]
            line = self._stage_line(info["pos"], len(events), ev)
            help_ = STAGE_HELP.get(ev.kind)
            out.append(line + (f"\n    ({help_})" if help_ else ""))
            info["pos"] += 1
        if info["pos"] >= len(events):
            self._reveal = None
            out.append(self.handled_line(info))
            out += self._settle()
            out.append(self.status_line())
        return "\n".join(out)

    # ================================================================= injections
    def inject(self, arg: str) -> str:
        kind = parse_kind(arg)
        ctx = self.ctx
        if ctx.done:
            raise UsageError("the call has ended")
        trace = self.m.trace
        mark = len(trace.events)
        inject_apply(self.m, ctx, Injection(ctx.index, kind))
        lines = [self._inject_line(ev) for ev in trace.events[mark:] if ev.kind == "inject"] or \
            [f"injected {kind} at #{ctx.index}"]
        return "\n".join(lines) + self._prediction_suffix()

    def _inject_line(self, ev) -> str:
        det = " ".join(f"{k}={_fmt(v)}" for k, v in ev.detail.items() if k != "event")
        return f"inject {ev.detail.get('event', '?')} at #{ev.index}" + (f": {det}" if det else "")

    # ================================================================= cycles / trace
    def cycles_text(self) -> str:
        ctx = self.ctx
        res = ctx.result
        fault_c = sum(f.cycles for f in res.faults)
        sys_c = sum(s.cycles for s in res.syscalls)
        lines = [f"call {self.call_no}: #{ctx.index} instructions, {ctx.cycles:.0f} cycles "
                 f"(faults {fault_c:.0f} over {len(res.faults)} record(s), syscalls {sys_c:.0f} over "
                 f"{len(res.syscalls)})"]
        for i, r in enumerate(self.previous, start=1):
            lines.append(f"call {i}: {r.instructions} instructions, {r.cycles:.0f} cycles, {r.outcome}")
        return "\n".join(lines)

    def trace_text(self, arg: str = "") -> str:
        try:
            n = int(arg, 0) if arg.strip() else 20
        except ValueError:
            raise UsageError(f"trace {arg!r}: expected a number of events") from None
        if n < 1:
            raise UsageError("trace: N must be positive")
        evs = self.m.trace.events[-n:]
        return "\n".join(self._event_line(ev) for ev in evs) if evs else "(no trace events)"

    def _event_line(self, ev) -> str:
        det = " ".join(f"{k}={_fmt(v)}" for k, v in ev.detail.items())
        return f"#{ev.index:<6} {ev.rip:#014x} {ev.kind:<16} {ev.cycles:>7.0f}c  {det}".rstrip()

    # ================================================================= breakpoints
    def add_breakpoint(self, arg: str) -> tuple[int, int]:
        addr = self.eval_addr(arg)
        for num, a in self.breakpoints.items():
            if a == addr:
                return num, addr
        num = self._next_bp
        self._next_bp += 1
        self.breakpoints[num] = addr
        self._hook(addr)
        return num, addr

    def remove_breakpoint_at(self, addr: int) -> bool:
        for num, a in list(self.breakpoints.items()):
            if a == addr:
                del self.breakpoints[num]
                self._unhook(addr)
                return True
        return False

    def delete_breakpoints(self, arg: str = "") -> str:
        if not arg.strip():
            n = len(self.breakpoints)
            for a in list(self.breakpoints.values()):
                self.remove_breakpoint_at(a)
            return f"deleted {n} breakpoint(s)"
        out = []
        for tok in arg.split():
            try:
                num = int(tok)
            except ValueError:
                raise UsageError(f"delete {tok!r}: expected a breakpoint number") from None
            if num not in self.breakpoints:
                raise UsageError(f"no breakpoint number {num}")
            self.remove_breakpoint_at(self.breakpoints[num])
            out.append(f"deleted breakpoint {num}")
        return "\n".join(out)

    def breakpoints_text(self) -> str:
        if not self.breakpoints:
            return "no breakpoints"
        return "\n".join(f"{n:<3} {self.where(a)}" for n, a in sorted(self.breakpoints.items()))

    def _hook(self, addr: int) -> None:
        if addr in self._hooks:
            return
        self._hooks[addr] = self.m.uc.hook_add(UC_HOOK_CODE, self._on_code, None, addr, addr)
        self.m.uc.ctl_flush_tb()      # blocks translated before the hook would not call it

    def _unhook(self, addr: int) -> None:
        if addr in self.breakpoints.values():
            return
        h = self._hooks.pop(addr, None)
        if h is not None:
            self.m.uc.hook_del(h)
            self.m.uc.ctl_flush_tb()

    def _on_code(self, uc, address, size, user_data) -> None:
        try:
            if not self._left_resume and address == self._resume_rip:
                self._left_resume = True     # resuming from this breakpoint: let it run
                return
            if self.ctx.pending_fault is None:
                self.ctx.stop_requested = True
                self._hit = address
                uc.emu_stop()
        except BaseException:     # never let an exception vanish inside Unicorn
            uc.emu_stop()

    # ================================================================= the engine
    def interrupt(self) -> None:
        """Ask a running resume to stop at the next poll (Ctrl-C)."""
        self._interrupt = True

    def resume(self, mode: str = "step", count: int = 1, temp: tuple[int, ...] = (), poll=None) -> Stop:
        """mode 'step': retire `count` instructions; 'cont': run until a breakpoint,
        a fault (faultstop on), the end of the call or an interrupt.  `temp`:
        one-shot breakpoint addresses (next, until).  `poll()`: returns True to
        interrupt; called between chunks."""
        ctx = self.ctx
        stop = Stop("done")
        if ctx.done:
            stop.lines.append(self._ended_text())
            return stop
        self._interrupt = False
        nsys = len(ctx.result.syscalls)
        remaining = count if mode == "step" else None
        if self._reveal is not None:
            self._end_walk()             # handled already; the rest of the walk is skipped
        elif self._pending() is not None:
            before = ctx.index
            fault_rip = ctx.rip
            stop.lines.append(self.handled_line(self._handle_pending()))
            if remaining is not None and ctx.index > before:
                remaining -= 1           # a skip retires the faulting instruction
            if ctx.done or remaining == 0:
                stop.reason = "done" if ctx.done else "step"
                return self._finish_stop(stop, nsys)
            if ctx.rip != fault_rip and (ctx.rip in temp or ctx.rip in self.breakpoints.values()):
                stop.reason = "breakpoint"     # the skip landed on a breakpoint: it has not run yet
                self._hit = ctx.rip
                stop.breakpoint = self._bp_number(ctx.rip)
                return self._finish_stop(stop, nsys)
        added = [a for a in temp if a not in self._hooks]
        for a in added:
            self._hooks[a] = self.m.uc.hook_add(UC_HOOK_CODE, self._on_code, None, a, a)
        if added:
            self.m.uc.ctl_flush_tb()
        prev_handler = None
        if poll is None and threading.current_thread() is threading.main_thread():
            try:
                prev_handler = signal.signal(signal.SIGINT, lambda *_: self.interrupt())
            except ValueError:
                prev_handler = None
        try:
            stop.reason = self._loop(remaining, poll, stop.lines, set(temp))
        finally:
            if prev_handler is not None:
                signal.signal(signal.SIGINT, prev_handler)
            for a in added:
                h = self._hooks.pop(a, None)
                if h is not None and a not in self.breakpoints.values():
                    self.m.uc.hook_del(h)
                elif h is not None:
                    self._hooks[a] = h
            if added:
                self.m.uc.ctl_flush_tb()
        if stop.reason == "breakpoint":
            stop.breakpoint = self._bp_number(self._hit)
        return self._finish_stop(stop, nsys)

    def _bp_number(self, addr: int | None) -> int | None:
        for num, a in self.breakpoints.items():
            if a == addr:
                return num
        return None

    def _loop(self, remaining: int | None, poll, lines: list[str], temp: set[int]) -> str:
        ctx = self.ctx
        m = self.m
        target = None if remaining is None else ctx.index + remaining
        self._resume_rip = ctx.rip
        self._left_resume = False
        last_poll = time.monotonic()
        while True:
            stop_at = ctx.index + POLL_CHUNK
            if target is not None:
                stop_at = min(stop_at, target)
            m.run(ctx, stop_at=stop_at)
            if ctx.stop_requested:
                ctx.stop_requested = False
                return "breakpoint"
            if ctx.pending_fault is not None:
                if self.faultstop:
                    return "fault"
                fault_rip = ctx.rip
                lines.append(self.handled_line(self._handle_pending()))
                if ctx.rip != fault_rip and not ctx.done and ctx.rip in self._hooks:
                    self._hit = ctx.rip          # a skip landed on a breakpoint
                    return "breakpoint"
                self._resume_rip = ctx.rip
                self._left_resume = False
            if ctx.done:
                return "done"
            if target is not None and ctx.index >= target:
                return "step"
            now = time.monotonic()
            if self._interrupt:
                return "interrupt"
            if poll is not None and now - last_poll > 0.05:
                last_poll = now
                if poll():
                    return "interrupt"

    def _sync_rip(self) -> None:
        """The architectural rip is ctx.rip: a skip (rip += length) and a syscall
        return move ctx.rip without writing Unicorn's RIP, which is what gdb
        and `regs` read."""
        ctx = self.ctx
        if not ctx.done and self.m.reg("rip") != ctx.rip:
            self.m.set_reg("rip", ctx.rip)

    def _finish_stop(self, stop: Stop, nsys: int) -> Stop:
        ctx = self.ctx
        self._sync_rip()
        for rec in ctx.result.syscalls[nsys:]:
            args = ", ".join(hex(a) for a in rec.args[:3])
            stop.lines.append(f"syscall at #{rec.index}: {rec.name}({args}) -> {rec.ret}")
        stop.lines += self._settle()
        if ctx.done:
            stop.reason = "done"
            self.caller.fill_output(self.m, ctx.result)
        return stop

    def _settle(self) -> list[str]:
        """Apply the injections due at the current instruction now, so that the
        views at this stop already show them."""
        ctx = self.ctx
        if ctx.done or ctx.pending_fault is not None:
            return []
        trace = self.m.trace
        mark = len(trace.events)
        self.m.run(ctx, stop_at=ctx.index)
        return [self._inject_line(ev) for ev in trace.events[mark:] if ev.kind == "inject"]

    def _ended_text(self) -> str:
        res = self.ctx.result
        s = (f"call {self.call_no} ended: getrandom({self.size}) -> {res.ret}  outcome={res.outcome}  "
             f"instructions={res.instructions}  cycles={res.cycles:.0f}")
        if res.outcome_detail:
            s += f"\n  {res.outcome_detail}"
        if res.output:
            h = res.output.hex()
            s += f"\n  output: {h if len(h) <= 64 else h[:32] + '...' + h[-8:]} ({len(res.output)} bytes)"
        return s

    def stop_text(self, stop: Stop) -> str:
        out = list(stop.lines)
        if stop.reason == "fault":
            out.append(self.fault_stop_text())
        elif stop.reason == "done":
            if not out or not out[-1].startswith(f"call {self.call_no} ended"):
                out.append(self._ended_text())
        else:
            if stop.reason == "breakpoint":
                out.append(f"breakpoint {stop.breakpoint}, " if stop.breakpoint else "stopped at ")
                out[-1] += self.where(self.ctx.rip)
            elif stop.reason == "interrupt":
                out.append("interrupted")
            out.append(self.status_line())
        return "\n".join(out)

    # ================================================================= commands
    def banner(self) -> str:
        img = self.kernel.image
        c = self.caller
        injs = ", ".join(str(i) for i in self.ctx.result.injections) or "none"
        lines = [f"faultpath step: image={img.name} (abi {img.abi}) __vdso_getrandom at {self.func:#x}",
                 f"call {self.call_no} of {self.call_no}: getrandom({self.size}) buffer={c.buffer:#x} "
                 f"state={c.states[0]:#x}; injections: {injs}",
                 f"policy={self.m.mm.droppable_oom} memory={self.kernel.phys.memory_pages} pages "
                 f"scenario={self.scenario.name} seed={self.cfg.seed}"]
        lines += self.start_lines
        lines.append(self.status_line())
        return "\n".join(lines)

    def execute(self, line: str, monitor: bool = False) -> str:
        """Run one command; returns its text.  Raises FaultpathError (one line) on
        bad input.  monitor=True: the GDB stub's `monitor`, where execution is
        gdb's job."""
        line = line.strip()
        if not line or line.startswith("#"):
            return ""
        if line.startswith("x/"):
            name, arg = "x", line[1:]
        else:
            name, _, arg = line.partition(" ")
        name = ALIASES.get(name, name)
        if name not in COMMANDS:
            raise UsageError(f"unknown command {name!r} (try help)")
        if monitor and name in EXECUTION:
            raise UsageError(f"{name}: use gdb's own stepi/continue/break for execution")
        return getattr(self, "cmd_" + name)(arg.strip())

    # each cmd_X returns text
    def cmd_stepi(self, arg: str) -> str:
        n = _count(arg, "stepi")
        return self.stop_text(self.resume("step", n))

    def cmd_next(self, arg: str) -> str:
        n = _count(arg, "next")
        out = []
        for _ in range(n):
            ins = self.insn_at(self.ctx.rip)
            if ins is not None and ins.mnemonic == "call" and not self.ctx.done:
                stop = self.resume("cont", temp=(self.ctx.rip + ins.size,))
                if stop.reason == "breakpoint" and stop.breakpoint is None:
                    stop.reason = "step"
            else:
                stop = self.resume("step", 1)
            out.append(self.stop_text(stop))
            if stop.reason != "step":
                break
        return "\n".join(out)

    def cmd_continue(self, arg: str) -> str:
        return self.stop_text(self.resume("cont"))

    def cmd_until(self, arg: str) -> str:
        addr = self.eval_addr(arg)
        stop = self.resume("cont", temp=(addr,))
        if stop.reason == "breakpoint" and stop.breakpoint is None:
            stop.reason = "until"
            return self.stop_text(Stop("step", stop.lines))
        return self.stop_text(stop)

    def cmd_break(self, arg: str) -> str:
        if not arg:
            return self.breakpoints_text()
        num, addr = self.add_breakpoint(arg)
        return f"breakpoint {num} at {self.where(addr)}"

    def cmd_delete(self, arg: str) -> str:
        return self.delete_breakpoints(arg)

    def cmd_regs(self, arg: str) -> str:
        if arg not in ("", "xmm"):
            raise UsageError("regs [xmm]")
        return self.regs_text(arg == "xmm")

    def cmd_x(self, arg: str) -> str:
        return self.examine(arg)

    def cmd_dis(self, arg: str) -> str:
        return self.disassemble(_count(arg, "dis", 9))

    def cmd_vmas(self, arg: str) -> str:
        return self.vmas_text()

    def cmd_pages(self, arg: str) -> str:
        return self.pages_text(arg)

    def cmd_faults(self, arg: str) -> str:
        return self.faults_text()

    def cmd_fault(self, arg: str) -> str:
        return self.fault_text()

    def cmd_fstep(self, arg: str) -> str:
        return self.fstep()

    def cmd_inject(self, arg: str) -> str:
        if not arg:
            raise UsageError("inject KIND (drop, oom, oom-off, oom:K, fork, reseed, not-ready, ready)")
        return self.inject(arg)

    def cmd_policy(self, arg: str) -> str:
        if not arg:
            return f"droppable-oom policy: {self.m.mm.droppable_oom}"
        return self.set_policy(arg)

    def cmd_memory(self, arg: str) -> str:
        return self.set_memory(arg) if arg else self.memory_text()

    def cmd_cycles(self, arg: str) -> str:
        return self.cycles_text()

    def cmd_trace(self, arg: str) -> str:
        return self.trace_text(arg)

    def cmd_faultstop(self, arg: str) -> str:
        if arg:
            if arg not in ("on", "off"):
                raise UsageError("faultstop on|off")
            self.faultstop = arg == "on"
        return f"stop at faults: {'on' if self.faultstop else 'off'}"

    def cmd_where(self, arg: str) -> str:
        if self._pending():
            return self.fault_stop_text()
        return self.status_line()

    def cmd_help(self, arg: str) -> str:
        return "\n".join(f"  {usage:<26} {text}" for usage, text in HELP)


def _count(arg: str, what: str, default: int = 1) -> int:
    if not arg.strip():
        return default
    try:
        n = int(arg, 0)
    except ValueError:
        raise UsageError(f"{what} {arg!r}: expected a count") from None
    if not 1 <= n <= 100_000_000:
        raise UsageError(f"{what}: count out of range")
    return n


def _fmt(v) -> str:
    if isinstance(v, bool) or v is None:
        return str(v)
    if isinstance(v, int):
        return hex(v) if v > 0xFFFF else str(v)
    if isinstance(v, float):
        return f"{v:g}"
    if isinstance(v, (tuple, list)):
        return "(" + ",".join(_fmt(x) for x in v) + ")"
    return str(v)


HELP = [
    ("stepi [N]", "retire N instructions (carries out a pending fault first)"),
    ("next [N]", "like stepi, but steps over a call"),
    ("continue", "run to a breakpoint, a fault or the end of the call"),
    ("until ADDR", "run until rip == ADDR"),
    ("break [ADDR|SYM[+OFF]]", "set a breakpoint (no argument: list them)"),
    ("delete [N...]", "delete breakpoints (all without arguments)"),
    ("regs [xmm]", "registers"),
    ("x/FMT ADDR", "examine memory: x/[N][x|d|u|i|s|c][b|h|w|g]"),
    ("dis [N]", "disassemble around rip (=> marks rip, * breakpoints)"),
    ("vmas", "VMAs with flags (smaps VmFlags; dp = droppable)"),
    ("pages [ADDR]", "per-page state: present, zero page, dropped, COW, swapped"),
    ("faults", "faults of this call"),
    ("fault", "the current (or last) fault and its stages"),
    ("fstep", "walk the pending fault's handling one stage at a time"),
    ("inject KIND", "inject now: drop, oom, oom-off, oom:K, fork, reseed, not-ready, ready"),
    ("policy [skip|retry]", "droppable-oom design"),
    ("memory [PAGES]", "frame budget"),
    ("faultstop [on|off]", "stop at faults before handling them (default on)"),
    ("cycles", "instructions and cycles so far"),
    ("trace [N]", "the last N trace events"),
    ("where", "the current stop"),
    ("quit", "leave"),
]
COMMANDS = {u.split()[0] for u, _ in HELP} | {"x", "help"}
COMMANDS.discard("x/FMT")
ALIASES = {"si": "stepi", "s": "stepi", "step": "stepi", "ni": "next", "n": "next", "c": "continue",
           "cont": "continue", "u": "until", "b": "break", "d": "delete", "disas": "dis", "q": "quit",
           "exit": "quit"}
EXECUTION = {"stepi", "next", "continue", "until", "break", "delete", "fstep", "quit"}
MONITOR_COMMANDS = sorted(COMMANDS - EXECUTION)
