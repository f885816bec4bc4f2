"""`faultpath step`: an interactive stepper over the fault path.

The process is set up like `faultpath run`; calls 1..K-1 run normally and the
REPL stops at instruction 0 of call K (--calls, default 2 so the state is
warm).  Commands are emulator/debug/commands.py's, over a Session
(emulator/debug/session.py); this module is only the shell: the stdlib
`cmd` loop with readline history, and the non-interactive `-c "cmd; cmd"` /
`--script FILE` modes whose output is deterministic enough to diff (each
command is echoed after the prompt, then its output).
"""
from __future__ import annotations

import argparse
import cmd
import os
import sys

from emulator.errors import FaultpathError, UsageError

PROMPT = "(faultpath) "
HISTORY_LEN = 1000
MAX_SCRIPT_BYTES = 1 << 20      # a script of stepper commands; a megabyte is already absurd


def register(sub, parser_class) -> None:
    from emulator.cli.main import add_run_options
    p = sub.add_parser("step", help="interactive stepper: stop at faults, walk the fault path stage by stage")
    add_run_options(p)
    p.set_defaults(calls=2)
    p.add_argument("-c", dest="commands", metavar="CMDS", default=None,
                   help="run these ';'-separated commands, print a transcript and exit")
    p.add_argument("--script", metavar="FILE", default=None,
                   help="run the commands in FILE (one per line, # comments) and exit")
    p.add_argument("--trace", metavar="FILE", default=None,
                   help="when the session ends, write its calls as Chrome trace-event JSON (see faultpath run)")
    p.add_argument("--snapshot-every", type=int, default=None, metavar="N",
                   help="snapshot every N instructions for reverse execution (default 65536)")
    p.set_defaults(func=cmd_step)


class StepShell(cmd.Cmd):
    prompt = PROMPT
    intro = None

    def __init__(self, session, stdin=None, stdout=None):
        super().__init__(stdin=stdin, stdout=stdout)
        self.session = session
        self.errors = 0
        self.finished = False
        self._last = ""

    # one dispatcher for everything: the Session owns the commands
    def onecmd(self, line: str) -> bool:
        line = line.strip()
        if line == "EOF":
            self.stdout.write("\n")
            return True
        if not line:
            return self.emptyline()
        from emulator.debug import commands
        word = commands.split(line)[0]
        if commands.ALIASES.get(word, word) == "quit":
            return True
        try:
            cmd = commands.lookup(word)
            self._last = line if cmd.repeat else ""
            out = commands.execute(self.session, line)
        except FaultpathError as e:
            self.errors += 1
            msg = str(e).splitlines()[0] if str(e) else type(e).__name__
            out = f"error: {msg}"
        except Exception as e:   # a bug: report it on one line and keep the session
            self.errors += 1
            out = f"internal error: {type(e).__name__}: {e}"
        if out:
            self.stdout.write(out.rstrip("\n") + "\n")
        self.stdout.flush()
        return False

    def emptyline(self) -> bool:
        """An empty line repeats a stepping command (stepi, next, fstep), as in gdb."""
        return self.onecmd(self._last) if self._last else False

    def completenames(self, text, *ignored):
        from emulator.debug import commands
        return _spaced(commands.complete(self.session, text))

    def completedefault(self, text, line, begidx, endidx):
        """Arguments: symbols, registers and state fields after break/watch/x/until,
        sub-commands after info/help/display, kinds after inject."""
        from emulator.debug import commands
        return _spaced(commands.complete(self.session, line[:endidx]))


def _spaced(matches: list[str]) -> list[str]:
    """Python's readline appends nothing to a completion: a unique one gets the
    space that lets the next word begin, as in gdb."""
    return [matches[0] + " "] if len(matches) == 1 else matches


