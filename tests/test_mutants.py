"""The oracle has teeth: every mutant of asm/vgetrandom.s (asm/mutants/*.patch,
each removing exactly one safety property) is killed by the invariant it was
designed to break, while the unmutated code passes the same sweep."""
from __future__ import annotations

import json
import shlex

import pytest

from emulator.cli.main import main as cli_main
from emulator.cli.sweep import mutant_files, mutant_header
from emulator.sweep.oracle import INVARIANTS
from emulator.sweep.config import EVENTS_ALL, make_configs
from emulator.sweep.coordinator import sweep
from vdso.asm_build import build_image
from vdso.loader import load_image

# The smallest sweep that reaches each mutant's weakness (size, calls before,
# placement, events); a mutant not listed gets the --mutants defaults.
TARGETED = {
    "no_final_recheck": (4, 1, "start", ["drop", "fork"]),
    "no_batch_zeroing": (4, 1, "start", ["drop"]),
    "no_in_use_check": (4, 1, "start", ["reenter"]),
    "generation_after_reseed": (4, 0, "start", ["drop"]),      # the swept call must reseed
    "no_straddle_check": (4, 1, "straddle", ["drop"]),
    "no_key_erasure": (4, 1, "start", ["drop"]),
    "counter_restart": (70, 1, "start", ["drop"]),              # needs a whole block in the buffer
    "buffer_overrun": (4, 1, "start", ["drop"]),
}

EXPECTED = {"no_final_recheck", "no_batch_zeroing", "no_in_use_check", "generation_after_reseed",
            "no_straddle_check", "no_key_erasure"}


def _targeted(image, name):
    size, cb, place, events = TARGETED.get(name, (None, None, None, None))
    if size is None:
        cfgs = make_configs([4, 70], ["start", "straddle"], [0, 1], "skip")
        events = list(EVENTS_ALL)
    else:
        cfgs = make_configs([size], [place], [cb], "skip")
    return sweep(image, image.name, cfgs, events, jobs=2, progress=False)


def test_the_six_required_mutants_exist():
    names = {mutant_header(f)["name"] for f in mutant_files()}
    assert EXPECTED <= names and len(names) >= 6


@pytest.mark.parametrize("path", mutant_files(), ids=lambda p: p.rsplit("/", 1)[-1])
def test_each_mutant_is_killed_by_the_invariant_it_breaks(path):
    info = mutant_header(path)
    assert info["breaks"] in INVARIANTS and info["removes"]
    res = _targeted(load_image(path), info["name"])
    kills = res.kills()
    assert kills, f"{info['name']} survived"
    fired = {inv for inv, _ in kills}
    assert info["breaks"] in fired, (info, dict(kills))
    # the unmutated code passes the very same sweep
    control = _targeted(build_image("builtin"), info["name"])
    assert not control.failed, control.format()


@pytest.mark.slow
def test_cli_mutants_kills_every_mutant(tmp_path, capsys):
    path = tmp_path / "m.json"
    rc = cli_main(["sweep", "--mutants", "--jobs", "2", "--json", str(path)])
    out = capsys.readouterr().out
    assert rc == 0, out
    doc = json.loads(path.read_text())
    assert doc["all_killed"]
    for row in doc["mutants"]:
        assert row["killed"] and row["designed_invariant_fired"], row["name"]
        assert row["example"]["reproduce"].startswith(("faultpath step ", "faultpath sweep "))
        assert row["name"] in out
    assert "designed to break" in out
    # every example's reproduction line runs: a step session to the end of the
    # call, or (a reentry, which the stepper cannot make) the sweep of that run
    for row in doc["mutants"]:
        cmd = shlex.split(row["example"]["reproduce"])
        rc = cli_main(cmd[1:])
        out = capsys.readouterr().out
        if cmd[1] == "step":
            assert rc == 0 and "ended: getrandom(" in out, (row["name"], out)
        else:
            assert rc == 1 and f"(breaks {row['example']['breaks']})" in out, (row["name"], out)
