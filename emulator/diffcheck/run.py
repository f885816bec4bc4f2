"""A differential run: which sequences, both sides, the comparison, and the
totals the report prints.

Kinds and their sizes:
  flags       --count random sequences (flags.py)
  forms       every corpus form x faulting state x inside/straddle (flags.py)
  windows     every window of every shipped image x faulting state x inside/straddle
  privileged  every item of privileged.py

Every sequence is a pure function of (seed, kind, index), so a run can be
split over worker processes (each owns its native mappings and its Machine)
and any one sequence rebuilt alone (`--only`).

A sequence that differs is run once more on both sides with every page that
faulted made present (same bytes): if exactly the same differences remain,
they are the instruction's own (Unicorn's semantics: "without faults too");
otherwise the faults changed the outcome ("across a fault": the fault path,
the restart).  That is the `where` column.
"""
from __future__ import annotations

import multiprocessing
import os
import time
from collections import Counter
from dataclasses import dataclass, field, replace

from emulator.diffcheck.compare import Difference, compare
from emulator.diffcheck.explain import Explained, explain
from emulator.diffcheck.layout import PAGE, RESOLVABLE
from emulator.diffcheck.records import DiffcheckError, Sequence

KINDS = ("flags", "forms", "windows", "privileged")
EXAMPLES_PER_CLASS = 20


def kind_size(kind: str, count: int) -> int:
    if kind == "flags":
        return count
    if kind == "forms":
        from emulator.diffcheck.flags import form_cases
        return len(form_cases())
    if kind == "windows":
        from emulator.diffcheck.windows import window_cases
        return len(window_cases())
    if kind == "privileged":
        from emulator.diffcheck.privileged import ITEMS
        return len(ITEMS)
    raise DiffcheckError(f"diffcheck: unknown kind {kind!r} (one of {', '.join(KINDS)})")


def sequence(seed: int, kind: str, index: int) -> Sequence:
    if kind == "flags":
        from emulator.diffcheck.flags import random_sequence
        return random_sequence(seed, index)
    if kind == "forms":
        from emulator.diffcheck.flags import form_sequence
        return form_sequence(seed, index)
    if kind == "windows":
        from emulator.diffcheck.windows import window_sequence
        return window_sequence(seed, index)
    if kind == "privileged":
        from emulator.diffcheck.privileged import privileged_sequence
        return privileged_sequence(seed, index)
    raise DiffcheckError(f"diffcheck: unknown kind {kind!r} (one of {', '.join(KINDS)})")


def without_faults(seq: Sequence) -> Sequence:
    """The same sequence with every page that would fault and restart made
    present with the bytes it would have shown (zeros, or its content)."""
    pages, content = [], []
    for st, c in zip(seq.pages, seq.content):
        if st in RESOLVABLE:
            pages.append("present")
            content.append(c if c is not None else bytes(PAGE))
        else:
            pages.append(st)
            content.append(c)
    return replace(seq, pages=pages, content=content)


@dataclass
class Checked:
    seq: Sequence
    diff: Difference | None
    where: str = ""           # across a fault | without faults too | no fault taken
    native_s: float = 0.0
    emulated_s: float = 0.0
    explained: Explained | None = None      # explain.py: not an emulator bug, and why

    @property
    def klass(self) -> str:
        return f"{self.diff.klass} ({self.where})" if self.diff else "equal"


class Checker:
    """Both sides for one process."""

    def __init__(self, control: bool = True):
        from emulator.diffcheck.emulated import EmulatedRunner
        from emulator.diffcheck.native import NativeRunner
        self.native = NativeRunner()
        self.emulated = EmulatedRunner()
        self.control = control

    def close(self) -> None:
        self.native.close()
        self.emulated.close()

    def check(self, seq: Sequence) -> Checked:
        why = self.native.supports(seq)
        if why:
            raise DiffcheckError(f"{seq.reproduce()}: {why}")
        t0 = time.perf_counter()
        nat = self.native.run(seq)
        t1 = time.perf_counter()
        emu = self.emulated.run(seq, fresh=seq.kind == "privileged")
        t2 = time.perf_counter()
        diff = compare(seq, nat, emu)
        out = Checked(seq, diff, native_s=t1 - t0, emulated_s=t2 - t1)
        if diff is not None:
            out.explained = explain(diff)
            out.where = "explained" if out.explained else self._where(seq, nat, diff)
        return out

    def _where(self, seq: Sequence, nat, diff: Difference) -> str:
        """Does the difference come with the faults?  Run the sequence again
        with its pages present: the same differences without any fault mean
        the instruction itself; anything else, the fault path."""
        if not nat.faults or not self.control:
            return "no fault taken" if not nat.faults else "across a fault?"
        plain = without_faults(seq)
        again = compare(plain, self.native.run(plain), self.emulated.run(plain, fresh=seq.kind == "privileged"))
        return "without faults too" if again is not None and again.details == diff.details else "across a fault"


