"""The stepper's command language: one table, parsed in one place.

`execute(session, line)` runs one command and returns its text; bad input
raises a FaultpathError with a one-line message.  The REPL
(emulator/cli/step.py), `-c`/`--script` and the GDB stub's `monitor` all go
through here, so a command means the same thing everywhere.  Under
`monitor`, commands that move the call are refused: execution is gdb's job.
Names follow gdb's where gdb has the command (stepi, next, finish, watch,
reverse-stepi, info ..., display), with gdb's short aliases.
"""
from __future__ import annotations

from dataclasses import dataclass
from typing import TYPE_CHECKING, Callable

from emulator.debug import views
from emulator.debug.session import Stop
from emulator.debug.symbols import REG_NAMES
from emulator.errors import UsageError

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
    args: str = ""                # what completes after it: "symbol", "info", "command", "inject", ...


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


# ---------------------------------------------------------------------------- moving the call
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
        stop = Stop("step", stop.events, stop.syscalls)
    return views.stop_text(s, stop)


def _finish(s: "Session", arg: str) -> str:
    """Run until the current function returns to its caller (frame 1)."""
    from emulator.debug.unwind import frames
    if s.ctx.done:
        raise UsageError("the call has ended")
    fs = frames(s)
    if len(fs) < 2:
        raise UsageError("finish: no caller frame (bt shows the frames)")
    ret, cfa = fs[1].pc, fs[0].cfa
    name = s.symbols.function_at(fs[0].pc)
    head = f"run till exit from #0 {s.where(fs[0].pc)}" + (f" ({name[1]})" if name else "")
    while True:
        stop = s.resume("cont", temp=(ret,))
        # a recursive call reaching `ret` deeper in the stack is not our return
        if stop.reason == "breakpoint" and stop.breakpoint is None and s.m.reg("rsp") < cfa:
            continue
        if stop.reason == "breakpoint" and stop.breakpoint is None:
            stop = Stop("step", stop.events, stop.syscalls)
        return head + "\n" + views.stop_text(s, stop)


def _reverse_stepi(s: "Session", arg: str) -> str:
    return views.stop_text(s, s.reverse("step", _count(arg, "reverse-stepi")))


def _reverse_nexti(s: "Session", arg: str) -> str:
    out = []
    for _ in range(_count(arg, "reverse-nexti")):
        stop = s.reverse("next")
        out.append(views.stop_text(s, stop))
        if stop.reason != "step":
            break
    return "\n".join(out)


def _reverse_continue(s: "Session", arg: str) -> str:
    return views.stop_text(s, s.reverse("cont"))


def _restart(s: "Session", arg: str) -> str:
    stop = s.restart()
    return f"restarted call {s.call_no} at #0\n" + views.stop_text(s, stop)


def _break(s: "Session", arg: str) -> str:
    if not arg:
        return views.breakpoints(s)
    num, addr = s.add_breakpoint(arg)
    return f"breakpoint {num} at {s.where(addr)}"


def _watch_kind(kind: str) -> Callable[["Session", str], str]:
    def run(s: "Session", arg: str) -> str:
        if not arg.strip():
            return views.watchpoints(s)
        expr, _, length = arg.strip().partition(" ")
        addr, size = s.symbols.object_at(expr, s.m.reg)
        if length.strip():
            size = _count(length, "watch length")
        w = s.add_watch(addr, size, kind, expr=expr)
        return f"watchpoint {w.num} ({kind}): {expr} at {s.where(addr)}, {size} byte(s), value " \
               f"{s.read_memory(addr, size).hex(' ') or '(unmapped)'}"
    return run


