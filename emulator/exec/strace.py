"""Syscall traces in strace's notation, normalised so that two runs (a native
one under ``strace -f`` and an emulated one) compare line by line.

Each native process is traced into its own file (``strace -ff``), so no
line is ever split into ``<unfinished ...>`` / ``<... resumed>`` halves.
Normalisation (normalise()), the same for both sides:

- process ids become P0 (the program), P1, P2 ... in the order the parent's
  clone/fork calls returned them;
- numbers that look like addresses (hex, 0x100000 or more) become A1, A2 ...
  in order of first appearance across the whole run, so a later
  ``mprotect(A7, ...)`` still points at the ``mmap`` that returned A7;
- the data of getrandom, read and pread64, and of writes to anything but
  stdout and stderr, becomes BUF (random or file bytes); strings that name
  files are kept, and so is what the program prints;
- mmap's file offset is kept as it is;
- execve keeps only the fact that it ran; rt_sigreturn's return value
  (the interrupted rax) becomes RESTORED.

Standard library only.
"""
from __future__ import annotations

import os
import re
import shutil
import subprocess
import tempfile
from collections import Counter
from dataclasses import dataclass, field

DATA_CALLS = {"getrandom", "read", "pread64"}
ADDRESS_MIN = 0x100000
# Constants that are large but are not addresses: rseq's signature.
NOT_ADDRESSES = {0x53053053}

_LINE = re.compile(r"^(?P<name>\w+)\((?P<args>.*)\)\s+=\s+(?P<ret>.*)$")
_STRING = re.compile(r'"(?:[^"\\]|\\.)*"(?:\.\.\.)?')
_HEX = re.compile(r"\b0x[0-9a-fA-F]+\b")


@dataclass
class Event:
    """One line of one process: a syscall, a signal or the process's end."""
    kind: str                # "syscall" | "signal" | "exit"
    name: str                # syscall name, signal name, or "exited"/"killed"
    args: str = ""
    ret: str = ""
    raw: str = ""

    def __str__(self) -> str:
        if self.kind == "syscall":
            return f"{self.name}({self.args}) = {self.ret}"
        if self.kind == "signal":
            return f"--- {self.name} {self.args} ---"
        return f"+++ {self.name} {self.args} +++"


@dataclass
class Trace:
    """A whole run: one event list per process, P0 first."""
    processes: list[list[Event]]
    stdout: str = ""
    stderr: str = ""
    returncode: int = 0
    labels: dict = field(default_factory=dict)   # raw value -> label

    def syscalls(self, pid: int | None = None) -> list[Event]:
        procs = self.processes if pid is None else [self.processes[pid]]
        return [e for p in procs for e in p if e.kind == "syscall"]

    def counts(self, pid: int | None = None) -> Counter:
        return Counter(e.name for e in self.syscalls(pid))

    def calls(self, name: str, pid: int | None = None) -> list[Event]:
        return [e for e in self.syscalls(pid) if e.name == name]

    def lines(self, pid: int) -> list[str]:
        return [str(e) for e in self.processes[pid]]


def have_strace() -> bool:
    return shutil.which("strace") is not None


def parse_line(line: str) -> Event | None:
    line = line.rstrip("\n")
    if line.startswith("--- "):
        body = line[4:].rstrip(" -")
        name, _, rest = body.partition(" ")
        return Event("signal", name, rest, raw=line)
    if line.startswith("+++ "):
        body = line[4:].rstrip(" +")
        name, _, rest = body.partition(" ")
        return Event("exit", name, rest, raw=line)
    m = _LINE.match(line)
    if not m:
        return None
    return Event("syscall", m["name"], m["args"], m["ret"], raw=line)


