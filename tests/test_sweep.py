"""`faultpath sweep`: every boundary x every event, judged by the oracle.

Default suite: small sweeps (size 4, one warm call) of the host vDSO and of
builtin, under both OOM designs, plus the machinery (livelock classification,
oom:K, fork equivalence, crash isolation, Dask, CLI, reproduction commands).
Longer sweeps are marked slow."""
from __future__ import annotations

import dataclasses
import importlib.util
import json
import os
import re
import shlex
import subprocess
import sys

import pytest

from emulator.cli.main import main as cli_main
from emulator.records import Injection
from emulator.sweep.config import EVENTS_ALL, SweepConfig, make_configs
from emulator.sweep.coordinator import sweep
from emulator.sweep.harness import CallSnapshot, Harness
from emulator.sweep.report import recheck_command, repro_command, steppable
from vdso.asm_build import ASM_DIR, build_image
from vdso.loader import load_image

ALL = list(EVENTS_ALL)


def _sweep(image, sizes=(4,), cbs=(1,), policy="skip", events=ALL, placements=("start", "end", "straddle"),
           jobs=2, **kw):
    cfgs = make_configs(list(sizes), list(placements), list(cbs), policy, **kw)
    return sweep(image, image.name, cfgs, list(events), jobs=jobs, progress=False)


def _assert_clean(res):
    assert not res.failed, res.format()
    totals = res.outcome_totals()
    assert totals["violation"] == 0 and totals["crash"] == 0
    return totals


# ---------------------------------------------------------------- the claims hold

@pytest.mark.parametrize("policy", ["skip", "retry"])
def test_builtin_passes_a_small_sweep(policy):
    res = _sweep(build_image("builtin"), policy=policy)
    totals = _assert_clean(res)
    n = {c.placement: res.baselines[ci].n for ci, c in enumerate(res.configs)}
    assert res.runs == sum(v + 1 for v in n.values()) * len(ALL)
    assert totals["ok-efault"] > 0 and totals["ok-reseed"] > 0 and totals["ok-fallback"] > 0
    assert totals["livelock"] > 0


@pytest.mark.host_vdso
@pytest.mark.parametrize("policy", ["skip", "retry"])
def test_host_vdso_passes_a_small_sweep(host_image, policy):
    _assert_clean(_sweep(host_image, policy=policy))


def test_the_straddling_state_gives_efault_at_every_boundary():
    res = _sweep(build_image("builtin"), placements=["straddle"], events=["drop", "fork"])
    _assert_clean(res)
    assert {r.outcome for r in res.records} == {"ok-efault"}


# ---------------------------------------------------------------- livelocks and oom:K

def test_persistent_oom_livelocks_are_classified_with_their_location():
    img = build_image("builtin")
    skip = _sweep(img, placements=["start"], events=["oom"], policy="skip")
    retry = _sweep(img, placements=["start"], events=["oom"], policy="retry")
    for res in (skip, retry):
        _assert_clean(res)
        assert res.outcome_totals()["livelock"] > 0
    # skip rescues user writes: only the kernel's own copy_to_user spins
    sites = {r.livelock for r in skip.records if r.outcome == "livelock"}
    assert sites and all(s.startswith("kernel copy_to_user of getrandom into state->key") for s in sites)
    # retry: user-mode writes spin, at the faulting instruction (with its source line)
    rsites = {r.livelock for r in retry.records if r.outcome == "livelock"}
    assert any(s.startswith("user write at __vdso_getrandom+") and "asm/vgetrandom.s:" in s for s in rsites)
    text = retry.format()
    assert "livelocks (expected under persistent OOM" in text and "violations: none" in text


def test_transient_oom_completes():
    res = _sweep(build_image("builtin"), placements=["start"], events=["oom:1", "oom:3"], policy="skip")
    totals = _assert_clean(res)
    assert totals["livelock"] == 0 and totals["ok-reseed"] > 0
    res = _sweep(build_image("builtin"), placements=["start"], events=["oom:2"], policy="retry")
    assert _assert_clean(res)["livelock"] == 0


