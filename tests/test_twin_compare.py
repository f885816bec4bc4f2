"""The emulator against the running kernel (issue 18, phase 2): `faultpath
sweep --native`, `--native-repro`, the oracle on native runs.

Every test here runs a handful of boundaries (seconds), and skips with the
reason where the host cannot run it: no __vdso_getrandom, no ptrace, not root
(drop, reseed), no cgroup v1 memory controller (oom).  The tests are built to
be able to fail: agreement at a boundary after the state was written, a
native run the judge must find violating once its ledger (or its memory) is
corrupted, the kernel-copy finding at the exact syscall boundary.
"""
from __future__ import annotations

import dataclasses
import os

import pytest

from emulator.cli.main import main as cli_main
from vdso.abi import NR_getrandom

pytestmark = pytest.mark.host_vdso

SIZE = 64


@pytest.fixture(scope="module")
def native(twin_native):
    return twin_native


def _need(event: str) -> None:
    from emulator.twin import why_not
    why = why_not(event)
    if why:
        pytest.skip(why)


def _compare(events, boundaries, calls_before=1, size=SIZE, **kw):
    """Both sides of one configuration over a few boundaries (the emulator in
    this process), paired and compared."""
    from emulator.sweep.config import make_configs
    from emulator.sweep.coordinator import sweep
    from emulator.twin.agreement import compare_config
    from vdso.loader import load_image
    (cfg,) = make_configs([size], ["start"], [calls_before], "retry", **kw)
    res = sweep(load_image("host"), "host", [cfg], list(events), jobs=0, progress=False, boundaries=boundaries,
                detail=True)
    return compare_config(cfg, "host", list(events), res.baselines[0], res.records, boundaries, {})


def _native_runs(event, lo, hi, calls_before=1, size=SIZE, **kw):
    from emulator.twin import Twin, TwinConfig
    from emulator.twin.judge import NativeJudge
    tw = Twin(TwinConfig(size, calls_before=calls_before, **kw), memory=True)
    try:
        tw.baseline()
        return tw, NativeJudge(tw), tw.sweep([event], lo, hi)
    except BaseException:
        tw.close()
        raise


# ---------------------------------------------------------------------------- agreement
def test_drop_after_the_state_was_written_agrees(native):
    """At 64 B after a warm call the swept call copies from the batch: a drop
    after it wrote in_use and consumed the batch sends it nowhere (fast), a
    drop before that sends it down the reseed path.  Both sides must take the
    same path at each boundary, with the same syscalls and verdicts."""
    _need("drop")
    cc = _compare(["drop"], [(0, 0), (100, 101), (161, 161)])
    assert cc.emulated_baseline.n == cc.native_n == 161
    assert not cc.baseline_differences()
    classes = {p.i: (p.emulated.outcome, p.native.record.outcome) for p in cc.pairs}
    assert classes[0] == ("ok-reseed", "ok-reseed")
    assert classes[161] == ("ok-fast", "ok-fast")            # after the return: the next call reseeds
    for p in cc.pairs:
        assert p.agrees, (p.i, p.differences)
        parent = next(c for c in p.native.calls if c.label == "call 2 [parent]")
        if p.i == 0:
            assert parent.syscalls == ("getrandom(state.key, 32) = 32",)
    after = next(c for c in cc.pairs if c.i == 161).native.calls
    assert after[-1].label == "call 3 [parent]" and after[-1].verdict == "ok-reseed"


def test_reenter_on_a_claimed_state_falls_back_on_both_sides(native):
    """A handler reusing the state while in_use is set (page backed) must fall
    back to the syscall (the oracle's Reentrancy rule), natively as emulated."""
    cc = _compare(["reenter"], [(40, 40)])
    (p,) = cc.pairs
    assert p.agrees, p.differences
    handler = next(c for c in p.native.calls if c.label == "call 2 [handler]")
    assert handler.verdict == "ok-fallback" and handler.syscalls == ("getrandom(buffer, 64) = 64",)


def test_a_different_outcome_is_a_disagreement():
    """The comparison itself: a class, a syscall list or a missing call that
    differs is reported, and identical summaries are not."""
    from emulator.sweep.records import RunRecord
    from emulator.sweep.summary import CallSummary
    from emulator.twin.agreement import compare_pair
    from emulator.twin.judge import NativeVerdict
    a = CallSummary("call 2 [parent]", "swept", "returned", 64, "ok-reseed", ("getrandom(state.key, 32) = 32",))
    b = dataclasses.replace(a, verdict="ok-fallback", syscalls=("getrandom(state.key, 32) = -14",
                                                                "getrandom(buffer, 64) = 64"))
    emu = RunRecord(0, 39, "oom:1", "ok-reseed", calls=[a])
    assert compare_pair(emu, NativeVerdict(RunRecord(0, 39, "oom:1", "ok-reseed"), [a])) == []
    diffs = compare_pair(emu, NativeVerdict(RunRecord(0, 39, "oom:1", "ok-fallback"), [b]))
    assert diffs[0] == "class ok-reseed (emulator) vs ok-fallback (kernel)"
    assert any("syscalls" in d for d in diffs) and any("verdict" in d for d in diffs)
    extra = CallSummary("call 2 [child]", "child", "returned", 64, "ok-fast", ())
    assert any("only on the kernel" in d
               for d in compare_pair(emu, NativeVerdict(RunRecord(0, 39, "oom:1", "ok-reseed"), [a, extra])))


