"""`faultpath compare`: the qualitative outcomes the design debate is about,
each read back from real runs of the vDSO machine code (small boundary
subsets and scaled-down call counts; the full run is the CLI's job)."""
from __future__ import annotations

import functools
import json

import pytest

from emulator.compare.scenarios import Options, run_scenario
from emulator.compare.designs import DESIGNS
from vdso.asm_build import build_image

DROPPABLE = ("droppable-skip", "droppable-retry")
ALL = tuple(DESIGNS)


@functools.lru_cache(maxsize=None)
def _image():
    return build_image("builtin")


@functools.lru_cache(maxsize=None)
def run(scenario: str, design: str, **kw):
    opts = Options(seed=3, **kw)
    return run_scenario(scenario, DESIGNS[design], _image(), opts)


def metrics(scenario: str, design: str, **kw) -> dict:
    return run(scenario, design, **kw).metrics


# ---------------------------------------------------------------------- swap
@pytest.mark.parametrize("design", ALL)
def test_only_plain_anon_puts_key_material_in_swap_under_pressure(design):
    m = metrics("pressure", design, scale=0.3)
    assert m["returned"] == m["calls"] and m["swapouts"] > 0        # reclaim did swap, every call returned
    if design == "plain-anon":
        assert m["swap_state_writes"] > 0
        assert m["swap_key_bytes"] > 0 and m["swap_found"].get("key@state", 0) > 0
    else:
        assert m["swap_state_writes"] == 0
        assert m["swap_key_bytes"] == 0 and m["swap_output_state_bytes"] == 0
    if design in DROPPABLE:
        assert m["drops"] > 0 and m["reseeds"] > 4                   # dropped states came back through a reseed


def test_cold_states_reach_swap_only_for_plain_anon():
    plain = metrics("swap", "plain-anon", scale=0.3)
    assert plain["swap_key_bytes"] > 0 and plain["swapins"] > 0
    for d in ("droppable-retry", "mlock", "pinned"):
        assert metrics("swap", d, scale=0.3)["swap_key_bytes"] == 0


# ---------------------------------------------------------------------- core dumps
@pytest.mark.parametrize("design", ALL)
def test_core_dumps_hold_key_material_only_for_plain_anon(design):
    m = metrics("coredump", design, boundaries=10)
    assert m["dumps"] >= 25
    if design == "plain-anon":
        assert m["state_dumped"] and m["dumps_with_key"] >= m["dumps"] - 1 and m["dump_key_bytes_max"] >= 32
    else:
        assert not m["state_dumped"]
        assert m["dumps_with_key"] == 0 and m["dump_output_state_bytes_max"] == 0


# ---------------------------------------------------------------------- fork
@pytest.mark.parametrize("design", ALL)
def test_only_plain_anon_duplicates_output_across_fork(design):
    m = metrics("fork", design, boundaries=8)
    assert m["child_completed"] == m["boundaries"] == 8
    if design == "plain-anon":
        assert m["boundaries_dup_state"] == 8 and m["dup_state_bytes"] > 0
    else:
        assert m["boundaries_dup_state"] == 0 and m["dup_state_bytes"] == 0
        assert m["reseeds"] >= 8                       # every child reseeded its wiped state
    # a fork after the final generation check copies a finished buffer: every design
    last = m["call_instructions"] - 1
    assert m["inherited_window"].endswith(f"..{last}")


def test_same_seed_same_numbers():
    for scenario, kw in (("coredump", {"boundaries": 6}), ("fork", {"boundaries": 4}), ("oom", {})):
        a = run_scenario(scenario, DESIGNS["mlock"], _image(), Options(seed=5, **kw))
        b = run_scenario(scenario, DESIGNS["mlock"], _image(), Options(seed=5, **kw))
        assert a.metrics == b.metrics and a.rows == b.rows


