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
  [window]  scheduler pools: how many uops waiting on a loop's chain each holds
            (emulator/cycles/window.py)
  [measured] what calibrate measured (for reference and for `bench`)

Every section, key, type and range is checked against emulator/cycles/schema.py
when a profile loads: a bad profile is one line naming the file and the key.
"""
from __future__ import annotations

import os
import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from emulator.cycles import schema
from vdso.errors import UsageError   # cycles/ sits below the core: it takes the hierarchy from its root
from vdso.files import decode_text, read_regular

PROFILE_DIR = Path(__file__).parent / "profiles"
USER_PROFILE_DIR = Path(os.environ.get("FAULTPATH_PROFILE_DIR",
                                       Path.home() / ".config" / "faultpath" / "profiles"))
DEFAULT_PROFILE = "zen4"



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


MAX_PROFILE_BYTES = 1 << 20      # a profile is a few kilobytes; refuse anything near a megabyte


def _load_file(name_or_path: str) -> tuple[dict, Path, tuple]:
    """One profile file, parsed: a regular file of sane size, TOML whose top
    level is tables."""
    path = profile_path(name_or_path)
    if not os.path.lexists(path):
        raise UsageError(f"profile {name_or_path!r}: no such profile")
    # The one way in (vdso/files.py): a regular file, opened without blocking
    # and fstat'ed, at most MAX_PROFILE_BYTES read.
    raw, st = read_regular(str(path), limit=MAX_PROFILE_BYTES, label=f"profile {path}")
    try:
        data = tomllib.loads(decode_text(raw, f"profile {path}"))
    except tomllib.TOMLDecodeError as e:
        raise UsageError(f"profile {path}: not valid TOML: {e}") from None
    for sec, items in data.items():
        if not isinstance(items, dict):
            raise UsageError(f"profile {path}: {sec} = {items!r:.40}: expected a [{sec}] table")
    return data, path, (str(path.resolve()), st.st_mtime_ns, st.st_size)


def _read(name_or_path: str, depth: int = 0) -> tuple[dict, Path, list, dict]:
    """The profile with its base chain merged in (uiCA-style: the base first,
    then every section of this file over it, key by key), the files read, and
    where each (section, key) came from."""
    data, path, ident = _load_file(name_or_path)
    files = [ident]
    origin = {(sec, k): str(path) for sec, items in data.items() for k in items}
    origin.update({(sec, None): str(path) for sec in data})
    base = data.get("meta", {}).get("base")
    if base is not None:
        if not isinstance(base, str) or not base:
            raise UsageError(f"profile {path}: [meta] base = {base!r:.40}: expected the name or path of a profile")
        if depth > 4:
            raise UsageError(f"profile {path}: [meta] base chain deeper than 5 profiles (a loop?)")
        merged, _, more, morigin = _read(base, depth + 1)
        files += more
        for sec, items in data.items():
            merged.setdefault(sec, {})
            if sec == "forms":
                for k, v in items.items():
                    old = merged[sec].get(k, {})
                    merged[sec][k] = {**old, **v} if isinstance(v, dict) and isinstance(old, dict) else v
            else:
                merged[sec].update(items)
        merged.setdefault("meta", {})["name"] = data.get("meta", {}).get("name", path.stem)
        merged["meta"].pop("base", None)
        morigin.update(origin)
        data, origin = merged, morigin
    return data, path, files, origin


_LOADED: dict[tuple, Profile] = {}


def load_profile(name_or_path: str = DEFAULT_PROFILE) -> Profile:
    """The profile by name (emulator/profiles/, then the user's profile directory)
    or path.  The same Profile object comes back while its file (and its base's)
    is unchanged, so per-profile caches (block analyses) are shared."""
    data, path, files, origin = _read(name_or_path)
    key = tuple(files)
    prof = _LOADED.get(key)
    if prof is None:
        schema.check(data, lambda sec, k: origin.get((sec, k)) or origin.get((sec, None)) or str(path))
        prof = _LOADED[key] = _build(data, path)
    return prof


def _build(data: dict, path: Path) -> Profile:
    """The Profile of a merged profile that passed schema.check."""
    meta = data["meta"]
    return Profile(name=str(meta.get("name", path.stem)), tsc_mhz=float(meta["tsc_mhz"]),
                   insn={k: float(v) for k, v in data.get("insn", {}).items()},
                   event={k: float(v) for k, v in data.get("event", {}).items()},
                   source=str(meta.get("source", "")), tsc_per_core_cycle=float(meta["tsc_per_core_cycle"]),
                   core={k: (v if isinstance(v, str) else float(v)) for k, v in data["core"].items()},
                   ports={k: tuple(v) for k, v in data["ports"].items()},
                   forms={k: {fk: (fv if isinstance(fv, str) else float(fv)) for fk, fv in v.items()}
                          for k, v in data["forms"].items()},
                   measured=data.get("measured", {}), path=str(path),
                   window={k: {"groups": tuple(v["groups"]), "entries": float(v["entries"])}
                           for k, v in data.get("window", {}).items()})