# ---------------------------------------------------------------------------- the judge
def test_the_judge_passes_native_runs_and_fails_them_with_a_corrupted_ledger(native):
    """The ledger holds only what the kernel handed out.  A fast-path run's
    output is keystream of the warm call's reseed key: with that key's bytes
    corrupted in the warm call's getrandom record, Provenance must fail; a
    reseeded run's output likewise once its own reseed bytes are corrupted."""
    _need("drop")
    tw, nj, runs = _native_runs("drop", 0, 1)
    try:
        (r0,) = runs
        ok = nj.run(r0)
        assert ok.record.outcome == "ok-reseed", ok.record.violations
        # the run's own reseed key, corrupted: its output is nobody's keystream
        bad = dataclasses.replace(r0, calls=[dataclasses.replace(c, syscalls=[
            dataclasses.replace(s, data=bytes(b ^ 0x5A for b in s.data)) if s.nr == NR_getrandom else s
            for s in c.syscalls]) for c in r0.calls])
        v = nj.run(bad)
        assert v.record.outcome == "violation"
        assert "Provenance" in {x["invariant"] for x in v.record.violations}
        (fast,) = tw.sweep(["drop"], 161, 162)             # after the return: the swept call was fast
        assert nj.run(fast).record.outcome == "ok-fast"
        warm = [dataclasses.replace(c, syscalls=[dataclasses.replace(s, data=bytes(32)) for s in c.syscalls])
                for c in fast.warm]
        v = nj.run(dataclasses.replace(fast, warm=warm))
        assert "Provenance" in {x["invariant"] for x in v.record.violations}
    finally:
        tw.close()


def test_native_memory_discipline_catches_a_stray_write(native):
    """The watched pages after the swept call, diffed against the walker's at
    the call's entry: clean as measured; a byte changed outside the buffer,
    the state and the frame must be a Memory-discipline violation."""
    _need("drop")
    tw, nj, runs = _native_runs("drop", 50, 51)
    try:
        (r,) = runs
        assert r.pre and "parent" in r.memory
        assert nj.run(r).record.outcome == "ok-reseed"
        from emulator.twin.tracee_image import DATA_BASE
        page = dict(r.memory["parent"])
        page[DATA_BASE] = page[DATA_BASE][:0x800] + b"\x99" + page[DATA_BASE][0x801:]
        v = nj.run(dataclasses.replace(r, memory={"parent": page}))
        assert v.record.outcome == "violation"
        assert {x["invariant"] for x in v.record.violations} == {"Memory discipline"}
    finally:
        tw.close()


# ---------------------------------------------------------------------------- oom
def _reseed_syscall_boundary(calls_before=0):
    """The boundary of the first call's reseed `syscall` (getrandom(state.key, 32))."""
    from emulator.twin import Twin, TwinConfig
    with Twin(TwinConfig(SIZE, calls_before=calls_before)) as tw:
        base = tw.baseline()
        (sc,) = [s for s in base.call.syscalls if s.nr == NR_getrandom]
        return sc.step


def test_kernel_copy_into_a_dropped_droppable_state_is_efault_not_a_spin(native):
    """The finding against DESIGN.md, at the reseed syscall's own boundary of
    a first call, state dropped under a memory limit: the kernel's
    copy_to_user of the key returns -EFAULT at once (VM_FAULT_OOM is cleared
    for user-mode faults only), the vDSO then stores generation = 0 into the
    dropped page and that user-mode store refaults.  The emulator (retry, the
    kernel's design) must show exactly that; oom:1 lets the store through and
    the call falls back to the syscall."""
    _need("oom")
    b = _reseed_syscall_boundary()
    cc = _compare(["oom", "oom:1"], [(b, b)], calls_before=0)
    by = {p.event: p for p in cc.pairs}
    for ev, p in by.items():
        assert p.agrees, (ev, p.differences)
    swept = next(c for c in by["oom"].native.calls if c.label == "call 1 [parent]")
    assert swept.syscalls == ("getrandom(state.key, 32) = -14",)
    assert swept.outcome == "livelock" and swept.livelock == "user"
    swept = next(c for c in by["oom:1"].native.calls if c.label == "call 1 [parent]")
    assert swept.verdict == "ok-fallback"
    assert swept.syscalls == ("getrandom(state.key, 32) = -14", "getrandom(buffer, 64) = 64")


