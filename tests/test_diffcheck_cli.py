"""`faultpath diffcheck` on the command line: bad input, one sequence, the
exit status on a difference.  In its own module: a command maps the fixed
native addresses itself, which test_diffcheck.py's runner holds while it runs."""
from __future__ import annotations

from dataclasses import replace

import pytest

from emulator.cli.main import main
from emulator.diffcheck.native import unavailable_reason
from emulator.diffcheck.privileged import ITEMS

pytestmark = pytest.mark.skipif(unavailable_reason() is not None, reason=unavailable_reason() or "")

FLAGS_IMAGE = next(i for i, it in enumerate(ITEMS) if it.group == "flags-image")


@pytest.mark.parametrize("argv", [["--kind", "bogus"], ["--only", "3"], ["--kind", "privileged", "--only", "100000"],
                                  ["--count", "-1"], ["--kind", "flags", "--jobs", "0"]])
def test_bad_input_is_one_line(capsys, argv):
    assert main(["diffcheck", *argv]) == 2
    err = capsys.readouterr().err.strip().splitlines()
    assert len(err) == 1 and err[0].startswith("faultpath: error:"), err


def test_one_sequence(capsys):
    assert main(["diffcheck", "--kind", "privileged", "--only", str(FLAGS_IMAGE)]) == 0
    out = capsys.readouterr().out
    assert "1 sequences (privileged 1)" in out and "equal 1, different 0" in out


def test_a_difference_exits_1_with_its_reproduction(capsys, monkeypatch, tmp_path):
    """An emulator that gets rax wrong: the table names the class, the JSON
    holds both states, the exit status is 1."""
    from emulator.diffcheck import emulated
    real = emulated.EmulatedRunner.run

    def wrong(self, seq, fresh=False):
        st = real(self, seq, fresh)
        return replace(st, gprs={**st.gprs, "rax": st.gprs["rax"] ^ 1})
    monkeypatch.setattr(emulated.EmulatedRunner, "run", wrong)
    out_json = tmp_path / "d.json"
    assert main(["diffcheck", "--kind", "privileged", "--only", str(FLAGS_IMAGE), "--json", str(out_json)]) == 1
    out = capsys.readouterr().out
    assert "different 1" in out and f"faultpath diffcheck --seed 0 --kind privileged --only {FLAGS_IMAGE}" in out
    import json
    rep = json.loads(out_json.read_text())
    ex = rep["classes"][0]["examples"][0]
    assert rep["classes"][0]["class"].startswith("gpr") and ex["native"]["gprs"]["rax"] != ex["emulated"]["gprs"]["rax"]
