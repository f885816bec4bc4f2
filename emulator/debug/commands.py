"""The stepper's command language: one table, parsed in one place.

`execute(session, line)` runs one command and returns its text; bad input
raises a FaultpathError with a one-line message.  The REPL
(emulator/cli/step.py), `-c`/`--script` and the GDB stub's `monitor` all go
through here, so a command means the same thing everywhere.  Under
`monitor`, commands that move the call are refused: execution is gdb's job.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from emulator.errors import UsageError
from emulator.debug import views
from emulator.debug.session import Stop

if TYPE_CHECKING:
    from emulator.debug.session import Session


@dataclass(frozen=True)
class Command:
    name: str
    usage: str
    help: str
    run: Callable[["Session", str], str]
    aliases: tuple[str, ...] = ()
    moves: bool = False           # moves the call (refused under gdb's monitor)
    repeat: bool = False          # an empty line repeats it, as in gdb


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


# ---------------------------------------------------------------------------- execution
def _stepi(s: "Session", arg: str) -> str:
    return views.stop_text(s, s.resume("step", _count(arg, "stepi")))


def _next(s: "Session", arg: str) -> str:
    out = []
    for _ in range(_count(arg, "next")):
        ins = s.insn_at(s.ctx.rip)
        if ins is not None and ins.mnemonic == "call" and not s.ctx.done:
            stop = s.resume("cont", temp=(s.ctx.rip + ins.size,))
            if stop.reason == "breakpoint" and stop.breakpoint is None:
                stop.reason = "step"
        else:
            stop = s.resume("step", 1)
        out.append(views.stop_text(s, stop))
        if stop.reason != "step":
            break
    return "\n".join(out)


def _continue(s: "Session", arg: str) -> str:
    return views.stop_text(s, s.resume("cont"))


def _until(s: "Session", arg: str) -> str:
    addr = s.eval_addr(arg)
    stop = s.resume("cont", temp=(addr,))
    if stop.reason == "breakpoint" and stop.breakpoint is None:
        return views.stop_text(s, Stop("step", stop.events, stop.syscalls))
    return views.stop_text(s, stop)


def _break(s: "Session", arg: str) -> str:
    if not arg:
        return views.breakpoints(s)
    num, addr = s.add_breakpoint(arg)
    return f"breakpoint {num} at {s.where(addr)}"


def _delete(s: "Session", arg: str) -> str:
    if not arg.strip():
        n = len(s.breakpoints)
        for a in list(s.breakpoints.values()):
            s.remove_breakpoint_at(a)
        return f"deleted {n} breakpoint(s)"
    out = []
    for tok in arg.split():
        try:
            num = int(tok)
        except ValueError:
            raise UsageError(f"delete {tok!r}: expected a breakpoint number") from None
        s.delete_breakpoint(num)
        out.append(f"deleted breakpoint {num}")
    return "\n".join(out)


def _fstep(s: "Session", arg: str) -> str:
    out = []
    if s.walk is None:
        info = s.start_walk()
        out.append(f"handling fault at #{info['index']} rip={s.where(info['rip'])}: "
                   f"{len(info['events'])} stages")
    info = s.walk
    events = info["events"]
    if info["pos"] < len(events):
        ev = events[info["pos"]]
        line = views.stage_line(info["pos"], len(events), ev)
        help_ = views.STAGE_HELP.get(ev.kind)
        out.append(line + (f"\n    ({help_})" if help_ else ""))
        info["pos"] += 1
    if info["pos"] >= len(events):
        s.walk = None
        out.append(views.handled_line(s, info))
        out += [views.inject_line(ev) for ev in s.settle()]
        out.append(views.status_line(s))
    return "\n".join(out)


# ---------------------------------------------------------------------------- views and knobs
def _regs(s: "Session", arg: str) -> str:
    if arg not in ("", "xmm"):
        raise UsageError("regs [xmm]")
    return views.registers(s, arg == "xmm")


def _inject(s: "Session", arg: str) -> str:
    if not arg:
        raise UsageError("inject KIND (drop, oom, oom-off, oom:K, fork, reseed, not-ready, ready)")
    events = s.inject(arg)
    lines = [views.inject_line(ev) for ev in events] or [f"injected {arg} at #{s.ctx.index}"]
    return "\n".join(lines) + views.prediction_suffix(s)


def _policy(s: "Session", arg: str) -> str:
    if not arg:
        return f"droppable-oom policy: {s.m.mm.droppable_oom}"
    s.set_policy(arg.strip())
    return f"droppable-oom policy: {arg.strip()}" + views.prediction_suffix(s)


def _memory(s: "Session", arg: str) -> str:
    if not arg:
        return views.memory(s)
    try:
        n = int(arg, 0)
    except ValueError:
        raise UsageError(f"memory {arg!r}: expected a number of pages") from None
    s.set_memory(n)
    return views.memory(s) + views.prediction_suffix(s)


def _faultstop(s: "Session", arg: str) -> str:
    if arg:
        if arg not in ("on", "off"):
            raise UsageError("faultstop on|off")
        s.faultstop = arg == "on"
    return f"stop at faults: {'on' if s.faultstop else 'off'}"


def _where(s: "Session", arg: str) -> str:
    return views.fault_stop(s) if s.pending() else views.status_line(s)


def _help(s: "Session", arg: str) -> str:
    return help_text(arg.strip())


def _quit(s: "Session", arg: str) -> str:
    return ""


COMMANDS: list[Command] = [
    Command("stepi", "stepi [N]", "retire N instructions (carries out a pending fault first)", _stepi,
            ("si", "s", "step"), moves=True, repeat=True),
    Command("next", "next [N]", "like stepi, but steps over a call", _next, ("ni", "n"), moves=True, repeat=True),
    Command("continue", "continue", "run to a breakpoint, a fault or the end of the call", _continue,
            ("c", "cont"), moves=True),
    Command("until", "until ADDR", "run until rip == ADDR", _until, ("u",), moves=True),
    Command("break", "break [ADDR|SYM[+OFF]]", "set a breakpoint (no argument: list them)", _break, ("b",),
            moves=True),
    Command("delete", "delete [N...]", "delete breakpoints (all without arguments)", _delete, ("d",), moves=True),
    Command("regs", "regs [xmm]", "registers", _regs),
    Command("x", "x/FMT ADDR", "examine memory: x/[N][x|d|u|i|s|c][b|h|w|g]", lambda s, a: views.examine(s, a)),
    Command("dis", "dis [N]", "disassemble around rip (=> marks rip, * breakpoints)",
            lambda s, a: views.disassemble(s, _count(a, "dis", 9)), ("disas",)),
    Command("vmas", "vmas", "VMAs with flags (smaps VmFlags; dp = droppable)", lambda s, a: views.vmas(s)),
    Command("pages", "pages [ADDR]", "per-page state: present, zero page, dropped, COW, swapped",
            lambda s, a: views.pages(s, a)),
    Command("faults", "faults", "faults of this call", lambda s, a: views.faults(s)),
    Command("fault", "fault", "the current (or last) fault and its stages", lambda s, a: views.fault(s)),
    Command("fstep", "fstep", "walk the pending fault's handling one stage at a time", _fstep, moves=True,
            repeat=True),
    Command("inject", "inject KIND", "inject now: drop, oom, oom-off, oom:K, fork, reseed, not-ready, ready",
            _inject),
    Command("policy", "policy [skip|retry]", "droppable-oom design", _policy),
    Command("memory", "memory [PAGES]", "frame budget", _memory),
    Command("faultstop", "faultstop [on|off]", "stop at faults before handling them (default on)", _faultstop),
    Command("cycles", "cycles", "instructions and cycles so far", lambda s, a: views.cycles(s)),
    Command("trace", "trace [N]", "the last N trace events", lambda s, a: views.trace(s, a)),
    Command("where", "where", "the current stop", _where),
    Command("help", "help [CMD]", "this list, or one command with its aliases", _help),
    Command("quit", "quit", "leave", _quit, ("q", "exit"), moves=True),
]
BY_NAME = {c.name: c for c in COMMANDS}
ALIASES = {a: c.name for c in COMMANDS for a in c.aliases}
MONITOR_COMMANDS = [c.name for c in COMMANDS if not c.moves]


def lookup(word: str) -> Command:
    name = ALIASES.get(word, word)
    cmd = BY_NAME.get(name)
    if cmd is None:
        raise UsageError(f"unknown command {word!r} (try help)")
    return cmd


def split(line: str) -> tuple[str, str]:
    """(command word, argument); `x/4xb ADDR` is `x` with argument `/4xb ADDR`."""
    line = line.strip()
    if line.startswith("x/"):
        return "x", line[1:]
    word, _, arg = line.partition(" ")
    return word, arg.strip()


def execute(s: "Session", line: str, monitor: bool = False) -> str:
    """Run one command; returns its text.  Raises FaultpathError (one line) on
    bad input.  monitor=True: the GDB stub's `monitor`, where execution is
    gdb's job."""
    line = line.strip()
    if not line or line.startswith("#"):
        return ""
    word, arg = split(line)
    cmd = lookup(word)
    if monitor and cmd.moves:
        raise UsageError(f"{cmd.name}: use gdb's own stepi/continue/break for execution")
    return cmd.run(s, arg)


def help_text(arg: str = "", monitor: bool = False) -> str:
    if arg:
        cmd = lookup(arg.split()[0])
        out = [f"{cmd.usage}", f"  {cmd.help}"]
        if cmd.aliases:
            out.append(f"  aliases: {', '.join(cmd.aliases)}")
        if cmd.repeat:
            out.append("  an empty line repeats it")
        return "\n".join(out)
    shown = [c for c in COMMANDS if not (monitor and c.moves)]
    return "\n".join(f"  {c.usage:<26} {c.help}" for c in shown)