def test_oom_k_fails_exactly_k_page_charges(native):
    """oom:K natively: the memory limit is lifted once K charges failed (the
    tracer paced on the tracee's CPU), so exactly K fail, as in the emulator."""
    _need("oom:2")
    from emulator.twin import Twin, TwinConfig
    from emulator.twin.agreement import RETRIES
    with Twin(TwinConfig(SIZE, calls_before=0)) as tw:
        tw.baseline()
        for r in tw.sweep(["oom:1", "oom:3"], 44, 46):
            k = int(r.event[4:])
            # A loaded machine can lift the limit late (more failures, never fewer):
            # the sweep runs such a run again (agreement.disturbed), and so does this.
            for _ in range(RETRIES):
                if r.failed_charges == k:
                    break
                assert r.failed_charges > k, (r.i, r.event, r.failed_charges)
                r = tw.run_at(r.i, r.event)
            assert r.failed_charges == k, (r.i, r.event, r.failed_charges)
            assert r.calls[0].outcome == "returned"


# ---------------------------------------------------------------------------- the CLI
def test_cli_native_table_and_exit_status(native, capsys):
    _need("drop")
    rc = cli_main(["sweep", "--native", "--size", "64", "--placements", "start", "--events", "drop,fork",
                   "--boundaries", "0,120", "--jobs", "0", "--no-progress"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "n = 161 emulated, 161 on the kernel" in out
    assert "disagreements: none" in out
    row = next(ln for ln in out.splitlines() if ln.strip().startswith("drop "))
    assert row.split()[-1] == "2/2"


def test_cli_native_repro_says_whether_the_kernel_shows_the_same(native, capsys):
    _need("drop")
    rc = cli_main(["sweep", "--native-repro", "--size", "64", "--placements", "start", "--events", "drop",
                   "--boundaries", "7", "--jobs", "0"])
    out = capsys.readouterr().out
    assert rc == 0, out
    assert "boundary 7, event drop" in out and "the kernel shows the same (ok-reseed" in out
    assert "emulator run: faultpath sweep --image host" in out
    assert "kernel run:   faultpath sweep --native-repro --image host" in out


@pytest.mark.parametrize("argv, msg", [
    (["--native", "--image", "builtin"], "--image host"),
    (["--native-repro", "--events", "drop"], "--boundaries"),
    (["--native", "--events", "not-ready", "--boundaries", "0"], "no native form"),
    (["--native", "--mutants"], "--mutants"),
    (["--native", "--native-repro"], "not allowed with"),
])
def test_cli_native_bad_input_is_one_line_and_exit_2(native, capsys, argv, msg):
    rc = cli_main(["sweep", "--size", "4", "--placements", "start", "--jobs", "0"] + argv)
    err = capsys.readouterr().err
    assert rc == 2 and msg in err and len(err.strip().splitlines()) == 1, err


def test_without_ptrace_native_is_one_line_and_exit_2(monkeypatch, capsys):
    """--native is asked for explicitly: where tracing is refused that is an
    error, one line, before any work."""
    import emulator.twin as twin
    from emulator.twin.errors import TwinUnavailable

    def refuse():
        raise TwinUnavailable("native twin: cannot trace a child here (simulated: EPERM)")
    monkeypatch.setattr(twin, "check_ptrace", refuse)
    monkeypatch.setattr("vdso.elf_image.host_has_vgetrandom", lambda: True)
    rc = cli_main(["sweep", "--native", "--size", "4", "--placements", "start", "--events", "drop", "--jobs", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "cannot trace a child here" in err and len(err.strip().splitlines()) == 1


def test_without_root_named_events_fail_and_all_skips_them(native, monkeypatch, capsys):
    """Not root: reseed named in --events is an error (exit 2, the reason);
    reached through `all` it is skipped with the reason, the rest compared."""
    monkeypatch.setattr(os, "geteuid", lambda: 1000)
    rc = cli_main(["sweep", "--native", "--size", "4", "--placements", "start", "--events", "reseed",
                   "--boundaries", "0", "--jobs", "0"])
    err = capsys.readouterr().err
    assert rc == 2 and "CAP_SYS_ADMIN" in err
    rc = cli_main(["sweep", "--native", "--size", "4", "--placements", "start", "--events", "all",
                   "--boundaries", "3", "--jobs", "0", "--no-progress"])
    out = capsys.readouterr().out
    for ev in ("reseed", "drop", "oom", "not-ready"):
        assert f"  {ev}: not run natively:" in out
    assert "fork " in out and "reenter " in out                 # these need no privilege beyond ptrace
    assert rc in (0, 1)


def test_emulator_violations_on_the_host_image_name_their_native_run():
    """A host-image violation's report gives the line that re-runs it on the kernel."""
    from emulator.sweep.config import SweepConfig
    from emulator.sweep.records import RunRecord
    from emulator.sweep.report import SweepResult
    cfg = SweepConfig(64, calls_before=0, droppable_oom="retry")
    res = SweepResult("host", "host", [cfg], ["oom"])
    rec = RunRecord(0, 39, "oom", "violation", 0, [{"invariant": "Termination", "call": "call 1 [parent]",
                                                    "detail": "x"}])
    assert res.native_repro(rec) == ("faultpath sweep --native-repro --image host --size 64 --placements start "
                                     "--calls-before 0 --events oom --boundaries 39")
    assert SweepResult("builtin", "builtin", [cfg], ["oom"]).native_repro(rec) is None
