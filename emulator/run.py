"""`faultpath run`: build a kernel and a process, call __vdso_getrandom as libc
does, and report every call (human or JSON)."""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.cycles.profile import load_profile
from emulator.errors import UsageError
from emulator.inject import parse_injection
from emulator.kernel import Kernel
from emulator.layout import install_kernel_mappings, place_image
from emulator.machine import Machine
from emulator.records import DEFAULT_BUDGET, DEFAULT_LIVELOCK, Injection
from emulator.records import CallResult
from emulator.scenarios import Scenario, plan
from emulator.trace import event_name
from vdso.abi import STATE_IN_USE, STATE_SIZE
from mm import flags as F
from vdso.image import PAGE_SIZE, VdsoImage
from emulator.libc import VgetrandomCaller

MAX_PAGES = 1 << 22          # 16 GiB of emulated RAM is more than any scenario needs
MAX_CALLS = 1_000_000


@dataclass
class RunConfig:
    image: VdsoImage
    sizes: list[int] = field(default_factory=lambda: [256])
    calls: int = 3
    seed: int = 0
    memory_pages: int = 4096
    swap_pages: int = 0
    droppable_oom: str = "skip"
    injections: list[str] = field(default_factory=list)    # KIND@N (every call) or KIND@C:N (call C)
    scenario: str = "none"
    flags: int = 0
    livelock_limit: int = DEFAULT_LIVELOCK
    budget: int = DEFAULT_BUDGET
    profile: str = "zen4"
    state_offset: int | None = None   # put the state at this offset of its own 2-page droppable mapping
    prefault: bool = False            # make the output buffer resident before the first call

    def validate(self) -> None:
        if not self.sizes:
            raise UsageError("--size: at least one size is needed")
        for s in self.sizes:
            if s < 0 or s > (16 << 20):
                raise UsageError(f"--size {s}: out of range (0..{16 << 20})")
        if not 1 <= self.calls <= MAX_CALLS:
            raise UsageError(f"--calls {self.calls}: out of range (1..{MAX_CALLS})")
        if not 16 <= self.memory_pages <= MAX_PAGES:
            raise UsageError(f"--memory {self.memory_pages}: out of range (16..{MAX_PAGES} pages)")
        if not 0 <= self.swap_pages <= MAX_PAGES:
            raise UsageError(f"--swap {self.swap_pages}: out of range (0..{MAX_PAGES} pages)")
        if self.droppable_oom not in ("skip", "retry"):
            raise UsageError(f"--droppable-oom {self.droppable_oom!r}: expected skip or retry")
        if not 0 <= self.flags < 1 << 32:
            raise UsageError(f"--flags {self.flags}: out of range")
        for spec in self.injections:
            split_call_injection(spec)
        if self.state_offset is not None and not 0 <= self.state_offset < 4096:
            raise UsageError(f"--state-offset {self.state_offset}: out of range (0..4095)")


def split_call_injection(spec: str) -> tuple[int | None, Injection]:
    """KIND@N -> (None, inj) for every call; KIND@C:N -> (C, inj) for call C (1-based)."""
    kind, sep, where = spec.rpartition("@")
    if sep and ":" in where:
        c, _, n = where.partition(":")
        try:
            call = int(c)
        except ValueError:
            raise UsageError(f"--inject {spec!r}: call number {c!r} is not a number") from None
        if call < 1:
            raise UsageError(f"--inject {spec!r}: calls are numbered from 1")
        return call, parse_injection(f"{kind}@{n}")
    return None, parse_injection(spec)


def new_process(cfg: RunConfig) -> tuple[Kernel, Machine, VgetrandomCaller]:
    """A kernel and one process as exec leaves it: the image placed by mm's
    get_unmapped_area and its mappings VMAs before libc maps anything
    (emulator/layout.py); then libc's set-up (the state pages, the buffer)."""
    kernel = Kernel(place_image(cfg.image), memory_pages=cfg.memory_pages, swap_pages=cfg.swap_pages,
                    seed=cfg.seed, profile=load_profile(cfg.profile))
    m = Machine(kernel, droppable_oom=cfg.droppable_oom, livelock_limit=cfg.livelock_limit)
    install_kernel_mappings(m.mm, kernel)
    caller = VgetrandomCaller(m, buffer_size=max(cfg.sizes))
    if cfg.state_offset is not None:
        # A state placed by hand (end of a page, or straddling two: the vDSO must
        # answer -EFAULT for that one), in a droppable mapping of its own.
        base = m.mm.mmap(0, 2 * PAGE_SIZE, F.PROT_READ | F.PROT_WRITE, F.MAP_DROPPABLE | F.MAP_ANONYMOUS, -1, 0)
        if base < 0:
            raise UsageError(f"--state-offset: mmap failed with errno {-base}")
        m.sync_range(base, 2 * PAGE_SIZE)
        caller.states.insert(0, base + cfg.state_offset)
    if cfg.prefault:
        m.user_write(caller.buffer, bytes(caller.buffer_size))
    return kernel, m, caller