@pytest.mark.parametrize("design", ["mlock", "droppable-retry"])
def test_snapshots_taken_to_step_a_call_add_no_fault(design):
    """The boundary scenarios snapshot and restore; the faults of the calls they
    step must be those of the same calls run without any snapshot."""
    from emulator.compare.world import World
    w = World(DESIGNS[design], _image(), seed=3)
    plain = [w.call(w.parent, 0, n).faults for n in (16, 128, 300)]
    m = metrics("coredump", design, boundaries=7)
    assert m["faults"] == sum(plain)


@pytest.mark.parametrize("design", ["droppable-retry", "plain-anon"])
def test_reusing_an_exited_childs_machine_changes_no_number(design):
    a = metrics("fork", design, boundaries=6, reuse_children=False)
    b = metrics("fork", design, boundaries=6, reuse_children=True)
    assert a == b


def test_mlock_child_loses_its_lock_and_leaks_to_swap():
    m = metrics("fork", "mlock", boundaries=2)
    assert m["child_locked_pages"] == 0 and m["post_fork_child_locked"] == 0
    assert m["post_fork_swap_key_parent"] == 0 and m["post_fork_swap_key_child"] > 0
    p = metrics("fork", "pinned", boundaries=2)
    assert p["post_fork_swap_key_parent"] == 0 and p["post_fork_swap_key_child"] == 0


