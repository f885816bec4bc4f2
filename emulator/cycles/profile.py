"""Cycle profiles: declarative data (emulator/profiles/*.toml) plus lookups.

A profile names every cost it holds and where its value comes from; code only
asks for a form, a machine parameter or an event cost by name.

Units.  Everything a run reports is TSC ticks (what rdtsc counts, what a
native benchmark loop measures).  Instruction timing is kept in *core* cycles
(latencies and throughputs as uops.info / Agner Fog / AMD publish them) and
converted with `meta.tsc_per_core_cycle`, which `faultpath calibrate`
measures with a dependency chain of known latency.  Event costs (faults,
syscalls, fork) are TSC ticks measured natively.

Sections of a profile file:

  [meta]    name, tsc_mhz, tsc_per_core_cycle, source; `base = "zen4"` makes
            this profile a variant: the base is loaded first and every section
            of this file is laid over it, key by key (uiCA-style derivation).
  [core]    scoreboard parameters (dispatch width, load latency, rep strings...)
  [ports]   execution-port groups: name = [pipes]
  [forms]   per-instruction-form timing: "mnemonic sig" = { lat, ports, mops, tp }
  [insn]    legacy per-class costs (rep_element, rep_startup, other) kept for
            callers that still ask insn_cost()
  [event]   event costs in TSC ticks, charged at their stage in the trace
  [measured] what calibrate measured (for reference and for `bench`)
"""
from __future__ import annotations

import math
import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from vdso.errors import UsageError   # cycles/ sits below the core: it takes the hierarchy from its root

PROFILE_DIR = Path(__file__).parent / "profiles"
USER_PROFILE_DIR = Path(os.environ.get("FAULTPATH_PROFILE_DIR",
                                       Path.home() / ".config" / "faultpath" / "profiles"))
DEFAULT_PROFILE = "zen4"

SECTIONS = ("core", "ports", "forms", "insn", "event", "measured", "window")


@dataclass(frozen=True)
class Profile:
    name: str
    tsc_mhz: float
    insn: dict[str, float] = field(default_factory=dict)
    event: dict[str, float] = field(default_factory=dict)
    source: str = ""
    tsc_per_core_cycle: float = 1.0
    core: dict = field(default_factory=dict)
    ports: dict[str, tuple[str, ...]] = field(default_factory=dict)
    forms: dict[str, dict] = field(default_factory=dict)
    measured: dict = field(default_factory=dict)
    path: str = ""
    window: dict[str, dict] = field(default_factory=dict)

    # --- instruction timing ------------------------------------------------------
    def insn_cost(self, cls: str) -> float:
        return self.insn.get(cls, self.insn.get("other", 1.0))

    def param(self, key: str, default: float = 0.0) -> float:
        return float(self.core.get(key, default))

    def form(self, key: str) -> dict | None:
        return self.forms.get(key)

    def to_tsc(self, core_cycles: float) -> float:
        return core_cycles * self.tsc_per_core_cycle

    # --- events ------------------------------------------------------------------
    def event_cost(self, kind: str) -> float:
        return self.event.get(kind, 0.0)

    def stage_cost(self, kind: str, detail: dict) -> float:
        """Cost of one mm fault stage (mm/stages.py STAGE_KINDS)."""
        if kind == "reclaim":
            return (detail.get("dropped", 0) * self.event_cost("drop_page")
                    + detail.get("swapped", 0) * self.event_cost("swap_out")
                    + detail.get("scanned", 0) * self.event_cost("reclaim_scan"))
        if kind == "alloc" and not detail.get("ok", True):
            return self.event_cost("alloc_fail")
        if kind == "zero_fill" and detail.get("from_zero_page"):
            # do_wp_page on the zero page: a zeroed frame replaces the zero-page PTE,
            # which must be cleared and flushed first (measured: write after read).
            return self.event_cost("zero_fill") + self.event_cost("wp_zero_page")
        return self.event_cost(kind)

    def getrandom_blocks(self, nbytes: int) -> int:
        """ChaCha20 blocks the kernel's getrandom() generates for nbytes: requests
        that fit in the key area (32 bytes) are served from it without a block."""
        if nbytes <= int(self.event.get("getrandom_key_bytes", 32)):
            return 0
        return (nbytes + 63) // 64

    def syscall_cost(self, nr: int, nbytes: int = 0) -> float:
        c = self.event_cost("syscall_entry_exit")
        if nr == 318:
            c += self.event_cost("getrandom_call")
            c += self.getrandom_blocks(nbytes) * self.event_cost("getrandom_per_block")
            c += nbytes * self.event_cost("getrandom_per_byte")
        elif nr in (9, 10, 11, 28, 451):
            c += self.event_cost("mm_syscall")
        return c

    def mem_access_penalty(self, addr: int, size: int, store: bool) -> float:
        """Extra TSC ticks for one access beyond an L1 hit: a cache-line split or
        a page split (core.*_split_* parameters)."""
        if size <= 1:
            return 0.0
        end = addr + size - 1
        if (addr ^ end) & ~0xFFF:
            key = "store_page_split" if store else "load_page_split"
        elif (addr ^ end) & ~0x3F:
            key = "store_line_split" if store else "load_line_split"
        else:
            return 0.0
        return self.to_tsc(self.param(key))


