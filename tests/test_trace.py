"""Traces for timeline viewers (issue 16's second "Done when").

The trace of `make run` (`faultpath run` with the default options and
--trace) is read back here with nothing but `json` and a schema written for
this test (not the writer's code): the Chrome trace-event shape Perfetto UI
and chrome://tracing accept, one process per Machine, one track per kind, a
declared clock, stage names that are kernel functions; and per call, the
user-code spans and the stages add up to the cycles `faultpath run --json`
reports, stage by stage.
"""
from __future__ import annotations

import json
import math
import os
import re
import subprocess
import sys
import xml.etree.ElementTree as ET

import pytest

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))


def faultpath(*args: str, timeout: float = 120) -> subprocess.CompletedProcess:
    return subprocess.run([sys.executable, "-m", "emulator.cli.main", *args], cwd=ROOT, capture_output=True,
                          text=True, timeout=timeout)


# ----------------------------------------------------------------------------- an independent reader
def check_schema(trace: dict) -> list[dict]:
    """The JSON Object Format of the trace-event spec: what a viewer needs."""
    assert set(trace) >= {"traceEvents", "otherData"}
    assert trace.get("displayTimeUnit") in ("ms", "ns")
    clock = trace["otherData"]
    assert isinstance(clock["tsc_mhz"], (int, float)) and clock["tsc_mhz"] > 0
    assert "cycles" in clock["clock"] and str(clock["tsc_mhz"]).rstrip("0").rstrip(".") in clock["clock"]
    events = trace["traceEvents"]
    assert isinstance(events, list) and events
    for e in events:
        assert e["ph"] in ("X", "M"), e
        assert isinstance(e["pid"], int) and isinstance(e["tid"], int) and isinstance(e["name"], str)
        if e["ph"] == "X":
            for k in ("ts", "dur"):
                assert isinstance(e[k], (int, float)) and math.isfinite(e[k]) and e[k] >= 0, e
            assert isinstance(e["args"]["cycles"], (int, float))
            assert abs(e["dur"] * clock["tsc_mhz"] - e["args"]["cycles"]) <= 1e-6 * max(1, e["args"]["cycles"])
        else:
            assert e["name"] in ("process_name", "thread_name", "process_sort_index"), e
    return events


def test_the_trace_of_make_run_loads_back_and_its_stages_add_up(tmp_path):
    trace_file = tmp_path / "run.json"
    r = faultpath("run", "--trace", str(trace_file))
    assert r.returncode == 0, r.stderr
    j = faultpath("run", "--json")
    assert j.returncode == 0, j.stderr
    report = json.loads(j.stdout)
    trace = json.loads(trace_file.read_text())
    events = check_schema(trace)
    mhz = trace["otherData"]["tsc_mhz"]
    # one process per Machine (no fork in `make run`), one named track per kind
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert list(procs) == [1] and procs[1].startswith("parent")
    tracks = {e["args"]["name"] for e in events if e["name"] == "thread_name"}
    assert {"calls", "user code", "page faults", "injections"} <= tracks
    assert any(t.startswith("syscalls") for t in tracks)
    spans = [e for e in events if e["ph"] == "X"]
    calls = sorted((e for e in spans if e["cat"] == "call"), key=lambda e: e["ts"])
    assert len(calls) == len(report["calls"]) == 3
    total = 0.0
    for call, rep in zip(calls, report["calls"]):
        lo, hi = call["ts"], call["ts"] + call["dur"]
        inside = [e for e in spans if e["cat"] in ("user", "stage") and lo - 1e-9 <= e["ts"] < hi - 1e-12]
        assert math.isclose(sum(e["args"]["cycles"] for e in inside), rep["cycles"], rel_tol=1e-9, abs_tol=1e-6)
        assert math.isclose(call["args"]["cycles"], rep["cycles"], rel_tol=1e-12)
        # stage by stage: the same kernel functions and cycles --json lists, in order
        stages = sorted((e for e in inside if e["cat"] == "stage"), key=lambda e: e["ts"])
        assert [(e["args"]["stage"], e["name"], e["args"]["cycles"]) for e in stages] == \
            [(s["stage"], s["function"], s["cycles"]) for s in rep["stages"]]
        user = sum(e["args"]["cycles"] for e in inside if e["cat"] == "user")
        assert math.isclose(user + sum(rep["stage_cycles"].values()), rep["cycles"], rel_tol=1e-9, abs_tol=1e-6)
        total += rep["cycles"]
        # spans lie end to end on the user/stage tracks (no overlap, no gap)
        ordered = sorted(inside, key=lambda e: (e["ts"], e["dur"]))
        t = lo
        for e in ordered:
            assert e["ts"] >= t - 1e-6, e
            t = max(t, e["ts"] + e["dur"])
        assert math.isclose(t, hi, rel_tol=1e-9, abs_tol=1e-6)
    assert math.isclose(total * 1.0, sum(c["dur"] for c in calls) * mhz, rel_tol=1e-9)
    # the scenario's faults: the skipped store's stages are named as the kernel's functions
    names = {e["name"] for e in spans if e["cat"] == "stage"}
    assert {"exc_page_fault", "lock_vma_under_rcu", "handle_mm_fault", "alloc_pages",
            "handle_mm_fault (VM_DROPPABLE)", "insn_fetch_from_user + insn_decode",
            "irqentry_exit_to_user_mode", "do_syscall_64"} <= names
    assert any(re.search(r"-> skip$", e["name"]) for e in spans if e["cat"] == "fault")