def _delete(s: "Session", arg: str) -> str:
    if not arg.strip():
        n = len(s.breakpoints) + len(s.watches.watches)
        for a in list(s.breakpoints.values()):
            s.remove_breakpoint_at(a)
        for w in list(s.watches.watches.values()):
            s.delete_watch(w.num)
        return f"deleted {n} breakpoint(s) and watchpoint(s)"
    out = []
    for tok in arg.split():
        try:
            num = int(tok)
        except ValueError:
            raise UsageError(f"delete {tok!r}: expected a breakpoint or watchpoint number") from None
        if num in s.breakpoints:
            s.delete_breakpoint(num)
            out.append(f"deleted breakpoint {num}")
        else:
            s.delete_watch(num)
            out.append(f"deleted watchpoint {num}")
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
    return f"stop at faults (user faults before handling, kernel faults after their syscall): " \
           f"{'on' if s.faultstop else 'off'}"


def _where(s: "Session", arg: str) -> str:
    head = views.fault_stop(s) if s.pending() else views.status_line(s)
    return head if s.ctx.done else head + "\n" + views.backtrace(s)


def _display(s: "Session", arg: str) -> str:
    if not arg.strip():
        return display_text(s) or "no displays"
    expr = arg.strip()
    text = run_display(s, expr)       # refuses what it cannot show, before keeping it
    s.displays.append(expr)
    return f"{len(s.displays)}: {expr}\n{text}"


def _undisplay(s: "Session", arg: str) -> str:
    if not arg.strip():
        n = len(s.displays)
        s.displays.clear()
        return f"deleted {n} display(s)"
    out = []
    for tok in sorted(arg.split(), key=lambda t: -int(t) if t.isdigit() else 0):
        if not tok.isdigit() or not 1 <= int(tok) <= len(s.displays):
            raise UsageError(f"undisplay {tok!r}: no such display")
        del s.displays[int(tok) - 1]
        out.append(f"deleted display {tok}")
    return "\n".join(out)


def run_display(s: "Session", expr: str) -> str:
    """One display: `/FMT ADDR` (as x/FMT), `$reg`, or a command that shows something."""
    if expr.startswith("/"):
        return views.examine(s, expr)
    name = expr.lstrip("$").lower()
    if expr.startswith("$") and name in REG_NAMES:
        v = s.eval_addr(expr)
        return f"{expr} = {v:#x} ({v})"
    cmd = lookup(split(expr)[0])
    if cmd.moves or cmd.name in ("display", "undisplay", "help", "quit"):
        raise UsageError(f"display {expr}: not something to show at every stop")
    return cmd.run(s, split(expr)[1])


def display_text(s: "Session") -> str:
    out = []
    for i, expr in enumerate(s.displays, start=1):
        try:
            text = run_display(s, expr)
        except UsageError as e:
            text = f"(cannot show: {e})"
        out.append(f"{i}: {expr}\n{text}")
    return "\n".join(out)


INFO = {
    "registers": lambda s, a: _regs(s, a),
    "breakpoints": lambda s, a: views.breakpoints(s),
    "watchpoints": lambda s, a: views.watchpoints(s),
    "vmas": lambda s, a: views.vmas(s),
    "state": lambda s, a: views.state(s, a),
    "faults": lambda s, a: views.faults(s),
    "display": lambda s, a: display_text(s) or "no displays",
    "memory": lambda s, a: views.memory(s),
    "frame": lambda s, a: views.backtrace(s),
}


def _info(s: "Session", arg: str) -> str:
    what, _, rest = arg.strip().partition(" ")
    if not what:
        raise UsageError(f"info {'|'.join(INFO)}")
    matches = [k for k in INFO if k.startswith(what)]
    if what in INFO:
        matches = [what]
    if len(matches) != 1:
        raise UsageError(f"info {what!r}: " + ("ambiguous" if matches else "unknown") + f" (info {'|'.join(INFO)})")
    return INFO[matches[0]](s, rest.strip())


def _help(s: "Session", arg: str) -> str:
    return help_text(arg.strip())


def _quit(s: "Session", arg: str) -> str:
    return ""