# ---------------------------------------------------------------- the harness itself

def test_snapshot_fork_child_equals_a_machine_fork_child():
    """The sweep runs a fork's child on the parent's Machine from the snapshot
    at i (droppable VMAs wiped, kernel carried over); Machine.fork() gives the
    same child and the same parent, boundary by boundary."""
    img = build_image("builtin")
    h = Harness(img, SweepConfig(64, calls_before=1))
    h.baseline()
    size = 64
    for i in (0, 20, 60, 100, h.n - 5):
        c = h.S0.restore(h.m)
        h.m.run(c, stop_at=i)
        snap = CallSnapshot(h.m, c)
        rec = h.one_run(snap, i, "fork", c.rip, 0)
        assert rec.outcome.startswith("ok"), rec
        obs = {o.label: o for o in h.last_observations}
        child_obs, parent_obs = obs["call 2 [child]"], obs["call 2 [parent]"]
        # the same boundary through inject.apply's real fork
        c2 = snap.restore(h.m)
        c2.injections = [Injection(i, "fork")]
        c2.budget = h.bound
        h.m.run(c2)
        child = h.m.children[-1]
        child_res = c2.result.children[0]
        assert child_res.ret == child_obs.ret == size
        assert child.read(h.caller.buffer, size) == child_obs.output
        assert h.m.read(h.caller.buffer, size) == parent_obs.output
        assert [s.data for s in child_res.syscalls] == [s.data for s in child_obs.syscalls]
        child.mm.exit_mmap()
        child.close()
        h.m.children.remove(child)


def _aborting_image():
    """builtin with its fallback syscall's `mov eax, 318` replaced by
    `lock bts eax, eax; nop`: Unicorn 2.1.4 aborts the whole process on it
    (DESIGN.md).  Built by hand: the image checks would refuse it."""
    img = build_image("builtin")
    text = bytearray(img.text)
    fallback = text.index(bytes.fromhex("b83e0100000f05e9"))        # mov eax, 0x13e; syscall; jmp .Lreturn
    text[fallback:fallback + 5] = bytes.fromhex("f00fabc090")
    return dataclasses.replace(img, text=bytes(text), name="builtin+lock-bts")


def test_a_unicorn_abort_is_recorded_as_that_runs_outcome():
    img = _aborting_image()
    events = ["drop", "not-ready", "reseed"]
    res = _sweep(img, placements=["start"], events=events, jobs=2)
    crashed = sorted((r.i, r.event) for r in res.records if r.outcome == "crash")
    n = res.baselines[0].n
    # not-ready before the is_ready check (or after the return: then the next call
    # meets it) sends a call down the fallback path: those runs abort
    assert crashed and {e for _, e in crashed} == {"not-ready"}
    assert [i for i, _ in crashed] == list(range(len(crashed) - 1)) + [n]
    assert all("SIGABRT" in r.violations[0]["detail"] for r in res.records if r.outcome == "crash")
    assert all("\n" not in r.violations[0]["detail"] for r in res.records if r.outcome == "crash")
    assert sorted((r.i, r.event) for r in res.records) == sorted((i, e) for i in range(n + 1) for e in events)
    assert all(r.outcome.startswith("ok") for r in res.records if r.outcome != "crash")
    assert res.failed and "crash" in res.format()


def test_an_abort_prints_nothing_on_the_terminal():
    """Even with Python's fault handler on (PYTHONFAULTHANDLER, or pytest's),
    a worker's abort is a crash record, not a stack dump on stderr."""
    code = ("import sys; sys.path.insert(0, sys.argv[1]); from test_sweep import _aborting_image, _sweep; "
            "res = _sweep(_aborting_image(), placements=['start'], events=['not-ready'], jobs=1); "
            "print(sum(r.outcome == 'crash' for r in res.records))")
    proc = subprocess.run([sys.executable, "-c", code, os.path.dirname(__file__)], capture_output=True,
                          text=True, timeout=300, env=dict(os.environ, PYTHONFAULTHANDLER="1"))
    assert proc.returncode == 0, proc.stderr
    assert int(proc.stdout) > 1
    assert proc.stderr == ""


