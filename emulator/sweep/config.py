"""What a sweep varies: the configurations (one process set-up each), the
events injected at every boundary, and where the state sits in its page.

A *configuration* is one process set-up: image, request size, where the state
sits in its page (start, end, straddling two pages), how many calls warmed it
(--calls-before), the OOM design and the cycle profile (which prices every
run: the records carry the swept call's cycles).  The events:

  drop       reclaim drops every droppable page (the state reads as zeros)
  oom        memory pressure: the droppable pages are dropped *and* every
             later allocation fails (without the drop the warm state page is
             present and no allocation would ever be attempted)
  oom:K      the same, but only the next K allocation attempts fail
  fork       a fork from a signal handler: the child (its state wiped by
             VM_WIPEONFORK) resumes mid-call; parent and child each finish the
             call and make further calls
  reenter    a signal handler calls getrandom with the same state
  reseed     the kernel's generation moves (crng reseed)
  not-ready  vdso_rng_data.is_ready is cleared
  drop+reenter  reclaim drops the state, then a signal handler calls getrandom
             with it (compare's reentrancy finding; not part of `all`)

A configuration may give the warm calls, a handler's nested call and the
further calls sizes of their own (warm_size, nested_size, after_size; None:
the swept call's size), as compare's reenter scenario does.
"""
from __future__ import annotations

from dataclasses import dataclass

from emulator.cycles.profile import DEFAULT_PROFILE
from emulator.errors import UsageError
from vdso.abi import STATE_SIZE
from vdso.image import PAGE_SIZE

EVENTS_ALL = ("drop", "oom", "oom:2", "fork", "reenter", "reseed", "not-ready")
EVENT_KINDS = ("drop", "oom", "oom:K", "fork", "reenter", "reseed", "not-ready", "drop+reenter")
PLACEMENTS = {"start": 0, "end": PAGE_SIZE - STATE_SIZE, "straddle": PAGE_SIZE - STATE_SIZE // 2}
SWEEP_LIVELOCK = 16       # refaults without progress before a spin is a livelock (persistent OOM
                          # never progresses; a transient oom:K needs K < this)


@dataclass(frozen=True)
class SweepConfig:
    size: int
    placement: str = "start"
    calls_before: int = 1
    droppable_oom: str = "skip"
    seed: int = 0
    memory_pages: int = 4096
    swap_pages: int = 0
    flags: int = 0
    after: int = 1
    livelock_limit: int = SWEEP_LIVELOCK
    profile: str = DEFAULT_PROFILE      # a profile name, or an absolute .toml path
    warm_size: int | None = None        # the warm calls' size (None: size)
    nested_size: int | None = None      # a signal handler's nested call (None: size)
    after_size: int | None = None       # the further calls' (None: size)

    def size_of(self, role: str) -> int:
        """The request size of a call in this role (warm, nested, after; else the swept size)."""
        v = {"warm": self.warm_size, "nested": self.nested_size, "after": self.after_size}.get(role)
        return self.size if v is None else v

    @property
    def max_size(self) -> int:
        return max(self.size_of(r) for r in ("swept", "warm", "nested", "after"))

    @property
    def straddles(self) -> bool:
        off = PLACEMENTS[self.placement]
        return off + STATE_SIZE > PAGE_SIZE

    def label(self) -> str:
        sizes = "".join(f", {r} {v} B" for r, v in (("warm", self.warm_size), ("handler", self.nested_size),
                                                    ("further", self.after_size)) if v is not None)
        return f"size {self.size}, state at {self.placement}, {self.calls_before} call(s) before{sizes}"


def make_configs(sizes: list[int], placements: list[str], calls_before: list[int], policy: str, *, seed: int = 0,
                 memory_pages: int = 4096, swap_pages: int = 0, flags: int = 0, after: int = 1,
                 livelock_limit: int = SWEEP_LIVELOCK, profile: str = DEFAULT_PROFILE,
                 warm_size: int | None = None, nested_size: int | None = None,
                 after_size: int | None = None) -> list[SweepConfig]:
    for p in placements:
        if p not in PLACEMENTS:
            raise UsageError(f"--placements {p!r}: one of {', '.join(PLACEMENTS)}")
    return [SweepConfig(size, p, cb, policy, seed, memory_pages, swap_pages, flags, after, livelock_limit, profile,
                        warm_size, nested_size, after_size)
            for size in sizes for cb in calls_before for p in placements]


def split_list(spec: str, what: str) -> list[str]:
    """The items of a comma list.  An empty list or an empty item (`drop,,`)
    is a mistake to report, not a request for the defaults."""
    items = [p.strip() for p in spec.split(",")]
    if not spec.strip():
        raise UsageError(f"{what} {spec!r}: empty")
    if not all(items):
        raise UsageError(f"{what} {spec!r}: an empty item in the comma list")
    return items


def parse_boundaries(spec: str) -> list[tuple[int, int]]:
    """--boundaries: a comma list of I or I-J (inclusive), as sorted, merged spans."""
    spans = []
    for item in split_list(spec, "--boundaries"):
        lo, sep, hi = item.partition("-")
        try:
            a, b = int(lo), int(hi) if sep else int(lo)
        except ValueError:
            raise UsageError(f"--boundaries {item!r}: expected I or I-J (instruction boundaries)") from None
        if not 0 <= a <= b:
            raise UsageError(f"--boundaries {item!r}: expected 0 <= I <= J")
        spans.append((a, b))
    merged: list[tuple[int, int]] = []
    for a, b in sorted(spans):
        if merged and a <= merged[-1][1] + 1:
            merged[-1] = (merged[-1][0], max(merged[-1][1], b))
        else:
            merged.append((a, b))
    return merged


def parse_events(spec: str, livelock_limit: int) -> list[str]:
    """--events: a comma list of events (oom:K checked against the livelock limit) or all."""
    out: list[str] = []
    for ev in split_list(spec, "--events"):
        if ev == "all":
            out.extend(e for e in EVENTS_ALL if e not in out)
            continue
        if ev.startswith("oom:"):
            try:
                k = int(ev[4:])
            except ValueError:
                raise UsageError(f"--events {ev!r}: K in oom:K must be a number") from None
            if k < 1:
                raise UsageError(f"--events {ev!r}: K must be positive")
            if k >= livelock_limit:
                raise UsageError(f"--events {ev!r}: K must stay below the livelock limit ({livelock_limit}; "
                                 f"raise it with --livelock)")
            ev = f"oom:{k}"
        elif ev not in EVENT_KINDS:
            raise UsageError(f"--events {ev!r}: unknown event (one of: {', '.join(EVENT_KINDS)}, all)")
        if ev not in out:
            out.append(ev)
    return out

