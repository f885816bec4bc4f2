"""docs/api.md's examples run, in order, in one namespace: the page's
`assert`s are what it promises."""
from __future__ import annotations

import contextlib
import io
import os
import re

DOC = os.path.join(os.path.dirname(os.path.dirname(os.path.abspath(__file__))), "docs", "api.md")


def blocks() -> list[str]:
    with open(DOC) as f:
        return re.findall(r"^```python\n(.*?)^```$", f.read(), re.M | re.S)


def test_the_api_page_has_examples():
    assert len(blocks()) >= 8


def test_every_example_on_the_api_page_runs():
    ns: dict = {}
    for i, code in enumerate(blocks(), start=1):
        with contextlib.redirect_stdout(io.StringIO()):
            exec(compile(code, f"docs/api.md example {i}", "exec"), ns)