def test_a_child_worker_records_aborts_as_a_local_worker_does():
    """The subprocess-started worker (what a Dask task runs in) attributes
    each abort to its run and finishes the task in a fresh child."""
    from emulator.sweep.executors import ChildWorker, LocalExecutor
    from emulator.sweep.records import SweepTask
    img = _aborting_image()
    cfg = SweepConfig(4)
    base = SweepTask(0, img, cfg, 0, "baseline")
    local = LocalExecutor(1)
    try:
        n = next(rec for _, rec in local.run([base])).n
        task = SweepTask(1, img, cfg, 0, "boundaries", n - 2, n + 1, ("not-ready", "drop"), n)
        want = [(r.i, r.event, r.outcome, r.violations) for _, r in local.run([task])]
    finally:
        local.close()
    child = ChildWorker()
    try:
        got = [(r.i, r.event, r.outcome, r.violations) for r in child.run(task)]
    finally:
        child.close()
    assert [i for i, _, o, _ in got if o == "crash"] == [n]        # not-ready after the return
    assert sorted(got) == sorted(want)


DASK = "the dask extra is not installed (make test installs it)"


def test_dask_executor_on_a_local_cluster():
    pytest.importorskip("distributed", reason=DASK)
    from distributed import LocalCluster
    img = build_image("builtin")
    cfgs = make_configs([4], ["start", "straddle"], [1], "skip")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1") as cluster:
        addr = cluster.scheduler_address.split("://", 1)[1]
        res = sweep(img, "builtin", cfgs, ["drop", "fork", "reenter"], jobs=2, executor=f"dask://{addr}",
                    progress=False)
    local = sweep(img, "builtin", cfgs, ["drop", "fork", "reenter"], jobs=0, progress=False)
    assert res.executor.startswith("dask")
    assert not res.failed
    assert [(r.ci, r.i, r.event, r.outcome) for r in res.records] == \
           [(r.ci, r.i, r.event, r.outcome) for r in local.records]


@pytest.mark.slow
def test_dask_worker_deaths_become_crash_records():
    """An abort on Dask kills the task's child, never the Dask worker: the
    records are the local executor's, crash for crash."""
    pytest.importorskip("distributed", reason=DASK)
    from distributed import LocalCluster
    img = _aborting_image()
    cfgs = make_configs([4], ["start"], [1], "skip")
    with LocalCluster(n_workers=2, threads_per_worker=1, processes=True, dashboard_address=":0",
                      host="127.0.0.1", silence_logs=50) as cluster:
        addr = cluster.scheduler_address.split("://", 1)[1]
        res = sweep(img, "x", cfgs, ["not-ready"], jobs=2, executor=f"dask://{addr}", progress=False)
    local = sweep(img, "x", cfgs, ["not-ready"], jobs=2, progress=False)
    assert [(r.i, r.outcome) for r in res.records] == [(r.i, r.outcome) for r in local.records]
    assert sum(r.outcome == "crash" for r in res.records) > 1


# ---------------------------------------------------------------- CLI, JSON, reproduction

def _cli(argv, capsys):
    rc = cli_main(argv)
    out = capsys.readouterr()
    return rc, out.out, out.err