COMMANDS: list[Command] = [
    Command("stepi", "stepi [N]", "retire N instructions (carries out a pending fault first)", _stepi,
            ("si", "s", "step"), moves=True, repeat=True),
    Command("next", "next [N]", "like stepi, but steps over a call", _next, ("ni", "n", "nexti"), moves=True,
            repeat=True),
    Command("continue", "continue", "run to a breakpoint, a watchpoint, a fault or the end of the call",
            _continue, ("c", "cont"), moves=True),
    Command("until", "until ADDR", "run until rip == ADDR", _until, ("u",), moves=True, args="symbol"),
    Command("finish", "finish", "run until the current function returns", _finish, ("fin",), moves=True),
    Command("reverse-stepi", "reverse-stepi [N]", "go back N instructions (re-executes from a snapshot)",
            _reverse_stepi, ("rsi", "rs"), moves=True, repeat=True),
    Command("reverse-nexti", "reverse-nexti [N]", "like reverse-stepi, but steps back over a call",
            _reverse_nexti, ("rni", "rn"), moves=True, repeat=True),
    Command("reverse-continue", "reverse-continue",
            "go back to the last breakpoint, watchpoint trigger or fault stop", _reverse_continue, ("rc",),
            moves=True),
    Command("restart", "restart", "back to instruction 0 of the call (changes made by hand are undone)",
            _restart, ("run", "r"), moves=True),
    Command("break", "break [ADDR|SYM[+OFF]]", "set a breakpoint (no argument: list them)", _break, ("b",),
            moves=True, args="symbol"),
    Command("watch", "watch [ADDR|SYM|state.FIELD [LEN]]",
            "stop when the bytes are written, a store to them faults or is skipped, or their page is dropped",
            _watch_kind("write"), moves=True, args="symbol"),
    Command("rwatch", "rwatch ADDR|SYM [LEN]", "stop when the bytes are read", _watch_kind("read"), moves=True,
            args="symbol"),
    Command("awatch", "awatch ADDR|SYM [LEN]", "stop when the bytes are read or written", _watch_kind("access"),
            moves=True, args="symbol"),
    Command("delete", "delete [N...]", "delete breakpoints and watchpoints (all without arguments)", _delete,
            ("d",), moves=True),
    Command("bt", "bt", "the call frames, from the image's CFI", lambda s, a: views.backtrace(s), ("backtrace",)),
    Command("where", "where", "the current stop and the call frames", _where),
    Command("info", "info registers|breakpoints|watchpoints|vmas|state|faults|display|memory|frame",
            "what gdb's info shows, for this process", _info, ("i",), args="info"),
    Command("regs", "regs [xmm]", "registers", _regs),
    Command("x", "x/FMT ADDR", "examine memory: x/[N][x|d|u|i|s|c][b|h|w|g]", lambda s, a: views.examine(s, a),
            args="symbol"),
    Command("dis", "dis [N]", "disassemble around rip (=> marks rip, * breakpoints)",
            lambda s, a: views.disassemble(s, _count(a, "dis", 9)), ("disas", "disassemble")),
    Command("vmas", "vmas", "VMAs with flags (smaps VmFlags; dp = droppable)", lambda s, a: views.vmas(s)),
    Command("pages", "pages [ADDR]", "per-page state: present, zero page, dropped, COW, swapped",
            lambda s, a: views.pages(s, a), args="symbol"),
    Command("faults", "faults", "faults of this call", lambda s, a: views.faults(s)),
    Command("fault", "fault", "the current (or last) fault and its stages", lambda s, a: views.fault(s)),
    Command("fstep", "fstep", "walk the pending fault's handling one stage at a time", _fstep, moves=True,
            repeat=True),
    Command("inject", "inject KIND", "inject now: drop, oom, oom-off, oom:K, fork, reseed, not-ready, ready",
            _inject, args="inject"),
    Command("policy", "policy [skip|retry]", "droppable-oom design", _policy, args="policy"),
    Command("memory", "memory [PAGES]", "frame budget", _memory),
    Command("faultstop", "faultstop [on|off]", "stop at faults (default on)", _faultstop, args="onoff"),
    Command("cycles", "cycles", "instructions and cycles so far", lambda s, a: views.cycles(s)),
    Command("trace", "trace [N]", "the last N trace events", lambda s, a: views.trace(s, a)),
    Command("display", "display [/FMT ADDR|$REG|CMD]", "show this after every command that moves the call",
            _display, args="command"),
    Command("undisplay", "undisplay [N...]", "stop displaying (all without arguments)", _undisplay),
    Command("help", "help [CMD]", "this list, or one command with its aliases", _help, ("h",), args="command"),
    Command("quit", "quit", "leave", _quit, ("q", "exit"), moves=True),
]
BY_NAME = {c.name: c for c in COMMANDS}
ALIASES = {a: c.name for c in COMMANDS for a in c.aliases}
MONITOR_COMMANDS = [c.name for c in COMMANDS if not c.moves]
COMPLETIONS = {
    "info": sorted(INFO),
    "inject": ["drop", "oom", "oom-off", "oom:", "fork", "reseed", "not-ready", "ready"],
    "policy": ["skip", "retry"],
    "onoff": ["on", "off"],
}


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
    if line.startswith("display/"):
        return "display", line[len("display"):]
    word, _, arg = line.partition(" ")
    return word, arg.strip()


