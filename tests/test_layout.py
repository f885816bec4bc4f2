"""The layout's rules, kept by a test (docs/architecture.md "The arrows"):
no import circles between packages; mm/ and vdso/ import nothing of the
emulator; the arch core (emulator/'s top) imports no tool room."""
from __future__ import annotations

import import_graph as G

TOOLS = {"emulator.calibrate", "emulator.calibrate.validation", "emulator.cli", "emulator.compare",
         "emulator.debug", "emulator.diffcheck", "emulator.exec", "emulator.skipcheck", "emulator.sweep",
         "emulator.twin"}


def _graph():
    mods, runtime, typed = G.scan()
    both = {m: runtime[m] | typed[m] for m in mods}
    return mods, G.package_graph(mods, both)


def test_no_circles_between_packages():
    _, pg = _graph()
    assert G.sccs(set(pg), pg) == []


def test_mm_and_vdso_import_nothing_of_the_emulator():
    _, pg = _graph()
    for low in ("mm", "vdso"):
        assert not {p for p in pg.get(low, ()) if p.startswith("emulator")}, pg[low]


def test_the_core_imports_no_tool():
    _, pg = _graph()
    assert not pg["emulator"] & TOOLS, pg["emulator"]
    assert not pg.get("emulator.cycles", set()) & (TOOLS | {"emulator"}), pg.get("emulator.cycles")


def test_the_graph_sees_a_circle_when_there_is_one():
    """The checker itself can fail."""
    assert G.sccs({"a", "b", "c"}, {"a": {"b"}, "b": {"a"}, "c": set()}) == [["a", "b"]]