def test_cli_sweep_json_and_exit_status(tmp_path, capsys):
    path = tmp_path / "s.json"
    rc, out, err = _cli(["sweep", "--image", "builtin", "--size", "4", "--events", "drop,reenter",
                         "--placements", "start", "--jobs", "0", "--json", str(path)], capsys)
    assert rc == 0, out + err
    assert "violations: none" in out and "event" in out and "ok-reseed" in out
    doc = json.loads(path.read_text())
    assert doc["failed"] is False and doc["runs"] > 0 and doc["violations"] == []
    assert set(doc["counts"]["4"]) == {"none", "drop", "reenter"}
    for argv in (["sweep", "--events", "bogus"], ["sweep", "--events", "oom:0"],
                 ["sweep", "--inject", "drop@3"], ["sweep", "--calls", "3"], ["sweep", "--placements", "middle"],
                 ["sweep", "--image", "/nonexistent.s"], ["sweep", "--mutants", "--image", "builtin"],
                 # every option is used or refused: nothing soft-accepted, nothing ignored
                 ["sweep", "--profile", "bogus"], ["sweep", "--profile", ""], ["sweep", "--events", "drop,,"],
                 ["sweep", "--events", ""], ["sweep", "--placements", ""], ["sweep", "--placements", "start,,end"],
                 ["sweep", "--size", ""], ["sweep", "--size", ","], ["sweep", "--calls-before", ""],
                 ["sweep", "--max-report", "-1"], ["sweep", "--state-offset", "3952"], ["sweep", "--prefault"],
                 ["sweep", "--executor", ""], ["sweep", "--executor", "dask://"], ["sweep", "--swap", "-1"],
                 ["sweep", "--flags", "0x100000000"], ["sweep", "--mutants", "--max-report", "3"],
                 ["sweep", "--boundaries", ""], ["sweep", "--boundaries", "5-3"], ["sweep", "--boundaries", "x"]):
        rc, out, err = _cli(argv + ["--jobs", "0"], capsys)
        assert rc == 2 and err.count("\n") == 1 and err.startswith("faultpath: error:"), (argv, err)
        assert out == "", (argv, out)


def test_the_profile_prices_every_run(tmp_path, capsys):
    """--profile drives the cycle figures: a variant of zen4 whose syscall
    entry/exit costs 10000 ticks more leaves the warm call (no syscall) as it
    was and makes a call a drop sends down the reseed path (one syscall)
    10000 ticks dearer."""
    dear = tmp_path / "dear-syscalls.toml"
    dear.write_text('[meta]\nbase = "zen4"\nname = "dear-syscalls"\n[event]\nsyscall_entry_exit = 10270\n')
    docs = []
    for profile in ("zen4", str(dear)):
        path = tmp_path / "p.json"
        rc, out, err = _cli(["sweep", "--image", "builtin", "--size", "4", "--events", "drop", "--placements",
                             "start", "--jobs", "0", "--profile", profile, "--json", str(path)], capsys)
        assert rc == 0, err
        assert f"profile={profile}" in out and "cycles med/max" in out
        docs.append(json.loads(path.read_text()))
    zen4, dear_doc = docs
    assert dear_doc["configs"][0]["profile"] == str(dear)
    assert dear_doc["configs"][0]["cycles"] == zen4["configs"][0]["cycles"] > 0
    assert dear_doc["cycles"]["4"]["drop"]["median"] - zen4["cycles"]["4"]["drop"]["median"] == \
        pytest.approx(10000)
    assert zen4["violations"] == [] and dear_doc["violations"] == []
    # a reproduction prices its run with the sweep's profile
    assert f"--profile {dear}" in repro_command("builtin", SweepConfig(4, profile=str(dear)), "drop", 5, 86)
    assert "--profile" not in repro_command("builtin", SweepConfig(4), "drop", 5, 86)


def test_the_records_do_not_depend_on_how_the_walk_is_chunked():
    """Records, cycles included, are the same in one process (one chunk per
    configuration) and in two workers (chunks of 8 boundaries)."""
    img = build_image("builtin")
    cfgs = make_configs([4], ["start"], [1], "skip")
    one = sweep(img, "builtin", cfgs, ["drop", "reseed"], jobs=0, progress=False)
    two = sweep(img, "builtin", cfgs, ["drop", "reseed"], jobs=2, progress=False)
    assert [dataclasses.asdict(r) for r in one.records] == [dataclasses.asdict(r) for r in two.records]
    assert all(r.cycles for r in one.records)