def profile_path(name_or_path: str) -> Path:
    path = Path(name_or_path)
    if path.suffix or os.sep in name_or_path:
        return path
    for d in (PROFILE_DIR, USER_PROFILE_DIR):
        p = d / f"{name_or_path}.toml"
        if p.exists():
            return p
    return PROFILE_DIR / f"{name_or_path}.toml"


def _read(name_or_path: str, depth: int = 0) -> tuple[dict, Path, list]:
    path = profile_path(name_or_path)
    try:
        st = path.stat()
        files = [(str(path.resolve()), st.st_mtime_ns, st.st_size)]
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"profile {name_or_path!r}: no such profile") from None
    except (OSError, tomllib.TOMLDecodeError, UnicodeDecodeError) as e:
        raise UsageError(f"profile {name_or_path!r}: {e}") from None
    base = data.get("meta", {}).get("base")
    if base:
        if depth > 4:
            raise UsageError(f"profile {name_or_path!r}: base chain too deep")
        merged, _, more = _read(str(base), depth + 1)
        files += more
        for sec, items in data.items():
            if isinstance(items, dict):
                merged.setdefault(sec, {})
                if sec == "forms":
                    for k, v in items.items():
                        merged[sec][k] = {**merged[sec].get(k, {}), **v} if isinstance(v, dict) else v
                else:
                    merged[sec].update(items)
            else:
                merged[sec] = items
        merged.setdefault("meta", {})["name"] = data.get("meta", {}).get("name", path.stem)
        data = merged
    return data, path, files


def _num(sec: str, k: str, v) -> float:
    try:
        f = float(v)
    except (TypeError, ValueError):
        raise UsageError(f"profile: [{sec}] {k} = {v!r} is not a number") from None
    if math.isnan(f) or f < 0:
        raise UsageError(f"profile: [{sec}] {k} = {v!r} must be a non-negative number")
    return f


_LOADED: dict[tuple, Profile] = {}


def load_profile(name_or_path: str = DEFAULT_PROFILE) -> Profile:
    """The profile by name (emulator/profiles/, then the user's profile directory)
    or path.  The same Profile object comes back while its file (and its base's)
    is unchanged, so per-profile caches (block analyses) are shared."""
    data, path, files = _read(name_or_path)
    key = tuple(files)
    prof = _LOADED.get(key)
    if prof is None:
        prof = _LOADED[key] = _build(name_or_path, data, path)
    return prof


def _build(name_or_path: str, data: dict, path: Path) -> Profile:
    meta = data.get("meta", {})
    ports = {k: tuple(v) for k, v in data.get("ports", {}).items()}
    forms = {}
    for k, v in data.get("forms", {}).items():
        if not isinstance(v, dict):
            raise UsageError(f"profile {name_or_path!r}: [forms] {k!r} must be an inline table")
        f = dict(v)
        for num in ("lat", "mops", "tp"):
            if num in f:
                f[num] = _num("forms", k, f[num])
        p = f.get("ports", "-")
        if p != "-" and p not in ports:
            raise UsageError(f"profile {name_or_path!r}: [forms] {k!r} names unknown port group {p!r}")
        forms[k] = f
    ratio = _num("meta", "tsc_per_core_cycle", meta.get("tsc_per_core_cycle", 1.0))
    if ratio <= 0:
        raise UsageError(f"profile {name_or_path!r}: meta.tsc_per_core_cycle must be > 0")
    return Profile(name=meta.get("name", path.stem), tsc_mhz=_num("meta", "tsc_mhz", meta.get("tsc_mhz", 0)),
                   insn={k: _num("insn", k, v) for k, v in data.get("insn", {}).items()},
                   event={k: _num("event", k, v) for k, v in data.get("event", {}).items()},
                   source=meta.get("source", ""), tsc_per_core_cycle=ratio,
                   core={k: (_num("core", k, v) if not isinstance(v, str) else v)
                         for k, v in data.get("core", {}).items()},
                   ports=ports, forms=forms, measured=data.get("measured", {}), path=str(path),
                   window={k: dict(v) for k, v in data.get("window", {}).items()})