def _history_file() -> str | None:
    path = os.environ.get("FAULTPATH_HISTORY")
    if path is not None:
        return path or None
    home = os.path.expanduser("~")
    if not home or home == "~":
        return None
    state = os.environ.get("XDG_STATE_HOME") or os.path.join(home, ".local", "state")
    return os.path.join(state, "faultpath", "step_history")


def _interactive(shell: StepShell) -> int:
    hist = None
    try:
        import readline
        readline.set_completer_delims(" \t\n;")
        hist = _history_file()
        if hist:
            try:
                readline.read_history_file(hist)
            except OSError:
                pass
            readline.set_history_length(HISTORY_LEN)
    except ImportError:
        readline = None
    from emulator.debug import views
    print(views.banner(shell.session), flush=True)
    try:
        while True:
            try:
                shell.cmdloop()
                break
            except KeyboardInterrupt:
                shell.stdout.write("^C\n")
    finally:
        if readline is not None and hist:
            try:
                os.makedirs(os.path.dirname(hist), exist_ok=True)
                readline.write_history_file(hist)
            except OSError:
                pass
    return 0


def run_commands(session, commands: list[str], out=None) -> int:
    """Non-interactive: echo each command after the prompt, then its output."""
    from emulator.debug import views
    out = out or sys.stdout
    shell = StepShell(session, stdout=out)
    out.write(views.banner(session) + "\n")
    for c in commands:
        c = c.strip()
        if not c or c.startswith("#"):
            continue
        out.write(PROMPT + c + "\n")
        if shell.onecmd(c):
            break
    out.flush()
    return 1 if shell.errors else 0


def split_commands(text: str) -> list[str]:
    return [c.strip() for part in text.splitlines() for c in part.split(";") if c.strip()]


def cmd_step(args: argparse.Namespace) -> int:
    from emulator.cli.main import build_run_config
    from emulator.debug.session import Session
    from vdso.files import read_text
    script = None
    if args.commands is not None and not split_commands(args.commands):
        raise UsageError(f"-c {args.commands!r}: no commands")
    if args.script is not None:
        # A regular UTF-8 text file of bounded size (vdso/files.py): a FIFO,
        # /dev/zero or a binary file is refused in one line.
        script = read_text(args.script, limit=MAX_SCRIPT_BYTES, label=f"--script {args.script}")
        if not split_commands(script) or all(c.startswith("#") for c in split_commands(script)):
            raise UsageError(f"--script {args.script}: no commands")
    from emulator.debug.timeline import DEFAULT_EVERY
    every = DEFAULT_EVERY if args.snapshot_every is None else args.snapshot_every
    if not 1 <= every <= 1 << 32:
        raise UsageError(f"--snapshot-every {every}: out of range (1..{1 << 32})")
    trace_to = None
    if args.trace is not None:
        from emulator.outputs import check_output
        trace_to = check_output(args.trace, "--trace", allow_stdout=False)
    session = Session(build_run_config(args), snapshot_every=every)
    try:
        if args.commands is not None or script is not None:
            cmds = split_commands(args.commands or "") + split_commands(script or "")
            return run_commands(session, cmds)
        shell = StepShell(session)
        if not sys.stdin.isatty():
            shell.use_rawinput = False
            shell.prompt = ""
            return run_commands(session, sys.stdin.read().splitlines())
        return _interactive(shell)
    finally:
        if trace_to is not None:
            _write_trace(session, trace_to)


def _write_trace(session, target) -> None:
    """The session's calls as they stand (the stepped one up to where it is)."""
    from dataclasses import replace

    from emulator.outputs import write_output
    from emulator.tracing.chrome import run_trace
    ctx = session.ctx
    current = ctx.result if ctx.done else replace(ctx.result, cycles=ctx.cycles, instructions=ctx.index)
    results = session.previous + [current]
    title = f"faultpath step: image={session.kernel.image.name} call {session.call_no} at #{session.ctx.index}"
    write_output(target, run_trace(session.kernel, session.m, results, title=title, where=session.where))