class _Labeller:
    def __init__(self, pids: list[int]):
        self.pids = {p: f"P{i}" for i, p in enumerate(pids)}
        self.addresses: dict[int, str] = {}

    def _hex(self, m: re.Match) -> str:
        v = int(m.group(0), 16)
        if v < ADDRESS_MIN or v in NOT_ADDRESSES:
            return m.group(0)
        if v not in self.addresses:
            self.addresses[v] = f"A{len(self.addresses) + 1}"
        return self.addresses[v]

    def _pids(self, text: str) -> str:
        for pid, label in self.pids.items():
            text = re.sub(rf"(?<![\w.]){pid}(?![\w.])", label, text)
        return text

    def event(self, e: Event) -> Event:
        if e.kind == "syscall":
            args, ret = e.args, e.ret
            offset = None
            if e.name == "execve":
                args = "PROG, ARGV, ENV"
            elif e.name in DATA_CALLS or (e.name == "write" and not re.match(r"[12],", args)):
                args = _STRING.sub("BUF", args)
            elif e.name == "mmap" and args.count(", ") == 5:
                # The file offset is not an address: keep it as it is.
                args, offset = args.rsplit(", ", 1)
            if e.name == "rt_sigreturn":
                ret = "RESTORED"   # the interrupted rax: whatever it was
            args = self._pids(_HEX.sub(self._hex, args))
            if offset is not None:
                args += ", " + offset
            ret = self._pids(_HEX.sub(self._hex, ret))
            return Event(e.kind, e.name, args, ret, e.raw)
        args = re.sub(r"si_(pid|uid)=\d+", lambda m: f"si_{m[1]}=N", e.args)
        args = self._pids(_HEX.sub(self._hex, args))
        return Event(e.kind, e.name, args, e.ret, e.raw)


def process_order(raw: dict[int, list[Event]]) -> list[int]:
    """P0 is the process that began with execve; children follow in the
    order their parents' fork/clone calls returned them."""
    roots = [pid for pid, evs in raw.items() if evs and evs[0].name == "execve"]
    order: list[int] = []
    todo = sorted(roots)[:1] or sorted(raw)[:1]
    while todo:
        pid = todo.pop(0)
        if pid in order or pid not in raw:
            continue
        order.append(pid)
        for e in raw[pid]:
            if e.kind == "syscall" and e.name in ("clone", "clone3", "fork", "vfork"):
                m = re.match(r"(\d+)", e.ret)
                if m:
                    todo.append(int(m.group(1)))
    return order + sorted(set(raw) - set(order))


def normalise(raw: dict[int, list[Event]], stdout: str = "", stderr: str = "", returncode: int = 0) -> Trace:
    """Raw per-pid events (strace's notation) -> a normalised Trace."""
    order = process_order(raw)
    lab = _Labeller(order)
    procs = [[lab.event(e) for e in raw[pid]] for pid in order]
    return Trace(procs, stdout, stderr, returncode, {f"0x{v:x}": k for v, k in lab.addresses.items()})


def run(argv: list[str], *, env: dict | None = None, timeout: float = 60,
        strace_args: tuple[str, ...] = ()) -> Trace:
    """Run ``argv`` natively under ``strace -f -ff`` and return the normalised trace."""
    if not have_strace():
        raise FileNotFoundError("strace not found")
    with tempfile.TemporaryDirectory(prefix="fp-strace-") as tmp:
        out = os.path.join(tmp, "t")
        cmd = ["strace", "-f", "-ff", "-q", "-s", "64", "-o", out, *strace_args, "--", *argv]
        p = subprocess.run(cmd, stdout=subprocess.PIPE, stderr=subprocess.PIPE,
                           text=True, timeout=timeout, env=env)
        raw: dict[int, list[Event]] = {}
        for name in os.listdir(tmp):
            pid = int(name.rsplit(".", 1)[1])
            with open(os.path.join(tmp, name), errors="replace") as f:
                raw[pid] = [e for e in map(parse_line, f) if e is not None]
    return normalise(raw, p.stdout, p.stderr, p.returncode)


def render(trace: Trace, limit: int | None = None) -> str:
    """The normalised trace as text, one ``Pn  event`` line each."""
    lines = []
    for i, proc in enumerate(trace.processes):
        for e in proc:
            lines.append(f"P{i}  {e}")
    return "\n".join(lines[:limit])
