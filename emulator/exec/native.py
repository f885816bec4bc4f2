"""The same program natively, under strace, and the two syscall sequences side
by side (`faultpath exec --native`).

For the comparison to be fair the native glibc must choose as the emulated
one does.  Its loader picks hwcaps subdirectories and ifuncs from CPUID;
the emulated CPU (emulator/cpuid.py) has no AVX and no SSE4.2, so natively
GLIBC_TUNABLES=glibc.cpu.hwcaps=-AVX,-SSE4_2 masks the same features (which
removes the glibc-hwcaps probes, as in the emulated run).  The environment
is the emulated run's, plus that.
"""
from __future__ import annotations

import difflib
from dataclasses import dataclass

from emulator.exec import strace
from emulator.exec.strace import Trace
from emulator.execve import ExecConfig

NATIVE_TUNABLES = "glibc.cpu.hwcaps=-AVX,-SSE4_2"


def native_env(cfg: ExecConfig) -> dict[str, str]:
    env = dict(e.split("=", 1) for e in cfg.env if "=" in e)
    env["GLIBC_TUNABLES"] = NATIVE_TUNABLES
    return env


def run_native(cfg: ExecConfig, timeout: float = 120) -> Trace:
    return strace.run([cfg.program, *cfg.args], env=native_env(cfg), timeout=timeout)


@dataclass
class Row:
    mark: str          # "=" same, "|" changed, "<" native only, ">" emulated only
    native: str
    emulated: str


def align(native: list[str], emulated: list[str]) -> list[Row]:
    """Line up two event lists (difflib's longest matching blocks)."""
    rows: list[Row] = []
    sm = difflib.SequenceMatcher(a=native, b=emulated, autojunk=False)
    for op, a0, a1, b0, b1 in sm.get_opcodes():
        if op == "equal":
            rows += [Row("=", native[a0 + i], emulated[b0 + i]) for i in range(a1 - a0)]
            continue
        n = max(a1 - a0, b1 - b0)
        for i in range(n):
            a = native[a0 + i] if a0 + i < a1 else ""
            b = emulated[b0 + i] if b0 + i < b1 else ""
            rows.append(Row("|" if a and b else "<" if a else ">", a, b))
    return rows


def side_by_side(native: Trace, emulated: Trace, width: int = 72) -> str:
    """Both sequences, process by process, in two columns."""
    out = [f"{'native (strace -f)':<{width}}   emulated (faultpath exec)"]
    n = max(len(native.processes), len(emulated.processes))
    for pid in range(n):
        a = native.lines(pid) if pid < len(native.processes) else []
        b = emulated.lines(pid) if pid < len(emulated.processes) else []
        out.append(f"--- P{pid} " + "-" * (2 * width - 4))
        for r in align(a, b):
            left = r.native if len(r.native) <= width else r.native[:width - 1] + "~"
            right = r.emulated if len(r.emulated) <= 2 * width else r.emulated[:2 * width - 1] + "~"
            out.append(f"{left:<{width}} {r.mark} {right}")
    return "\n".join(out)


def differences(native: Trace, emulated: Trace) -> list[tuple[int, Row]]:
    """Every row that is not the same on both sides, with its process."""
    out = []
    for pid in range(max(len(native.processes), len(emulated.processes))):
        a = native.lines(pid) if pid < len(native.processes) else []
        b = emulated.lines(pid) if pid < len(emulated.processes) else []
        out += [(pid, r) for r in align(a, b) if r.mark != "="]
    return out
