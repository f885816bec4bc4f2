"""`faultpath exec`: run a program in an emulated machine and report what it
did: its output, how each process ended, its syscalls in strace's
notation, the droppable mappings glibc made, the injections carried out,
and what faultpath refused or does not implement."""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.exec.recorder import TraceRecorder
from emulator.exec.strace import Trace
from emulator.exec.triggers import Injector, VdsoCall, parse_trigger
from emulator.execve import ExecConfig, boot
from emulator.process import Process
from emulator.signal import signame
from mm import flags as F


@dataclass
class ProcessReport:
    pid: int
    ppid: int
    exe: str
    outcome: str
    detail: str
    exit_code: int | None
    signal: str | None
    instructions: int
    cycles: float
    syscalls: int
    faults: int
    unimplemented: dict[str, int]
    refusals: list[tuple[str, str, int]]
    droppable_mmaps: list[dict]
    droppable_vmas: list[dict]

    def as_dict(self) -> dict:
        return {"pid": self.pid, "ppid": self.ppid, "exe": self.exe, "outcome": self.outcome,
                "detail": self.detail, "exit_code": self.exit_code, "signal": self.signal,
                "instructions": self.instructions, "cycles": round(self.cycles), "syscalls": self.syscalls,
                "faults": self.faults, "unimplemented": self.unimplemented,
                "refusals": [{"syscall": n, "why": w, "ret": r} for n, w, r in self.refusals],
                "droppable_mmaps": self.droppable_mmaps, "droppable_vmas": self.droppable_vmas}


@dataclass
class ExecReport:
    config: dict
    processes: list[ProcessReport]
    stdout: bytes
    stderr: bytes
    trace: Trace
    injections: list[dict] = field(default_factory=list)
    vdso_calls: list[VdsoCall] = field(default_factory=list)
    deadlock: str = ""
    ignored_signals: list[tuple[int, str]] = field(default_factory=list)
    system: object = None           # the emulated System (for tests and tools; not serialised)

    @property
    def main(self) -> ProcessReport:
        return self.processes[0]

    def exit_status(self) -> int:
        """What a shell would say of the program: its exit code, or 128 + the signal."""
        m = self.main
        if m.exit_code is not None and m.signal is None:
            return m.exit_code
        p = self.system.first() if self.system is not None else None
        return 128 + (p.exit.signal if p is not None and p.exit.signal else 9)

    def as_dict(self) -> dict:
        return {
            "config": self.config,
            "processes": [p.as_dict() for p in self.processes],
            "stdout": self.stdout.decode("utf-8", "replace"),
            "stderr": self.stderr.decode("utf-8", "replace"),
            "syscalls": [[str(e) for e in proc] for proc in self.trace.processes],
            "injections": self.injections,
            "vdso_calls": [{"pid": c.pid, "index": c.index, "args": [hex(a) for a in c.args]}
                           for c in self.vdso_calls],
            "deadlock": self.deadlock,
            "ignored_signals": [{"pid": pid, "signal": s} for pid, s in self.ignored_signals],
        }


def droppable_mmaps(p: Process) -> list[dict]:
    """The MAP_DROPPABLE mmap calls p made, with the VMA each left at exit."""
    out = []
    for rec in p.ctx.result.syscalls:
        if rec.name != "mmap" or rec.ret < 0 or (rec.args[3] & F.MAP_TYPE) != F.MAP_DROPPABLE:
            continue
        vma = next((v for v in p.final_maps if v["start"] <= rec.ret < v["end"]), None)
        out.append({"addr": hex(rec.ret), "length": rec.args[1], "prot": rec.args[2] & 0xFFFF_FFFF,
                    "flags": rec.args[3] & 0xFFFF_FFFF, "vm_flags": vma["flags"] if vma else None})
    return out


def _process_report(p: Process) -> ProcessReport:
    res = p.ctx.result
    return ProcessReport(
        pid=p.pid, ppid=p.ppid, exe=p.exe, outcome=p.exit.outcome or res.outcome,
        detail=p.exit.detail or res.outcome_detail,
        exit_code=p.exit.code if p.exit.signal is None else None,
        signal=signame(p.exit.signal) if p.exit.signal is not None else None,
        instructions=res.instructions, cycles=res.cycles, syscalls=len(res.syscalls), faults=len(res.faults),
        unimplemented=dict(p.unimplemented), refusals=list(p.refusals), droppable_mmaps=droppable_mmaps(p),
        droppable_vmas=[{"start": hex(v["start"]), "end": hex(v["end"]), "flags": v["flags"]}
                        for v in p.final_maps if " dp" in " " + v["flags"]])


def run_program(cfg: ExecConfig, injections: list[str] | tuple[str, ...] = (),
                watch_vdso: bool = False) -> ExecReport:
    """Boot, run every process to its end, report."""
    triggers = [parse_trigger(s) for s in injections]
    system = boot(cfg)
    first = system.first()
    recorder = TraceRecorder()
    recorder.attach(first)
    injector = Injector(triggers, watch_vdso=watch_vdso)
    injector.attach(first)
    system.run()
    con = system.console
    procs = [_process_report(p) for p in system.order]
    trace = recorder.trace(con.text(1), con.text(2), procs[0].exit_code or 0)
    config = {"program": cfg.program, "args": cfg.args, "env": cfg.env, "image": cfg.image.name,
              "seed": cfg.seed, "memory_pages": cfg.memory_pages, "droppable_oom": cfg.droppable_oom,
              "budget": cfg.budget, "allow_read": first.read_policy.describe(), "cpu": first.cpu_model.name,
              "injections": list(injections)}
    return ExecReport(config, procs, bytes(con.captured[1]), bytes(con.captured[2]), trace,
                      [r for t in triggers for r in t.fired], injector.vdso_calls, system.deadlock,
                      recorder.ignored, system)
