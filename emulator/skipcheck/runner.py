"""skipcheck: the instruction-skip regression suite.

Every store form the `skip` design's x86 fault handler must step over
(`corpus`, crossed with prefixes in `instructions`) is run in a real Machine
whose destination is a droppable page under persistent OOM (`oom_machine`),
in every placement that applies (`placements`), and checked (`execute`).
Alongside, each encoding's length is cross-checked between capstone, the
corrected skip length, GNU objdump, Unicorn and GNU as (`lengths`).  The
counts, failures and divergences go into a `report.Report`.

Machines are built per run; instructions are spread over worker processes,
so that code which aborts Unicorn costs only its own instruction.
"""
from __future__ import annotations

import os
import time
from typing import Callable

from emulator.errors import UsageError
from emulator.skipcheck.corpus import load_corpus
from emulator.skipcheck.execute import Run, execute, not_run
from emulator.skipcheck.instructions import Instruction, build_instructions, instruction
from emulator.skipcheck.lengths import cross_check
from emulator.skipcheck.oom_machine import POLICIES
from emulator.skipcheck.oracles import unicorn_length
from emulator.skipcheck.placements import PLACEMENTS, placements_for
from emulator.skipcheck.report import Report

# One worker's task: every selected placement of one instruction
# (instruction, policy, placements, measure Unicorn's lengths too).
_Work = tuple[Instruction, str, tuple[str, ...], bool]


def _selected(ins: Instruction, placements: tuple[str, ...]) -> dict[str, str | None]:
    """placements_for(ins), kept to ``placements`` (all when empty)."""
    return {p: na for p, na in placements_for(ins).items() if not placements or p in placements}


def _task(work: _Work) -> tuple[list[Run], dict[bytes, int | None]]:
    """Worker: every selected placement of one instruction, plus Unicorn's
    length of each distinct encoding."""
    ins, policy, placements, want_lengths = work
    runs = []
    lengths: dict[bytes, int | None] = {}
    for placement, na in _selected(ins, placements).items():
        if na:
            runs.append(not_run(ins, placement, policy, "n/a", na))
            continue
        try:
            runs.append(execute(ins, placement, policy))
        except Exception as e:          # a bug, or code the emulator chokes on: this run only
            runs.append(not_run(ins, placement, policy, "error", f"{type(e).__name__}: {e}"))
    if want_lengths:
        for code in (ins.code, ins.riprel):
            if code is not None and len(code) <= 15:
                lengths[code] = unicorn_length(code)
    return runs, lengths


def _died(work: _Work) -> tuple[list[Run], dict]:
    """The worker died: every case of the instruction that would have run is
    an error (the placements that do not apply stay n/a)."""
    ins, policy, placements, _ = work
    return ([not_run(ins, p, policy, "n/a", na) if na else
             not_run(ins, p, policy, "error", "the emulator process died running this instruction")
             for p, na in _selected(ins, placements).items()], {})


def _pool_map(tasks: list[_Work], jobs: int):
    """Run tasks in worker processes (fork).  A worker that dies (Unicorn can
    abort the process on code it cannot run) costs only the task it was
    running, which is reported as an error: after a broken pool the first
    unfinished tasks (those that were running) are retried one per process,
    the rest go on in a fresh pool."""
    if jobs <= 0:                    # in this process (debugging): no protection
        for t in tasks:
            yield t, _task(t)
        return
    import multiprocessing as mp
    from concurrent.futures import ProcessPoolExecutor
    from concurrent.futures.process import BrokenProcessPool
    ctx = mp.get_context("fork")
    pending = list(range(len(tasks)))
    while pending:
        done: set[int] = set()
        broken = False
        with ProcessPoolExecutor(max_workers=jobs, mp_context=ctx) as ex:
            futs = [(i, ex.submit(_task, tasks[i])) for i in pending]
            for i, f in futs:
                try:
                    res = f.result()
                except BrokenProcessPool:
                    broken = True
                    continue
                done.add(i)
                yield tasks[i], res
        pending = [i for i in pending if i not in done]
        if not broken:
            return
        suspects, pending = pending[:jobs], pending[jobs:]
        for i in suspects:
            with ProcessPoolExecutor(max_workers=1, mp_context=ctx) as ex:
                try:
                    yield tasks[i], ex.submit(_task, tasks[i]).result()
                except BrokenProcessPool:
                    yield tasks[i], _died(tasks[i])


def run_skipcheck(corpus: str = "builtin", policy: str = "skip", *, cross: bool | None = None,
                  placements: tuple[str, ...] | None = None, jobs: int | None = None,
                  lengths: bool = True,
                  select: Callable[[Instruction], bool] | None = None) -> Report:
    """The whole suite.  ``corpus`` is "builtin" or a file; ``cross`` crosses
    every line with prefixes (default: for the builtin corpus only);
    ``placements`` keeps those (default: all); ``select(instruction) ->
    bool`` keeps a subset of the instructions (tests)."""
    if policy not in POLICIES:
        raise UsageError(f"--droppable-oom {policy!r}: expected skip or retry")
    for p in placements or ():
        if p not in PLACEMENTS:
            raise UsageError(f"unknown placement {p!r} (expected one of {', '.join(PLACEMENTS)})")
    chosen = tuple(p for p in PLACEMENTS if not placements or p in placements)
    t0 = time.monotonic()
    name, forms, errors = load_corpus(corpus)
    if not forms and not errors:
        raise UsageError(f"{corpus}: no instructions in the corpus")
    if cross is None:
        cross = corpus == "builtin"
    instructions, more_errors, na_variants = build_instructions(forms, cross)
    if select is not None:
        instructions = [i for i in instructions if select(i)]
    if jobs is None:
        jobs = min(len(instructions) or 1, os.cpu_count() or 1)
    report = Report(name, policy, len(instructions), chosen,
                    line_errors=sorted(errors + more_errors, key=lambda e: e.line),
                    variants_not_applicable=na_variants, jobs=jobs)
    tasks = [(ins, policy, chosen, lengths) for ins in instructions]
    unicorn: dict[bytes, int | None] = {}
    for _task_args, (runs, lens) in _pool_map(tasks, jobs):
        report.runs.extend(runs)
        unicorn.update(lens)
    if lengths:
        report.lengths, report.length_notes = cross_check(instructions, report.runs, unicorn)
    report.seconds = time.monotonic() - t0
    return report


def run_instruction(insn: str | bytes, placement: str = "plain", policy: str = "skip",
                    variant: str = "base") -> Run:
    """Run one instruction in one placement under one policy, in this
    process; the Run says whether it was skipped (by how much, to where),
    refaulted, left the destination and the registers alone, and whether
    the next instruction ran.  For push/call/enter "plain" and "split" mean
    "stack" and "stack-split".  Raises UsageError for a bad instruction;
    a placement that does not apply gives status "n/a"."""
    if placement not in PLACEMENTS:
        raise UsageError(f"unknown placement {placement!r} (expected one of {', '.join(PLACEMENTS)})")
    if policy not in POLICIES:
        raise UsageError(f"unknown policy {policy!r} (expected skip or retry)")
    ins = instruction(insn, variant)
    if ins.info.kind == "stack" and placement in ("plain", "split"):
        placement = "stack" if placement == "plain" else "stack-split"   # where a push goes
    na = placements_for(ins)[placement]
    if na:
        return not_run(ins, placement, policy, "n/a", na)
    return execute(ins, placement, policy)