MUTANT = str(ASM_DIR / "mutants" / "no_final_recheck.patch")


def test_cli_exit_1_and_a_reproduction_that_reproduces(tmp_path, capsys):
    path = tmp_path / "m.json"
    rc, out, err = _cli(["sweep", "--image", MUTANT, "--size", "4", "--events", "drop", "--placements", "start",
                         "--jobs", "2", "--json", str(path)], capsys)
    assert rc == 1
    assert "violations:" in out and "reproduce (breaks Provenance in call 2 [parent]): faultpath step " in out
    doc = json.loads(path.read_text())
    v = next(x for x in doc["violations"] if "Provenance" in x["invariants"])
    assert "zeros" in v["violations"][0]["detail"]
    assert v["breaks"] == "Provenance in call 2 [parent]"
    # the recheck line sweeps that one run again: the same verdict
    again = tmp_path / "again.json"
    cmd = shlex.split(v["recheck"])
    assert cmd[:2] == ["faultpath", "sweep"] and cmd[cmd.index("--boundaries") + 1] == str(v["boundary"])
    rc, out, err = _cli(cmd[1:] + ["--json", str(again)], capsys)
    assert rc == 1 and f"reproduce (breaks {v['breaks']}): " in out
    redo = json.loads(again.read_text())
    assert redo["runs"] == 1 and [x["violations"] for x in redo["violations"]] == [v["violations"]]
    # the same run through `faultpath run --json` (the stepper takes the same options)
    cmd = shlex.split(v["reproduce"])
    assert cmd[:2] == ["faultpath", "step"] and cmd[-2:] == ["-c", "faultstop off; continue"]
    run_argv = ["run"] + cmd[2:-2] + ["--json"]
    rc, out, err = _cli(run_argv, capsys)
    assert rc == 0, err
    report = json.loads(out)
    swept = report["calls"][-1]
    assert swept["injections"] == [f"drop@{v['boundary']}"]
    assert bytes.fromhex(swept["output"]).count(0) >= 4          # the zeros the oracle saw
    assert swept["cycles"] == pytest.approx(v["cycles"], abs=0.05)   # the run report rounds to 0.1
    from emulator.sweep.oracle import judge_run_report
    verdicts = judge_run_report(report)
    assert [x.invariant for x in verdicts[-1].violations] == [x["invariant"] for x in v["violations"]]
    assert all(not vd.violations for vd in verdicts[:-1])


def test_a_reentry_is_reproduced_by_sweeping_its_one_run(tmp_path, capsys):
    """The stepper cannot run a signal handler's nested call, so a reentry's
    reproduction line is the sweep of that one run, and it reproduces."""
    mutant = str(ASM_DIR / "mutants" / "no_in_use_check.patch")
    path = tmp_path / "r.json"
    rc, out, err = _cli(["sweep", "--image", mutant, "--size", "4", "--events", "reenter", "--placements", "start",
                         "--jobs", "0", "--json", str(path)], capsys)
    assert rc == 1
    v = next(x for x in json.loads(path.read_text())["violations"] if "Reentrancy" in x["invariants"])
    assert v["reproduce"] == v["recheck"] and "Reentrancy in call 2 [handler]" in v["breaks"]
    rc, out, err = _cli(shlex.split(v["reproduce"])[1:] + ["--json", str(path)], capsys)
    assert rc == 1, err
    redo = json.loads(path.read_text())
    assert [(x["boundary"], x["violations"]) for x in redo["violations"]] == [(v["boundary"], v["violations"])]