def test_a_fault_timeline_picture(tmp_path):
    trace_file = tmp_path / "run.json"
    assert faultpath("run", "--trace", str(trace_file)).returncode == 0
    listing = faultpath("trace", str(trace_file))
    assert listing.returncode == 0 and "fault 1:" in listing.stdout, listing.stdout + listing.stderr
    svg_file = tmp_path / "fault.svg"
    r = faultpath("trace", str(trace_file), "--plot", str(svg_file))
    assert r.returncode == 0, r.stderr
    root = ET.fromstring(svg_file.read_text())
    texts = [t.text for t in root.iter("{http://www.w3.org/2000/svg}text")]
    bars = [b for b in root.iter("{http://www.w3.org/2000/svg}rect")][1:]       # the first is the background
    assert "handle_mm_fault (VM_DROPPABLE)" in texts and "insn_fetch_from_user + insn_decode" in texts
    assert len(bars) == 7 and "skip" in texts[0]                                  # the skipped store: 7 stages
    # a fault by number, and the bad ones
    assert faultpath("trace", str(trace_file), "--plot", str(svg_file), "--fault", "1").returncode == 0
    for bad in (["--fault", "99"], ["--plot", str(tmp_path / "x.txt")]):
        args = ["trace", str(trace_file)] + (bad if bad[0] == "--plot" else ["--plot", str(svg_file)] + bad)
        b = faultpath(*args)
        assert b.returncode == 2 and len(b.stderr.strip().splitlines()) == 1, b.stderr
    from emulator.tracing.timeline import converter
    png = faultpath("trace", str(trace_file), "--plot", str(tmp_path / "fault.png"))
    if converter() is None:
        assert png.returncode == 2 and "converter" in png.stderr
    else:
        assert png.returncode == 0 and (tmp_path / "fault.png").read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def test_step_writes_the_trace_of_its_session(tmp_path):
    out = tmp_path / "step.json"
    r = faultpath("step", "--image", "builtin", "--calls", "2", "--inject", "drop@2:0", "--trace", str(out),
                  "-c", "continue; stepi; continue")
    assert r.returncode == 0, r.stderr
    trace = json.loads(out.read_text())
    events = check_schema(trace)
    calls = [e for e in events if e["ph"] == "X" and e["cat"] == "call"]
    assert len(calls) == 2
    faults = [e for e in events if e["ph"] == "X" and e["cat"] == "fault"]
    assert faults and "<state+0x89>" in faults[-1]["name"]          # named as the stepper names it


def test_a_forked_child_is_its_own_process(tmp_path):
    out = tmp_path / "fork.json"
    r = faultpath("run", "--image", "builtin", "--calls", "2", "--inject", "fork@2:100", "--trace", str(out))
    assert r.returncode == 0, r.stderr
    events = check_schema(json.loads(out.read_text()))
    procs = {e["pid"]: e["args"]["name"] for e in events if e["name"] == "process_name"}
    assert len(procs) == 2 and procs[2].startswith("child")
