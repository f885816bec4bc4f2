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
        return sorted(c for c in set(commands.BY_NAME) | set(commands.ALIASES) if c.startswith(text))

    def completedefault(self, *ignored):
        return []


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
    session = Session(build_run_config(args))
    if args.commands is not None or script is not None:
        cmds = split_commands(args.commands or "") + split_commands(script or "")
        return run_commands(session, cmds)
    shell = StepShell(session)
    if not sys.stdin.isatty():
        shell.use_rawinput = False
        shell.prompt = ""
        return run_commands(session, sys.stdin.read().splitlines())
    return _interactive(shell)