@dataclass
class Totals:
    seed: int
    kinds: dict[str, int] = field(default_factory=dict)          # sequences run per kind
    equal: int = 0
    classes: Counter = field(default_factory=Counter)
    examples: dict[str, list[Difference]] = field(default_factory=dict)
    where: dict[str, str] = field(default_factory=dict)
    accesses: dict[str, Counter] = field(default_factory=dict)   # class -> access form -> count
    flag_bits: dict[str, Counter] = field(default_factory=dict)  # class -> wrong flag -> count
    native_s: float = 0.0
    emulated_s: float = 0.0
    wall_s: float = 0.0
    explained: Counter = field(default_factory=Counter)              # explain.py entry -> count
    explained_examples: dict[str, list[tuple[Difference, str]]] = field(default_factory=dict)

    @property
    def total(self) -> int:
        return sum(self.kinds.values())

    @property
    def unexplained(self) -> int:
        """Differences no explain.py entry covers: emulator bugs until shown otherwise."""
        return sum(self.classes.values())

    @property
    def different(self) -> int:
        return self.unexplained + sum(self.explained.values())

    def add(self, c: Checked) -> None:
        self.kinds[c.seq.kind] = self.kinds.get(c.seq.kind, 0) + 1
        self.native_s += c.native_s
        self.emulated_s += c.emulated_s
        if c.diff is None:
            self.equal += 1
            return
        if c.explained is not None:
            name = c.explained.name
            self.explained[name] += 1
            ex = self.explained_examples.setdefault(name, [])
            if len(ex) < EXAMPLES_PER_CLASS:
                ex.append((c.diff, c.explained.reason))
            return
        k = c.klass
        self.classes[k] += 1
        ex = self.examples.setdefault(k, [])
        if len(ex) < EXAMPLES_PER_CLASS:
            ex.append(c.diff)
        self.accesses.setdefault(k, Counter())[c.seq.tags.get("access", "?")] += 1
        self.flag_bits.setdefault(k, Counter()).update(c.diff.flag_bits)

    def merge(self, other: "Totals") -> None:
        for k, v in other.kinds.items():
            self.kinds[k] = self.kinds.get(k, 0) + v
        self.equal += other.equal
        self.classes.update(other.classes)
        for k, ex in other.examples.items():
            mine = self.examples.setdefault(k, [])
            mine += ex[:max(0, EXAMPLES_PER_CLASS - len(mine))]
        for k, c in other.accesses.items():
            self.accesses.setdefault(k, Counter()).update(c)
        for k, c in other.flag_bits.items():
            self.flag_bits.setdefault(k, Counter()).update(c)
        self.explained.update(other.explained)
        for k, ex in other.explained_examples.items():
            mine = self.explained_examples.setdefault(k, [])
            mine += ex[:max(0, EXAMPLES_PER_CLASS - len(mine))]
        self.native_s += other.native_s
        self.emulated_s += other.emulated_s


def plan(kinds: list[str], count: int) -> list[tuple[str, int]]:
    return [(k, i) for k in kinds for i in range(kind_size(k, count))]


def run_plan(seed: int, work: list[tuple[str, int]], jobs: int = 1, progress=None,
             checker: Checker | None = None) -> Totals:
    """Run `work` ((kind, index) pairs); in `jobs` worker processes, or here
    (with `checker` if given: one process holds one set of native mappings)."""
    t0 = time.perf_counter()
    if jobs <= 1 or len(work) < 200 or checker is not None:
        tot = _run_slice(seed, work, progress, checker)
    else:
        # Interleave so every worker gets a share of every kind.
        slices = [work[k::jobs] for k in range(jobs)]
        ctx = multiprocessing.get_context("fork")
        with ctx.Pool(jobs) as pool:
            parts = pool.starmap(_run_slice, [(seed, s, None) for s in slices])
        tot = Totals(seed)
        for p in parts:
            tot.merge(p)
    tot.seed = seed
    tot.wall_s = time.perf_counter() - t0
    return tot


def _run_slice(seed: int, work: list[tuple[str, int]], progress=None, checker: Checker | None = None) -> Totals:
    tot = Totals(seed)
    own = checker is None
    checker = checker or Checker()
    try:
        with checker.native.armed():
            for n, (kind, index) in enumerate(work):
                tot.add(checker.check(sequence(seed, kind, index)))
                if progress is not None and (n + 1) % 500 == 0:
                    progress(n + 1, len(work))
    finally:
        if own:
            checker.close()
    return tot


def default_jobs() -> int:
    return max(1, min(2, len(os.sched_getaffinity(0))))
