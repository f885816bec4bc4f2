"""Watchpoints: ranged memory hooks plus a value/page check between stops.

A user store or load of watched bytes is caught by a UC_HOOK_MEM_WRITE /
UC_HOOK_MEM_READ hook whose range is the watched bytes, extended down by
LOOKBEHIND bytes because Unicorn matches a hook's range against the
*start* of an access (an 8-byte store at state+130 covers in_use at +137).
No per-instruction hook: the hooks exist only while a watchpoint does.

What Unicorn 2.1.4 does when such a hook calls emu_stop (measured, see
tests/test_step_watch.py): the CPU stops *at* the accessing instruction with
its registers as they were before it, and a store has already been
committed to memory (a `push` has not moved rsp, `rep stos` has not counted
rcx down, but the bytes are written).  Re-running the instruction from
there would apply it twice (`add [m], 2` adds 4).  So the hook journals the
bytes each watched store is about to overwrite, and the session puts them
back before anything looks at memory: the process is then exactly before
the instruction, which the session steps over with the hooks muted.

Everything else that can change watched bytes happens outside the CPU and is
found by comparing the watched bytes and their page's state at each stop
(WatchSet.changes): the kernel's own copies (copy_to_user in a syscall), a
drop or wipe of the page ("watched memory dropped"), a fault that maps it.
The session then finds the exact point by deterministic re-execution.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from unicorn import UC_HOOK_MEM_READ, UC_HOOK_MEM_WRITE, UC_MEM_WRITE, UC_MEM_WRITE_PROT
from unicorn import x86_const as X

from emulator.fault import pte_state
from mm.flags import PAGE_SIZE

LOOKBEHIND = 63          # the largest access Unicorn reports as one piece is 16 bytes; fxsave-like
                         # multi-piece stores come as pieces of at most 16

# Why a watchpoint stopped the call, by name (shown in stop messages and `info watchpoints`).
REASONS = {
    "write": "written",
    "read": "read",
    "store-faulted": "a store to watched memory faulted",
    "store-skipped": "a store to watched memory was skipped by the OOM handler (VM_FAULT_SKIP_INSN)",
    "kernel-write": "written by the kernel",
    "dropped": "watched memory dropped",
    "changed": "changed",
}


@dataclass
class Watch:
    num: int
    addr: int
    length: int
    kind: str                       # write | read | access
    origin: str = "user"            # user | gdb (gdb's go when gdb disconnects)
    hooks: list[int] = field(default_factory=list)
    hits: int = 0
    expr: str = ""

    def covers(self, addr: int, size: int) -> bool:
        return addr < self.addr + self.length and self.addr < addr + size

    @property
    def pages(self) -> range:
        return range(self.addr & ~(PAGE_SIZE - 1), self.addr + self.length, PAGE_SIZE)


@dataclass
class WatchHit:
    """One trigger of a watchpoint."""
    watch: Watch
    why: str                        # a key of REASONS
    old: bytes
    new: bytes
    index: int                      # instruction index of the stop
    rip: int                        # the instruction responsible (the writer, the faulting store)
    detail: str = ""

    @property
    def changed(self) -> bool:
        return self.old != self.new

    @property
    def report_addr(self) -> int:
        return self.watch.addr

    def text(self, where, reverse: bool = False) -> str:
        w = self.watch
        what = REASONS.get(self.why, self.why)
        s = f"watchpoint {w.num} ({w.expr or hex(w.addr)}, {w.length} byte(s)): {what}"
        if self.detail:
            s += f" ({self.detail})"
        if self.why in ("dropped", "changed"):
            s += f" at #{self.index}, rip {where(self.rip)}"
        else:
            s += f" at #{self.index} by {where(self.rip)}"
        if reverse and self.why in ("write", "read", "kernel-write"):
            s += " (going back: stopped before it runs)"
        if self.changed:
            s += f"\n  old: {self.old.hex(' ')}\n  new: {self.new.hex(' ')}"
        else:
            s += f"\n  value: {self.new.hex(' ')} (unchanged)"
        return s


@dataclass
class HookHit:
    """What a memory hook saw, for the session to act on after the CPU stops."""
    watch: Watch
    access: str                     # read | write
    address: int
    size: int
    rip: int


class WatchSet:
    def __init__(self, task):
        self.task = task
        self.watches: dict[int, Watch] = {}
        self.muted = False              # stepping over the instruction that hit
        self.replaying = False          # re-execution: hits are recorded, not stopped at
        self.hit: HookHit | None = None
        self.journal: list[tuple[int, bytes]] = []   # (address, bytes before a watched store)
        self.on_hit = None              # callable(HookHit) -> bool: stop the CPU?

    # ------------------------------------------------------------------ set-up
    def add(self, num: int, addr: int, length: int, kind: str, origin: str = "user", expr: str = "") -> Watch:
        """A new watchpoint numbered `num` (the session numbers breakpoints and
        watchpoints in one sequence, as gdb does)."""
        w = Watch(num, addr, length, kind, origin, expr=expr)
        uc = self.task.uc
        lo = max(0, addr - LOOKBEHIND)
        hi = addr + length - 1
        if kind in ("write", "access"):
            w.hooks.append(uc.hook_add(UC_HOOK_MEM_WRITE, self._on_access, w, lo, hi))
        if kind in ("read", "access"):
            w.hooks.append(uc.hook_add(UC_HOOK_MEM_READ, self._on_access, w, lo, hi))
        uc.ctl_flush_tb()             # translated blocks do not call hooks added after them
        self.watches[w.num] = w
        return w

    def remove(self, w: Watch) -> None:
        for h in w.hooks:
            self.task.uc.hook_del(h)
        w.hooks.clear()
        self.task.uc.ctl_flush_tb()
        self.watches.pop(w.num, None)

    def find(self, addr: int, length: int, kind: str) -> Watch | None:
        for w in self.watches.values():
            if (w.addr, w.length, w.kind) == (addr, length, kind):
                return w
        return None

    def covering(self, addr: int, size: int, kinds: tuple[str, ...]) -> Watch | None:
        for w in self.watches.values():
            if w.kind in kinds and w.covers(addr, size):
                return w
        return None

    # ------------------------------------------------------------------ the hook
    def _on_access(self, uc, access, address, size, value, w: Watch) -> None:
        try:
            if self.muted or not w.covers(address, size):
                return
            is_write = access in (UC_MEM_WRITE, UC_MEM_WRITE_PROT)
            if is_write:
                # the store commits before the CPU stops: keep what it overwrites
                self.journal.append((address, bytes(uc.mem_read(address, size))))
            if self.hit is None:
                self.hit = HookHit(w, "write" if is_write else "read", address, size,
                                   uc.reg_read(X.UC_X86_REG_RIP))
            if self.on_hit is None or self.on_hit(self.hit):
                uc.emu_stop()
        except BaseException:      # never let an exception vanish inside Unicorn
            uc.emu_stop()

    def undo_journal(self) -> None:
        """Put back the bytes of watched stores the CPU committed before it stopped
        (newest first, so the oldest value of a byte wins)."""
        uc = self.task.uc
        for address, old in reversed(self.journal):
            # Only where the store did land: a store that faulted wrote nothing, and
            # its page may be the shared zero page or a snapshot's frame.
            if bytes(uc.mem_read(address, len(old))) != old:
                uc.mem_write(address, old)
        self.journal.clear()

    # ------------------------------------------------------------------ the between-stops check
    def state(self) -> dict[int, tuple[bytes, str]]:
        """Watched bytes and their page's state, per watchpoint."""
        out = {}
        for w in self.watches.values():
            out[w.num] = (self.task.read(w.addr, w.length), _page_kind(self.task, w.addr))
        return out

    def changes(self, before: dict[int, tuple[bytes, str]]) -> list[tuple[Watch, str, bytes, bytes]]:
        """(watch, why, old, new) for each write/access watchpoint whose bytes changed
        or whose page was dropped since `before`."""
        out = []
        now = self.state()
        for num, (old, kind) in before.items():
            w = self.watches.get(num)
            if w is None or w.kind == "read" or num not in now:
                continue
            new, kind2 = now[num]
            dropped = kind in ("present", "zero") and kind2 in ("dropped", "not-present", "none")
            if dropped:
                out.append((w, "dropped", old, new))
            elif new != old:
                out.append((w, "changed", old, new))
        return out


def _page_kind(task, addr: int) -> str:
    st = pte_state(task, addr)
    if st.startswith("present"):
        return "present"
    if st.startswith("zero-page"):
        return "zero"
    if st.startswith("swapped"):
        return "swapped"
    return st