# ---------------------------------------------------------------------- rlimit / overcommit
def test_mlock_fails_the_memlock_scenario_and_pinned_charges_no_rlimit():
    ml = metrics("memlock", "mlock", memlock_rounds=1)
    assert ml["alloc_fail_rlimit"] > 0 and ml["locked_pages"] == 16            # 64 KiB / 4 KiB
    assert ml["threads_with_state"] == 16 * (4096 // 144)
    assert ml["libc_fallbacks"] == ml["threads"] - ml["threads_with_state"]
    pin = metrics("memlock", "pinned", memlock_rounds=1)
    assert pin["alloc_fail_rlimit"] == 0 and pin["threads_with_state"] == pin["threads"]
    assert pin["locked_pages"] == 0 and pin["pinned_pages"] == pin["state_pages"] > 16
    for d in DROPPABLE + ("plain-anon",):
        m = metrics("memlock", d, memlock_rounds=1)
        assert m["alloc_fail_rlimit"] == 0 and m["locked_pages"] == 0 and m["pinned_pages"] == 0


@pytest.mark.parametrize("design", ALL)
def test_strict_overcommit_refuses_only_accounted_state_pages(design):
    m = metrics("strict-overcommit", design)
    assert m["returned"] == m["threads"]
    if design in ("mlock", "plain-anon"):
        assert m["alloc_fail_overcommit"] > 0 and m["libc_fallbacks"] == m["alloc_fail_overcommit"]
        assert 0 < m["threads_with_state"] < m["threads"]
    else:
        assert m["alloc_fail_overcommit"] == 0 and m["threads_with_state"] == m["threads"]


# ---------------------------------------------------------------------- OOM
def _oom_rows(design):
    return {(r["index"], r["mode"]): r for r in run("oom", design, oom_modes=("persistent", "oom:2", "oom:64")).rows}


def test_oom_follows_the_fault_semantics_of_each_design():
    skip, retry = _oom_rows("droppable-skip"), _oom_rows("droppable-retry")
    assert {i for i, _ in skip} == {i for i, _ in retry} and len({i for i, _ in skip}) == 2
    for (idx, mode), r in skip.items():
        q = retry[(idx, mode)]
        assert r["evicted"] == q["evicted"] == "dropped"
        if mode == "persistent":
            # skip gets the vDSO's own writes past, then getrandom's copy_to_user spins
            assert r["outcome"] == "livelock (kernel)" and r["skips"] > 0 and r["kernel_refaults"] > 1000
            # retry spins at the first user-mode write
            assert q["outcome"] == "livelock (user)" and q["user_refaults"] > 1000 and q["kernel_refaults"] == 0
        else:
            k = int(mode[4:])
            assert r["outcome"] == q["outcome"] == "returned" and r["ret"] == q["ret"] == 256
            assert q["user_refaults"] == k and q["fallbacks"] == 0
            assert r["skips"] + r["kernel_refaults"] == k                 # every failure was a skip or a copy refault
            assert r["zero_output_bytes"] == q["zero_output_bytes"] == r["predictable_output_bytes"] == 0
    # with more failures than user writes to skip, the rest land on the kernel copy
    assert any(r["kernel_refaults"] > 0 for (i, m), r in skip.items() if m == "oom:64")
    for d in ("mlock", "pinned"):
        for r in _oom_rows(d).values():
            assert r["evicted"] == "unevictable" and r["outcome"] == "returned" and r["ret"] == 256
            assert r["skips"] == r["user_refaults"] == r["kernel_refaults"] == 0
    for r in _oom_rows("plain-anon").values():
        assert r["evicted"] == "swapped" and r["outcome"] == "killed"    # swap-in needs a frame: classic OOM


# ---------------------------------------------------------------------- re-entrancy
def test_a_drop_defeats_the_in_use_guard_only_for_droppable_states():
    for d in ALL:
        m = metrics("reenter", d, boundaries=16)
        # without reclaim, a handler using the interrupted call's state falls back to the syscall
        assert m["plain_nested_fallback"] >= m["plain_boundaries"] - 2
        assert m["plain_boundaries_zero_output"] == 0 and m["plain_boundaries_dup_output"] == 0
        if d in DROPPABLE:
            # the drop cleared in_use: the handler used the state, the interrupted call then
            # handed out bytes the handler had already consumed (and zeroed)
            assert m["evicted_nested_used_state"] == m["evicted_boundaries"]
            assert m["evicted_boundaries_zero_output"] > 0 and m["zero_output_bytes"] > 0
        else:
            assert m["evicted_nested_fallback"] == m["plain_nested_fallback"]
            assert m["zero_output_bytes"] == 0


@pytest.mark.host_vdso
def test_the_kernels_own_vdso_hands_out_zeros_after_a_drop_and_a_nested_call(host_image):
    """The same finding on the running kernel's compiled __vdso_getrandom."""
    for d, zero in (("droppable-retry", True), ("mlock", False)):
        m = run_scenario("reenter", DESIGNS[d], host_image, Options(seed=3, boundaries=16)).metrics
        assert (m["evicted_boundaries_zero_output"] > 0) is zero
        assert m["plain_boundaries_zero_output"] == 0


# ---------------------------------------------------------------------- steady state
def test_steady_state_costs_the_same_vdso_work_for_every_design():
    base = metrics("steady", "droppable-skip", scale=0.2)
    for d in ALL:
        m = metrics("steady", d, scale=0.2)
        assert m["returned"] == m["calls"] and m["dup_output_bytes"] == 0
        assert m["instructions_mean"] == base["instructions_mean"]     # same code path once warm
    assert metrics("steady", "mlock", scale=0.2)["faults"] < base["faults"]   # mlock populated the page


# ---------------------------------------------------------------------- report and CLI
def test_summary_matrix_and_report_come_from_the_runs(tmp_path):
    from emulator.compare.core import run_compare
    from emulator.compare.report import format_report, render_svg
    opts = Options(seed=1, boundaries=4, scale=0.1, memlock_threads=500, memlock_rounds=1,
                   oom_modes=("persistent", "oom:2"))
    rep = run_compare(_image(), [DESIGNS[d] for d in ALL],
                      ["oom", "coredump", "memlock", "fork"], opts, jobs=1)
    s = rep["summary"]
    assert s["plain-anon"]["coredump"]["verdict"] == "no" and s["pinned"]["coredump"]["verdict"] == "yes"
    assert s["plain-anon"]["fork"]["verdict"] == "no" and s["mlock"]["fork"]["verdict"] == "yes"
    assert s["mlock"]["rlimit"]["verdict"] == "no" and s["pinned"]["rlimit"]["verdict"] == "yes"
    assert s["droppable-retry"]["oom"]["verdict"] == "partial" and s["pinned"]["oom"]["verdict"] == "yes"
    assert s["mlock"]["swap"]["verdict"] == "no"          # the child's unlocked state after fork
    assert any("kernel" in v["verdict"] or "neither" in v["verdict"] for v in rep["skip_vs_retry"])
    text = format_report(rep)
    assert "== summary" in text and "SPIN-kernel" in text and "SPIN-user" in text and "KILLED" in text
    svg = render_svg(rep)
    assert svg.startswith("<svg") and svg.rstrip().endswith("</svg>") and "plain-anon" in svg
    json.dumps(rep)


def test_cli_compare_json_and_plot(tmp_path, capsys):
    from emulator.cli.main import main
    out = tmp_path / "r.json"
    svg = tmp_path / "r.svg"
    rc = main(["compare", "--designs", "droppable-retry,plain-anon", "--scenarios", "coredump,steady",
               "--boundaries", "3", "--scale", "0.05", "--jobs", "1", "--quiet",
               "--json", str(out), "--plot", str(svg)])
    assert rc == 0
    text = capsys.readouterr().out
    assert "== coredump" in text and "== summary" in text
    rep = json.loads(out.read_text())
    assert set(rep["results"]["coredump"]) == {"droppable-retry", "plain-anon"}
    assert rep["results"]["coredump"]["plain-anon"]["metrics"]["dumps_with_key"] > 0
    assert svg.read_text().startswith("<svg")
    # a saved report renders again without running anything
    svg2 = tmp_path / "again.svg"
    assert main(["compare", "--from-json", str(out), "--plot", str(svg2)]) == 0
    assert "== summary" in capsys.readouterr().out and svg2.read_text() == svg.read_text()


@pytest.mark.parametrize("argv, msg", [
    (["compare", "--from-json", "/nonexistent/r.json"], "No such file"),
    (["compare", "--designs", "nope"], "unknown design"),
    (["compare", "--scenarios", "steady,bogus"], "unknown scenario"),
    (["compare", "--boundaries", "0"], "--boundaries"),
    (["compare", "--oom-modes", "oom:0"], "--oom-modes"),
    (["compare", "--json", "/nonexistent/dir/x.json"], "does not exist"),
])
def test_cli_compare_bad_input_is_one_line_exit_2(argv, msg, capsys):
    from emulator.cli.main import main
    assert main(argv) == 2
    err = capsys.readouterr().err.strip()
    assert "\n" not in err and msg in err


# ---------------------------------------------------------------------- human output (issue 16)
@functools.lru_cache(maxsize=None)
def _subset_report() -> dict:
    """oom and fork only, as in the README's example: a design is OOM-killed."""
    from emulator.compare.core import run_compare
    opts = Options(seed=3, boundaries=4, oom_modes=("persistent", "oom:1"))
    return run_compare(_image(), [DESIGNS[d] for d in ("droppable-retry", "plain-anon")], ["oom", "fork"], opts)


def test_summary_reflects_exactly_the_scenarios_that_ran():
    from emulator.compare.report import format_report
    rep = _subset_report()
    ran = set(rep["config"]["scenarios"])
    for d in rep["config"]["designs"]:
        # the cost is that of the runs in the cycle table, never "not run" beside it
        cost = rep["summary"][d]["cost"]["text"]
        c = rep["cycles"][d]["fork"]
        assert "not run" not in cost and f"fork {c['mean']:.0f}/{c['p99']:.0f}" in cost
    assert rep["summary"]["plain-anon"]["cost"]["text"].startswith("oom: killed, no cost; fork ")
    from emulator.compare.core import SOURCES
    for d in rep["config"]["designs"]:
        for prop in SOURCES:
            cell = rep["summary"][d][prop]
            if ran.isdisjoint(SOURCES[prop]):
                assert cell["verdict"] == "n/a" and all(s in cell["text"] for s in SOURCES[prop])
            else:
                assert cell["verdict"] != "n/a" and "not run" not in cell["text"]
        assert rep["summary"][d]["swap"]["text"].endswith("(from fork only)")   # pressure, swap did not run
    assert "(from the runs above: oom, fork only)" in format_report(rep)


def test_boundary_wording_follows_the_options():
    import re
    from emulator.compare.report import format_report
    from emulator.compare.scenarios import SCENARIOS
    every = re.compile(r"every\s+instruction\s+boundary")
    rep = _subset_report()                                  # --boundaries 4
    text = format_report(rep)
    assert "fork() at 4 instruction boundaries, spread evenly, of a 128-byte call" in text
    assert not every.search(text)
    # a report saved while descriptions said "every" renders as it was run too
    old = {**rep, "scenarios": {**rep["scenarios"], "fork": SCENARIOS["fork"].__doc__}}
    assert not every.search(format_report(old))
    from emulator.compare.scenarios import describe
    for s in ("fork", "coredump", "reenter"):
        doc = SCENARIOS[s].__doc__
        assert every.search(doc) and describe(doc, None) == doc
        assert "the last instruction boundary" in describe(doc, 1)


def _rgb(colour: str) -> tuple[float, float, float]:
    return tuple(int(colour[i:i + 2], 16) / 255 for i in (1, 3, 5))


def test_picture_keeps_design_colours_apart_from_verdicts_and_says_why_a_bar_is_missing():
    import colorsys
    import xml.etree.ElementTree as ET
    from emulator.compare.report import cycles_text, render_svg
    from emulator.compare.core import run_compare
    ns = "{http://www.w3.org/2000/svg}"
    every = run_compare(_image(), [DESIGNS[d] for d in ALL], ["steady"], Options(seed=3, scale=0.05))
    rects = list(ET.fromstring(render_svg(every)).iter(ns + "rect"))
    bars = {r.get("fill") for r in rects if r.find(ns + "title") is not None}
    cells = {r.get("fill") for r in rects if r.get("rx")}
    assert len(bars) == len(ALL) and bars.isdisjoint(cells)
    for c in bars:
        # blues and purples only: green and red mean "holds" and "broken"
        h, _, _ = colorsys.rgb_to_hls(*_rgb(c))
        assert 180 <= h * 360 <= 300, c
    rep = _subset_report()
    svg = ET.fromstring(render_svg(rep))
    texts = [t.text for t in svg.iter(ns + "text")]
    assert "plain-anon: killed, no cost" in texts and "NO: a run broke it" in texts
    assert "killed: no cost" in cycles_text(rep)
    # every design's colour, apart in grey-scale too
    from emulator.compare.report import design_color
    palette = [design_color(d, i) for i, d in enumerate(DESIGNS)]
    greys = sorted(0.299 * r + 0.587 * g + 0.114 * b for r, g, b in map(_rgb, palette))
    assert all(b - a >= 0.1 for a, b in zip(greys, greys[1:]))


def test_human_output_has_no_python_values_and_rounds_cycles():
    import re
    from emulator.compare.report import format_report
    rep = _subset_report()
    text = format_report(rep)
    assert not re.search(r"\bNone\b|\bTrue\b|\bFalse\b|[{}\[\]]|'\w+':", text)
    head, body = text.split("\n\n", 1)                                 # the head has abi 6.11, elapsed=1.5s
    assert not re.search(r"\d\.\d", body)                                # cycles, rounded
    assert any(isinstance(r["metrics"]["cycles_mean"], float) for r in rep["results"]["fork"].values())


def test_the_readmes_picture_is_a_full_run_drawn_by_this_renderer():
    import pathlib
    import xml.etree.ElementTree as ET
    from emulator.compare.scenarios import SCENARIOS
    path = pathlib.Path(__file__).resolve().parent.parent / "docs" / "compare.svg"
    svg = ET.parse(path).getroot()
    texts = {t.text for t in svg.iter("{http://www.w3.org/2000/svg}text")}
    assert set(SCENARIOS) <= texts and set(DESIGNS) <= texts
    assert "NO: a run broke it" in texts and "plain-anon: killed, no cost" in texts