def find_state_write(cfg: RunConfig, size: int) -> int:
    """Landmark for scenarios: in a warm call of `size` bytes, the index of the
    first instruction that changes the state other than by setting in_use."""
    probe = RunConfig(image=cfg.image, sizes=[size], calls=2, seed=cfg.seed, memory_pages=cfg.memory_pages,
                      droppable_oom=cfg.droppable_oom, profile=cfg.profile)
    _, m, caller = new_process(probe)
    caller.getrandom(size)
    ctx = m.prepare_call(caller.func, caller.args(size), size=size)
    st = caller.states[0]

    def snap() -> bytes:
        b = bytearray(m.read(st, STATE_SIZE))
        b[STATE_IN_USE] = 0
        return bytes(b)

    before = snap()
    while not ctx.done and ctx.index < 100_000:
        m.step(ctx, 1)
        if snap() != before:
            return max(1, ctx.index - 1)
    return max(1, ctx.result.instructions // 2)


@dataclass
class CallPlan:
    size: int
    injections: list[Injection]


def plan_calls(cfg: RunConfig) -> tuple[Scenario, list[CallPlan]]:
    """The calls a run makes, each with its injections: the scenario's (placed
    at a landmark found in a probe run) plus --inject KIND@N (every call) and
    KIND@C:N (call C)."""
    per_call: dict[int, list[Injection]] = {}
    every: list[Injection] = []
    for spec in cfg.injections:
        call, inj = split_call_injection(spec)
        (per_call.setdefault(call, []) if call else every).append(inj)
    landmark = 0
    if cfg.scenario != "none":
        size = cfg.sizes[-1] if len(cfg.sizes) == 1 else cfg.sizes[1 % len(cfg.sizes)]
        landmark = find_state_write(cfg, size)
    scen = plan(cfg.scenario, cfg.sizes, cfg.calls, landmark)
    calls = []
    for i, pc in enumerate(scen.calls, start=1):
        injs = [parse_injection(s) for s in pc.injections] + every + per_call.get(i, [])
        calls.append(CallPlan(pc.size, [Injection(j.at, j.kind) for j in injs]))   # fresh objects per call
    return scen, calls


def run(cfg: RunConfig) -> dict:
    """The report of `faultpath run` (what --json prints, plus "_results": the
    CallResults)."""
    return run_process(cfg)[0]


def run_process(cfg: RunConfig) -> tuple[dict, tuple[Kernel, Machine, VgetrandomCaller]]:
    """run(), and the process it ran in (for traces and naming)."""
    cfg.validate()
    scen, calls = plan_calls(cfg)
    kernel, m, caller = new_process(cfg)
    results: list[CallResult] = [caller.getrandom(c.size, cfg.flags, injections=c.injections, budget=cfg.budget)
                                 for c in calls]
    image = kernel.image                # as placed in the process
    return {
        "image": {"name": image.name, "abi": image.abi,
                  "getrandom": hex(image.symbol("__vdso_getrandom")),
                  "rng_data_offset": image.rng_data_offset, "rng_data_source": image.rng_data_source},
        "config": {"seed": cfg.seed, "memory_pages": cfg.memory_pages, "swap_pages": cfg.swap_pages,
                   "droppable_oom": cfg.droppable_oom, "scenario": scen.name, "scenario_description": scen.description,
                   "sizes": cfg.sizes, "calls": cfg.calls, "profile": kernel.profile.name,
                   "state": hex(caller.states[0]), "buffer": hex(caller.buffer)},
        "calls": [_call_dict(r, m.trace.events, k) for k, r in enumerate(results, start=1)],
        "_results": results,
        "mm": _stats(m),
    }, (kernel, m, caller)


def orig_bits(rec) -> list[str]:
    """A fault's VM_FAULT_* names as handle_pte_fault returned them, before
    handle_mm_fault's VM_DROPPABLE rule rewrote them (ret &= ~VM_FAULT_OOM, plus
    VM_FAULT_SKIP_INSN under the skip design): the rule ran iff its stage is in
    the record, and it only ever took OOM away."""
    if "droppable_oom" not in rec.stages:
        return list(rec.bits)
    return [n for n in rec.bits if n != "SKIP_INSN"] + ["OOM"]


def _call_dict(r: CallResult, events: list, call: int) -> dict:
    """A call for --json: exact cycles (the records round them), each fault's
    bits before the droppable rule, and the call's stages."""
    d = r.as_dict()
    d["cycles"] = r.cycles
    for fd, rec in zip(d["faults"], r.faults):
        fd["cycles"] = rec.cycles
        fd["orig_bits"] = orig_bits(rec)
    for sd, rec in zip(d["syscalls"], r.syscalls):
        sd["cycles"] = rec.cycles
    d["children"] = [_call_dict(c, [], 0) for c in r.children]
    d.update(_call_stages(events, call))
    return d


def _call_stages(events: list, call: int) -> dict:
    """A call's trace events with their exact cycles (every stage of every fault,
    syscall and injection, in order), and the cycles per kind of stage."""
    evs = [e for e in events if e.call == call]
    totals: dict[str, float] = {}
    for e in evs:
        totals[e.kind] = totals.get(e.kind, 0.0) + e.cycles
    return {"stage_cycles": totals,
            "stages": [{"stage": e.kind, "function": event_name(e), "index": e.index, "rip": hex(e.rip),
                        "at": e.at, "cycles": e.cycles} for e in evs]}


def _stats(m: Machine) -> dict:
    st = getattr(m.mm, "stats", None)
    if st is None:
        return {}
    from dataclasses import asdict, is_dataclass
    raw = dict(st) if isinstance(st, dict) else asdict(st) if is_dataclass(st) else dict(vars(st))
    return _jsonable(raw)


def _jsonable(v):
    if isinstance(v, dict):
        return {(k if isinstance(k, str) else ":".join(map(str, k)) if isinstance(k, tuple) else str(k)):
                _jsonable(x) for k, x in v.items()}
    if isinstance(v, (list, tuple)):
        return [_jsonable(x) for x in v]
    return v


def short_hex(b: bytes, n: int = 16) -> str:
    if len(b) <= 2 * n:
        return b.hex()
    return f"{b[:n].hex()}...{b[-4:].hex()} ({len(b)} bytes)"


MAX_FAULT_LINES = 40          # per call: a livelock or a huge request must not flood the console


def format_human(report: dict, where=None) -> str:
    """The run for a reader.  `where(addr)` names an address (`0x... <sym+off>`;
    the CLI passes the stepper's naming so both print addresses alike)."""
    where = where or (lambda a: f"{a:#x}")
    img = report["image"]
    cfg = report["config"]
    out = [f"faultpath run: image={img['name']} (abi {img['abi']}, __vdso_getrandom at {img['getrandom']}, "
           f"vdso_rng_data at base{img['rng_data_offset']:+#x} via {img['rng_data_source']})",
           f"  droppable-oom={cfg['droppable_oom']} memory={cfg['memory_pages']} pages swap={cfg['swap_pages']} "
           f"seed={cfg['seed']} scenario={cfg['scenario']} profile={cfg['profile']}"]
    if cfg["scenario"] != "none":
        out.append(f"  scenario: {cfg['scenario_description']}")
    state, buf = int(cfg["state"], 16), int(cfg["buffer"], 16)

    def label(s) -> str:
        if s.nr != 318:
            return ""
        if s.args[0] == state + 96 and s.args[1] == 32:
            return "  (reseed: new key into state->key)"
        if s.args[0] == buf:
            return "  (fallback: the whole request from the syscall)"
        return ""
    for i, r in enumerate(report["_results"], start=1):
        out.extend(_format_call(i, r, "  ", label, where))
    return "\n".join(out)


def _returned(r: CallResult) -> str:
    return f"-> {r.ret}" if r.ret is not None else f"(no return value: {r.outcome})"


def _format_call(i: int, r: CallResult, ind: str, label, where) -> list[str]:
    lines = [f"call {i} [{r.process}]: getrandom({r.size}) {_returned(r)}  outcome={r.outcome}  "
             f"instructions={r.instructions}  cycles={r.cycles:.0f}"]
    if r.injections:
        lines.append(f"{ind}inject: {', '.join(r.injections)}")
    if r.outcome_detail:
        lines.append(f"{ind}{r.outcome_detail}")
    if r.output:
        lines.append(f"{ind}output: {short_hex(r.output)}")
    events = [(s.index, 1, f"syscall #{s.index} at {where(s.rip)}: {s.name}({', '.join(hex(a) for a in s.args[:3])})"
               + (f" -> {s.ret}" if s.outcome != "livelock" else "") + (f"  [{s.outcome}]" if s.outcome else "")
               + label(s)) for s in r.syscalls]
    events += [(f.index, 0 if f.user else 2, _fault_line(f, where)) for f in r.faults]
    shown = [text for _, _, text in sorted(events, key=lambda e: (e[0], e[1]))]
    if len(shown) > MAX_FAULT_LINES:
        rest = shown[MAX_FAULT_LINES - 1:]
        shown = shown[:MAX_FAULT_LINES - 1] + [f"... {len(rest)} more fault(s)/syscall(s) (--json lists them all)"]
    lines += [ind + x for x in shown]
    for c in r.children:
        lines.extend(ind + x for x in _format_call(i, c, ind, label, where))
    return lines


def _fault_line(f, where) -> str:
    """A fault record for a reader: where, what, the VM_FAULT bits by name (and
    what they were before the VM_DROPPABLE rule), the decision, the cycles."""
    mode = "user" if f.user else "kernel"
    insn = f" [{f.insn}]" if f.insn else ""
    bits = "|".join(f.bits) or "none"
    if orig_bits(f) != f.bits:
        bits += f" (was {'|'.join(orig_bits(f))})"
    s = (f"fault #{f.index} at {where(f.rip)}{insn}: {f.access} {where(f.address)} ({mode}) "
         f"vma[{f.vm_flags or '-'}] bits={bits} -> {f.decision}")
    if f.skip_len is not None:
        s += f" len={f.skip_len}"
    if f.new_rip is not None and f.new_rip != f.rip:
        s += f" new_rip={where(f.new_rip)}"
    if f.repeats > 1:
        s += f" (x{f.repeats})"
    return s + f"  {f.cycles:.0f} cycles"
