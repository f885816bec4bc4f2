"""The whole builtin skipcheck corpus: every store form crossed with every
prefix variant, in every placement, under both designs.  Slow (25 s under
skip with the length cross-check, 15 s under retry, on 2 cores): marked
slow, still run by CI."""
from __future__ import annotations

import time
from collections import Counter

import pytest

from emulator.skipcheck.runner import run_skipcheck
from test_skipcheck import KNOWN_MACHINE_ISSUES, unexpected_failures

pytestmark = pytest.mark.slow


@pytest.mark.parametrize("policy", ["skip", "retry"])
def test_full_builtin_corpus(policy, capsys):
    t0 = time.monotonic()
    rep = run_skipcheck("builtin", policy, lengths=policy == "skip")
    seconds = time.monotonic() - t0
    with capsys.disabled():
        c = rep.counts
        print(f"\nskipcheck builtin --droppable-oom {policy}: {rep.instructions} instructions, "
              f"{len(rep.runs)} cases: pass {c['pass']} refused {c['refused']} fail {c['fail']} "
              f"n/a {c['n/a']} in {seconds:.1f} s ({rep.jobs} jobs)")
    assert rep.instructions > 2000 and rep.line_errors == []
    assert unexpected_failures(rep) == []
    assert set(Counter(r.issue for r in rep.runs if r.status == "fail")) <= set(KNOWN_MACHINE_ISSUES)
    sixteen = [r for r in rep.runs if r.variant == "len16" and r.status != "n/a"]
    assert sixteen and all(r.status == "refused" and not r.skipped for r in sixteen)
    for r in rep.runs:
        if r.status != "pass":
            continue
        if policy == "skip":
            assert r.skipped and r.skip_len == r.length <= 15 and r.next_ran
        else:
            assert r.refaulted and r.livelock and not r.skipped
        assert r.dest_unchanged and r.regs_unchanged
    if policy == "skip":
        assert not rep.unexplained
        assert {c.cls for c in rep.divergences} <= {"capstone-66-near-branch-intel-vs-amd",
                                                    "objdump-prefix-split"}
