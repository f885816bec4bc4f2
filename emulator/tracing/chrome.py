"""A run as Chrome trace-event JSON (the "JSON Object Format" Perfetto UI and
chrome://tracing open).

Layout: one process per Machine (the parent, and a child after an injected
fork), and in each one track per kind: the calls, user code, page faults
with their stages, syscalls (the kernel's own uaccess faults inside them),
injections.  Every stage is an "X" event named after the kernel function
(emulator/trace.py KERNEL_FUNCTION), with its exact model cycles in args;
faults and syscalls are enclosing spans over their stages.  Between two
kernel events the call ran user code: those gaps are spans too, so a call's
user-code spans and stages add up to its cycles.

Clock.  Model cycles are TSC ticks of the run's cycle profile; the trace
declares the profile's TSC frequency (otherData.clock) and converts: ts and
dur are microseconds = cycles / tsc_mhz, as the format requires.  Calls are
laid end to end.
"""
from __future__ import annotations

import json
from dataclasses import dataclass

from emulator.records import CallResult
from emulator.trace import TraceEvent, event_name

TRACKS = {"calls": 1, "user": 2, "faults": 3, "syscalls": 4, "injections": 5}
TRACK_NAMES = {1: "calls", 2: "user code", 3: "page faults", 4: "syscalls (kernel uaccess faults inside)",
               5: "injections"}
FAULT_STAGES = {"fault_entry", "undo_split_store", "vma_lookup", "vma_check", "sigsegv", "spurious",
                "map_zero_page", "swap_in", "reclaim", "alloc", "zero_fill", "cow_copy", "reuse", "oom",
                "droppable_oom", "decode", "exception_fixup", "signal", "fault_return"}


@dataclass
class ProcessTrace:
    name: str
    events: list[TraceEvent]
    results: list[CallResult]           # the calls this process made, in order
    start: float = 0.0                  # cycles: where its first call begins on the shared timeline
    clocked: bool = True                # False: events carry no clock (a forked child's continuation)


def export(processes: list[ProcessTrace], *, profile: str, tsc_mhz: float, title: str, where=None) -> dict:
    """The trace as a JSON object.  `where(addr)` names addresses in fault names."""
    name_of = where or (lambda a: f"{a:#x}")
    out: list[dict] = []
    for pid, proc in enumerate(processes, start=1):
        out.append(_meta(pid, 0, "process_name", proc.name))
        out.append({"ph": "M", "pid": pid, "tid": 0, "name": "process_sort_index", "args": {"sort_index": pid}})
        for tid, name in TRACK_NAMES.items():
            out.append(_meta(pid, tid, "thread_name", name))
        _process(out, pid, proc, tsc_mhz, name_of)
    return {
        "traceEvents": out,
        "displayTimeUnit": "ns",
        "otherData": {
            "title": title,
            "clock": f"model cycles (TSC ticks) of cycle profile {profile}; ts/dur in microseconds at "
                     f"{tsc_mhz:g} MHz, exact cycles in each event's args.cycles",
            "tsc_mhz": tsc_mhz,
            "profile": profile,
        },
    }


def _meta(pid: int, tid: int, name: str, value: str) -> dict:
    return {"ph": "M", "pid": pid, "tid": tid, "name": name, "args": {"name": value}}


def _span(pid: int, tid: int, name: str, cat: str, start: float, cycles: float, mhz: float, args: dict) -> dict:
    return {"ph": "X", "pid": pid, "tid": tid, "name": name, "cat": cat, "ts": start / mhz,
            "dur": cycles / mhz, "args": {"cycles": cycles, **args}}


def _process(out: list[dict], pid: int, proc: ProcessTrace, mhz: float, where) -> None:
    by_call: dict[int, list[TraceEvent]] = {}
    for ev in proc.events:
        by_call.setdefault(ev.call, []).append(ev)
    offset = proc.start
    for k, res in enumerate(proc.results, start=1):
        # the k-th call begun on this process's trace (libc's getrandom numbers them)
        events = by_call.get(k, []) if proc.clocked else proc.events
        ret = "no return" if res.ret is None else res.ret
        out.append(_span(pid, TRACKS["calls"], f"getrandom({res.size}) -> {ret}", "call", offset, res.cycles, mhz,
                         {"call": k, "outcome": res.outcome, "instructions": res.instructions}))
        _call(out, pid, events, res, offset, mhz, proc.clocked, where)
        offset += res.cycles


