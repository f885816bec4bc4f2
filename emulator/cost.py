"""Cycle profiles: declarative data (emulator/profiles/*.toml) plus lookups.

A profile names every cost it holds and where its value comes from; code only
asks for a class or event cost by name.
"""
from __future__ import annotations

import tomllib
from dataclasses import dataclass, field
from pathlib import Path

from emulator.errors import UsageError

PROFILE_DIR = Path(__file__).parent / "profiles"
DEFAULT_PROFILE = "zen4"


@dataclass(frozen=True)
class Profile:
    name: str
    tsc_mhz: float
    insn: dict[str, float] = field(default_factory=dict)
    event: dict[str, float] = field(default_factory=dict)
    source: str = ""

    def insn_cost(self, cls: str) -> float:
        return self.insn.get(cls, self.insn.get("other", 1.0))

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
        return self.event_cost(kind)

    def syscall_cost(self, nr: int, nbytes: int = 0) -> float:
        c = self.event_cost("syscall_entry_exit")
        if nr == 318:
            c += self.event_cost("getrandom_call")
            extra = max(0, nbytes - int(self.event_cost("getrandom_free_bytes")))
            c += extra * self.event_cost("getrandom_per_byte")
        elif nr in (9, 10, 11, 28, 451):
            c += self.event_cost("mm_syscall")
        return c


def load_profile(name_or_path: str = DEFAULT_PROFILE) -> Profile:
    path = Path(name_or_path)
    if not path.suffix:
        path = PROFILE_DIR / f"{name_or_path}.toml"
    try:
        data = tomllib.loads(path.read_text())
    except FileNotFoundError:
        raise UsageError(f"profile {name_or_path!r}: no such profile") from None
    except (OSError, tomllib.TOMLDecodeError) as e:
        raise UsageError(f"profile {name_or_path!r}: {e}") from None
    meta = data.get("meta", {})
    return Profile(name=meta.get("name", path.stem), tsc_mhz=float(meta.get("tsc_mhz", 0)),
                   insn={k: float(v) for k, v in data.get("insn", {}).items()},
                   event={k: float(v) for k, v in data.get("event", {}).items()},
                   source=meta.get("source", ""))