def execute(s: "Session", line: str, monitor: bool = False) -> str:
    """Run one command; returns its text (and the displays after a command that
    moved the call).  Raises FaultpathError (one line) on bad input.
    monitor=True: the GDB stub's `monitor`, where execution is gdb's job."""
    line = line.strip()
    if not line or line.startswith("#"):
        return ""
    word, arg = split(line)
    cmd = lookup(word)
    if monitor and cmd.moves:
        raise UsageError(f"{cmd.name}: use gdb's own commands to move the call")
    out = cmd.run(s, arg)
    if cmd.moves and s.displays and cmd.name not in ("break", "delete", "watch", "rwatch", "awatch", "quit"):
        out += "\n" + display_text(s)
    return out


def help_text(arg: str = "", monitor: bool = False) -> str:
    if arg:
        cmd = lookup(arg.split()[0])
        out = [f"{cmd.usage}", f"  {cmd.help}"]
        if cmd.aliases:
            out.append(f"  aliases: {', '.join(cmd.aliases)}")
        if cmd.repeat:
            out.append("  an empty line repeats it")
        if monitor is False and cmd.moves:
            out.append("  (not available as a gdb monitor command: gdb moves the call)")
        return "\n".join(out)
    shown = [c for c in COMMANDS if not (monitor and c.moves)]
    return "\n".join(f"  {c.usage:<34} {c.help}" for c in shown)


def complete(s: "Session | None", line: str) -> list[str]:
    """Completions of the last word of `line` (the REPL's tab)."""
    words = line.split(" ")
    if len(words) <= 1:
        text = words[0] if words else ""
        return sorted(n for n in set(BY_NAME) | set(ALIASES) if n.startswith(text))
    text = words[-1]
    try:
        cmd = lookup(words[0])
    except UsageError:
        return []
    if cmd.args == "command":
        pool = list(BY_NAME) + list(ALIASES)
    elif cmd.args == "symbol":
        pool = s.symbols.names() if s is not None else []
        pool += [f"state.{f}" for f in ("batch", "key", "generation", "pos", "in_use")]
        pool += ["vdso_rng_data.generation", "vdso_rng_data.is_ready"]
        pool += [f"${r}" for r in sorted(REG_NAMES)]
        text = text.lstrip("*")
    else:
        pool = COMPLETIONS.get(cmd.args, [])
    return sorted({p for p in pool if p.startswith(text)})