def _call(out: list[dict], pid: int, events: list[TraceEvent], res: CallResult, offset: float, mhz: float,
          clocked: bool, where) -> None:
    cursor = 0.0                     # cycles into the call where the last kernel event ended
    index = 0                        # instruction index the user code resumed at
    open_fault: dict | None = None
    open_sys: dict | None = None
    for ev in events:
        at = ev.at if clocked and ev.at is not None else cursor
        if at > cursor + 1e-9:
            out.append(_span(pid, TRACKS["user"], "user code", "user", offset + cursor, at - cursor, mhz,
                             {"from_index": index, "to_index": ev.index}))
        kind = ev.kind
        in_syscall = open_sys is not None
        if kind == "fault_entry":
            open_fault = _close(out, open_fault, mhz)
            track = TRACKS["syscalls"] if ev.detail.get("mode") == "kernel" else TRACKS["faults"]
            open_fault = {"pid": pid, "tid": track, "start": offset + at, "index": ev.index,
                          "what": f"{ev.detail.get('access', '?')} {where(ev.detail.get('address', 0))}",
                          "mode": ev.detail.get("mode", "user")}
        elif kind not in FAULT_STAGES:
            open_fault = _close(out, open_fault, mhz)
        if kind == "syscall":
            open_sys = {"pid": pid, "tid": TRACKS["syscalls"], "start": offset + at, "index": ev.index,
                        "name": ev.detail.get("name", "syscall")}
        if kind == "inject":
            track = TRACKS["injections"]
        elif kind in ("syscall", "syscall_return") or (in_syscall and kind in FAULT_STAGES):
            track = TRACKS["syscalls"]
        else:
            track = TRACKS["faults"]
        name = event_name(ev)
        args = {"stage": kind, "index": ev.index, "rip": hex(ev.rip)}
        args.update({k: _jsonable(v) for k, v in ev.detail.items()})
        out.append(_span(pid, track, name, "stage", offset + at, ev.cycles, mhz, args))
        if open_fault is not None:
            open_fault["end"] = offset + at + ev.cycles
            if kind == "fault_return" or kind in ("signal", "exception_fixup"):
                open_fault["decision"] = ev.detail.get("decision", kind)
        if kind == "syscall_return" and open_sys is not None:
            open_fault = _close(out, open_fault, mhz)
            start = open_sys["start"]
            out.append(_span(pid, TRACKS["syscalls"], f"syscall {open_sys['name']}", "syscall", start,
                             offset + at + ev.cycles - start, mhz, {"index": open_sys["index"],
                                                                    "ret": _jsonable(ev.detail.get("ret"))}))
            open_sys = None
        cursor = max(cursor, at + ev.cycles)
        index = ev.index
    _close(out, open_fault, mhz)
    if res.cycles > cursor + 1e-9:
        out.append(_span(pid, TRACKS["user"], "user code", "user", offset + cursor, res.cycles - cursor, mhz,
                         {"from_index": index, "to_index": res.instructions}))


def _close(out: list[dict], f: dict | None, mhz: float) -> None:
    """End the enclosing span of a fault whose stages are complete."""
    if f is not None and "end" in f:
        name = ("kernel fault" if f["mode"] == "kernel" else "page fault") + f" {f['what']} -> " + \
            str(f.get("decision", "?"))
        out.append({"ph": "X", "pid": f["pid"], "tid": f["tid"], "name": name, "cat": "fault",
                    "ts": f["start"] / mhz, "dur": (f["end"] - f["start"]) / mhz,
                    "args": {"cycles": f["end"] - f["start"], "index": f["index"]}})
    return None


def _jsonable(v):
    if isinstance(v, (str, int, float, bool)) or v is None:
        return v
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    if isinstance(v, dict):
        return {str(k): _jsonable(x) for k, x in v.items()}
    return str(v)


def run_trace(kernel, m, results: list[CallResult], title: str, where=None) -> str:
    """The trace of a process's calls as JSON text: the process, and each child
    a fork left."""
    procs = [ProcessTrace(f"{m.name} (pid 1)", list(m.trace.events), results)]
    offset = 0.0
    for res in results:
        for child_res in res.children:
            child = next((c for c in m.children if c.name == child_res.process), None)
            if child is None:
                continue
            fork_at = next((e.at for e in m.trace.events if e.kind == "inject" and e.detail.get("event") == "fork"
                            and e.at is not None), 0.0)
            procs.append(ProcessTrace(f"{child.name} (forked; its events laid end to end, no clock)",
                                      list(child.trace.events), [child_res], start=offset + fork_at, clocked=False))
        offset += res.cycles
    data = export(procs, profile=kernel.profile.name, tsc_mhz=kernel.profile.tsc_mhz, title=title, where=where)
    return json.dumps(data, indent=None, separators=(",", ":"), allow_nan=False) + "\n"