def test_repro_command_shapes():
    cfg = SweepConfig(64, "end", 2, "retry", seed=5)
    assert repro_command("host", cfg, "oom", 10, 100) == (
        'faultpath step --image host --size 64 --calls 3 --seed 5 --droppable-oom retry --livelock 16 '
        '--state-offset 3952 --inject drop@3:10 --inject oom@3:10 -c "faultstop off; continue"')
    # after the return: the event falls before the next call
    assert "--calls 3 --inject fork@3:0" in repro_command("builtin", SweepConfig(4), "fork", 7, 7)
    # a first call under OOM: the caller's buffer must be resident, as in the sweep
    assert "--prefault" in repro_command("builtin", SweepConfig(4, calls_before=0), "oom:2", 7, 70)
    assert "--prefault" not in repro_command("builtin", SweepConfig(4, calls_before=0), "drop", 7, 70)
    assert recheck_command("host", cfg, "reenter", 10) == (
        "faultpath sweep --image host --size 64 --placements end --calls-before 2 --events reenter --boundaries 10 "
        "--seed 5 --droppable-oom retry --jobs 1")
    assert not steppable("reenter") and all(steppable(e) for e in EVENTS_ALL if e != "reenter")


@pytest.mark.skipif(importlib.util.find_spec("emulator.cli.step") is None, reason="faultpath step is not there")
def test_the_reproduction_runs_under_faultpath_step(tmp_path, capsys):
    res = _sweep(load_image(MUTANT), placements=["start"], events=["drop"], jobs=2)
    r = next(r for r in res.violations if r.violations[0]["invariant"] == "Provenance"
             and "zeros" in r.violations[0]["detail"])
    cmd = shlex.split(res.repro(r))
    proc = subprocess.run([sys.executable, "-m", "emulator.cli.main"] + cmd[1:], capture_output=True, text=True,
                          timeout=120, cwd=os.path.dirname(ASM_DIR))
    assert proc.returncode == 0, proc.stderr
    end = [ln for ln in proc.stdout.splitlines() if ln.startswith("call 2 ended:")]
    assert end and "-> 4  outcome=returned" in end[0], proc.stdout
    out_line = proc.stdout.split("call 2 ended:")[1].splitlines()[1]
    assert "output: " in out_line
    output = bytes.fromhex(out_line.split("output: ")[1].split()[0])
    assert output.count(0) >= 2                  # the bytes of the wiped batch the oracle flagged


@pytest.mark.skipif(importlib.util.find_spec("emulator.cli.step") is None, reason="faultpath step is not there")
def test_a_reproduction_lists_the_events_in_the_order_they_happened(capsys):
    """A mutant that writes the generation only after the reseed, its state
    dropped at the reseed: the stepper lists the syscall (#38) before the
    faults that follow it, not after the last one."""
    img = load_image(str(ASM_DIR / "mutants" / "generation_after_reseed.patch"))
    res = sweep(img, img.name, make_configs([4], ["start"], [0], "skip"), ["drop"], jobs=0, progress=False,
                boundaries=[(38, 38)])
    r, = res.violations
    rc, out, err = _cli(shlex.split(res.repro(r))[1:], capsys)
    assert rc == 0, err
    events = [(m.group(1), int(m.group(2)))
              for m in re.finditer(r"^(inject \S+|fault|syscall) at #(\d+)", out, re.M)]
    kinds = {k for k, _ in events}
    assert {"syscall", "fault", "inject drop"} <= kinds, out
    assert [i for _, i in events] == sorted(i for _, i in events), out


# ---------------------------------------------------------------- longer sweeps (CI)

@pytest.mark.slow
@pytest.mark.parametrize("policy", ["skip", "retry"])
def test_builtin_sweep_sizes_4_64_cold_and_warm(policy):
    _assert_clean(_sweep(build_image("builtin"), sizes=(4, 64), cbs=(0, 1), policy=policy))


@pytest.mark.slow
@pytest.mark.host_vdso
@pytest.mark.parametrize("policy", ["skip", "retry"])
def test_host_sweep_sizes_4_64_cold_and_warm(host_image, policy):
    _assert_clean(_sweep(host_image, sizes=(4, 64), cbs=(0, 1), policy=policy))


@pytest.mark.slow
@pytest.mark.host_vdso
def test_host_sweep_size_256(host_image):
    _assert_clean(_sweep(host_image, sizes=(256,), placements=("start", "straddle")))
