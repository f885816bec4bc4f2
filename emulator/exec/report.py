"""Human-readable views of an ExecReport: the summary faultpath exec prints on
stderr, and the un-normalised syscall trace of --trace."""
from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.exec.sysfmt import MAP_FLAG_NAMES, PROT_NAMES, flags_text
from mm import flags as F

if TYPE_CHECKING:
    from emulator.exec.run import ExecReport


def _mmap_text(d: dict) -> str:
    rest = flags_text(d["flags"] & ~F.MAP_TYPE, MAP_FLAG_NAMES, "")
    fl = "MAP_DROPPABLE" + ("|" + rest if rest else "")
    return f"mmap(NULL, {d['length']}, {flags_text(d['prot'], PROT_NAMES, 'PROT_NONE')}, {fl}) = {d['addr']}"


def summary_lines(r: "ExecReport") -> list[str]:
    out = []
    for p in r.processes:
        end = (f"exited with {p.exit_code}" if p.signal is None and p.outcome == "exit"
               else f"{p.outcome}: {p.detail}")
        out.append(f"faultpath exec: pid {p.pid} ({p.exe}) {end}; {p.instructions:,} instructions, "
                   f"{p.syscalls} syscalls, {p.faults} page-fault records")
        for d in p.droppable_mmaps:
            out.append(f"  droppable: {_mmap_text(d)}  [{d['vm_flags'] or 'unmapped at exit'}]")
        if p.unimplemented:
            out.append("  unimplemented (-ENOSYS): " + ", ".join(f"{n} x{c}" for n, c in
                                                              sorted(p.unimplemented.items())))
        for name, why, ret in p.refusals:
            out.append(f"  refused: {name} -> {ret}: {why}")
    if r.vdso_calls:
        out.append(f"  __vdso_getrandom calls: {len(r.vdso_calls)}")
    for inj in r.injections:
        extra = f", child pid {inj['child']}" if "child" in inj else ""
        out.append(f"  injected {inj['spec']}: {inj['where']}, pid {inj['pid']}, instruction {inj['index']}, "
                   f"rip {inj['rip']}{extra}")
    if r.deadlock:
        out.append(f"  deadlock: {r.deadlock}")
    return out


def trace_lines(r: "ExecReport") -> list[str]:
    """Every process's events as recorded (real addresses and pids)."""
    out = []
    rec = r.trace
    for i, proc in enumerate(rec.processes):
        for e in proc:
            out.append(f"P{i}  {e.raw or e}")
    return out
