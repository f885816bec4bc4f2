"""mm's module structure: the per-concept modules see an address space and
physical memory through the mm_types protocols, MM and PhysMem provide every
member those protocols name, and no import circle (type-only imports counted)
forms inside mm."""

import inspect
import sys
from pathlib import Path

import pytest

from mm import MM, PhysMem
from mm.mm_types import MmStruct, Zone


def _members(proto) -> set[str]:
    names = set(getattr(proto, "__annotations__", {}))
    names |= {n for n, v in vars(proto).items()
              if not n.startswith("__") and (inspect.isfunction(v) or isinstance(v, property))}
    return names


@pytest.mark.parametrize("proto,make", [
    (MmStruct, lambda: MM(PhysMem(8))),
    (Zone, lambda: PhysMem(8)),
], ids=["MmStruct", "Zone"])
def test_implementations_provide_every_protocol_member(proto, make):
    obj = make()
    names = _members(proto)
    assert len(names) > 10
    missing = sorted(n for n in names if not hasattr(obj, n))
    assert not missing, f"{type(obj).__name__} lacks {missing}"


def test_no_import_circle_inside_mm():
    sys.path.insert(0, str(Path(__file__).resolve().parent))
    try:
        import import_graph
    except ImportError:
        pytest.skip("tests/import_graph.py is not there")
    mods, runtime, typed = import_graph.scan()
    mm_mods = {m for m in mods if m == "mm" or m.startswith("mm.")}
    both = {m: (runtime[m] | typed[m]) & mm_mods for m in mm_mods}
    assert import_graph.sccs(mm_mods, both) == []
    # The per-concept modules reach the address space through mm_types only.
    for m in mm_mods - {"mm", "mm.mm_struct"}:
        assert "mm.mm_struct" not in both[m], m
