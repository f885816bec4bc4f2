"""The schema of a cycle profile: every section and key a profile may hold,
its type and its range.  A profile that breaks it is refused with one line
naming the file, the section and key, the value and what was expected, so a
wrong value never turns into a traceback, an infinite cycle count or a model
that silently charges nothing.

Ranges are what a real core could have, with room to spare: a latency of a
thousand core cycles is absurd but finite, 1e308 is not a cost.
"""
from __future__ import annotations

import math
from dataclasses import dataclass

from vdso.errors import UsageError


@dataclass(frozen=True)
class Num:
    lo: float
    hi: float
    flag: bool = False          # 0/1 switch: true/false accepted too
    above: bool = False         # lo itself is excluded (a rate or a ratio must be > 0)

    def expected(self) -> str:
        if self.flag:
            return "0 or 1 (or true/false)"
        return f"a finite number {'>' if self.above else '>='} {self.lo:g} and <= {self.hi:g}"

    def ok(self, v) -> bool:
        if isinstance(v, bool):
            return self.flag
        if not isinstance(v, (int, float)) or not math.isfinite(v):
            return False
        if self.flag:
            return v in (0, 1)
        return (v > self.lo if self.above else v >= self.lo) and v <= self.hi


class Str:
    def expected(self) -> str:
        return "a string"

    def ok(self, v) -> bool:
        return isinstance(v, str)


class Group:
    """The name of a [ports] group."""

    def expected(self) -> str:
        return "the name of a [ports] group"

    def ok(self, v) -> bool:
        return isinstance(v, str) and v != ""


LATENCY = Num(0, 1000)
META = {"name": Str(), "base": Str(), "source": Str(),
        "tsc_mhz": Num(1, 100_000, above=True), "tsc_per_core_cycle": Num(0.01, 100, above=True)}
CORE = {
    "dispatch_width": Num(1, 64),
    "taken_branch_cycles": Num(0, 64),
    "cond_taken_fraction": Num(0, 1),
    "branch_fusion": Num(0, 1, flag=True),
    "move_elimination": Num(0, 1, flag=True),
    "load_latency": LATENCY, "vec_load_latency": LATENCY, "load_scaled_index_extra": LATENCY,
    "mem_rename_latency": LATENCY, "mem_rename_min_bytes": Num(1, 64),
    "store_forward_latency": LATENCY, "vec_store_forward_latency": LATENCY, "store_forward_fail_latency": LATENCY,
    "load_line_split": LATENCY, "store_line_split": LATENCY,
    "load_page_split": Num(0, 100_000), "store_page_split": Num(0, 100_000),
    "pipeline_min_uops": Num(1, 100_000), "pipe_queue": Num(1, 1000),
    "rep_startup": Num(0, 100_000), "rep_bytes_per_cycle": Num(0, 4096, above=True), "rep_min_element": LATENCY,
    "load_ports": Group(), "store_ports": Group(), "vec_store_data_ports": Group(), "branch_ports": Group(),
    "rmw_forward_ports": Group(), "ret_extra_cycles": Num(0, 64), "fetch_line_bytes": Num(1, 4096),
}
FORM = {"lat": LATENCY, "ports": Str(), "mops": Num(0, 64), "tp": LATENCY}
EVENT = Num(0, 1e9)             # TSC ticks: a second of a 1 GHz TSC at most
INSN = Num(0, 1e6)
ENTRIES = Num(0, 100_000)

SECTIONS = ("meta", "core", "ports", "forms", "insn", "event", "measured", "window")
REQUIRED = {"meta": ("tsc_mhz", "tsc_per_core_cycle"), "core": ("dispatch_width", "load_latency", "vec_load_latency"),
            "ports": (), "forms": ("default_int", "default_vec"), "event": ()}
RETIRED = {("core", "window_uops"): "no longer used: the [window] section replaced it (run faultpath calibrate "
                                    "again)"}


def _show(v) -> str:
    s = repr(v)
    return s if len(s) <= 40 else s[:37] + "..."


def check(data: dict, origin) -> None:
    """Refuse a merged profile that breaks the schema.  origin(section, key)
    names the file a key came from."""
    def bad(sec: str, key: str | None, v, what: str):
        where = f"[{sec}]" + (f" {key}" if key is not None else "")
        value = f" = {_show(v)}" if key is not None else ""
        raise UsageError(f"profile {origin(sec, key)}: {where}{value}: expected {what}")

    for sec, items in data.items():
        if sec not in SECTIONS:
            bad(sec, None, None, f"one of the sections {', '.join(SECTIONS)}")
        if not isinstance(items, dict):
            raise UsageError(f"profile {origin(sec, None)}: {sec} = {_show(items)}: expected a [{sec}] table")
    for sec, keys in REQUIRED.items():
        if not data.get(sec):
            raise UsageError(f"profile {origin(sec, None)}: no [{sec}] section (an empty profile would make "
                             f"every cost 0)")
        for k in keys:
            if k not in data[sec]:
                spec = {"meta": META, "core": CORE}.get(sec, {}).get(k)
                raise UsageError(f"profile {origin(sec, k)}: [{sec}] {k} is missing: expected "
                                 + (spec.expected() if spec else "an inline table { lat = ..., ports = ... }"))
    for (sec, k), why in RETIRED.items():
        if k in data.get(sec, {}):
            raise UsageError(f"profile {origin(sec, k)}: [{sec}] {k} is {why}")
    for sec, schema in (("meta", META), ("core", CORE)):
        for k, v in data.get(sec, {}).items():
            spec = schema.get(k)
            if spec is None:
                bad(sec, k, v, f"one of the keys {', '.join(schema)}")
            if not spec.ok(v):
                bad(sec, k, v, spec.expected())
    ports = data.get("ports", {})
    for k, v in ports.items():
        if not (isinstance(v, list) and v and all(isinstance(x, str) and x for x in v)):
            bad("ports", k, v, "a non-empty list of pipe names")
    for k, v in data.get("core", {}).items():
        if isinstance(CORE.get(k), Group) and v not in ports:
            bad("core", k, v, f"the name of a [ports] group ({', '.join(ports)})")
    for k, v in data.get("forms", {}).items():
        if not isinstance(v, dict):
            bad("forms", k, v, "an inline table { lat = ..., ports = ... }")
        for fk, fv in v.items():
            spec = FORM.get(fk)
            if spec is None:
                bad("forms", k, v, f"only the keys {', '.join(FORM)}")
            if not spec.ok(fv):
                bad("forms", f"{k}.{fk}", fv, spec.expected())
        if v.get("ports", "-") != "-" and v["ports"] not in ports:
            bad("forms", f"{k}.ports", v["ports"], f"\"-\" or a [ports] group ({', '.join(ports)})")
    for sec, spec in (("event", EVENT), ("insn", INSN)):
        for k, v in data.get(sec, {}).items():
            if not spec.ok(v):
                bad(sec, k, v, spec.expected() + " (TSC ticks)" if sec == "event" else spec.expected())
    for k, v in data.get("window", {}).items():
        if not isinstance(v, dict) or set(v) != {"groups", "entries"}:
            bad("window", k, v, "an inline table { groups = [...], entries = ... }")
        if not (isinstance(v["groups"], list) and v["groups"] and all(g in ports for g in v["groups"])):
            bad("window", f"{k}.groups", v["groups"], "a non-empty list of [ports] groups")
        if not ENTRIES.ok(v["entries"]):
            bad("window", f"{k}.entries", v["entries"], ENTRIES.expected())
