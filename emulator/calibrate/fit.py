"""Fitting a profile to native measurements: the machine constants calibrate
may fit (core/TSC ratio, the form latencies its chains measure, event costs
of faults and syscalls), as TOML sections of a variant of a base profile.
"""
from __future__ import annotations

import math

from emulator.cycles.profile import Profile


def _lstsq(rows: list[tuple[float, ...]]) -> list[float]:
    """Least squares y = sum(c_i * x_i) over rows (x_1..x_k, y), coefficients kept
    non-negative by dropping a negative one and refitting (k is tiny)."""
    k = len(rows[0]) - 1
    active = list(range(k))
    while True:
        n = len(active)
        a = [[sum(r[i] * r[j] for r in rows) for j in active] for i in active]
        b = [sum(r[i] * r[-1] for r in rows) for i in active]
        # Gaussian elimination with partial pivoting
        for c in range(n):
            piv = max(range(c, n), key=lambda r_: abs(a[r_][c]))
            if abs(a[piv][c]) < 1e-12:
                return [0.0] * k
            a[c], a[piv] = a[piv], a[c]
            b[c], b[piv] = b[piv], b[c]
            for r_ in range(c + 1, n):
                f = a[r_][c] / a[c][c]
                for j in range(c, n):
                    a[r_][j] -= f * a[c][j]
                b[r_] -= f * b[c]
        x = [0.0] * n
        for c in range(n - 1, -1, -1):
            x[c] = (b[c] - sum(a[c][j] * x[j] for j in range(c + 1, n))) / a[c][c]
        neg = [i for i, v in enumerate(x) if v < 0]
        if not neg or n == 1:
            out = [0.0] * k
            for i, v in zip(active, x):
                out[i] = max(0.0, v)
            return out
        active.pop(neg[0])


def fit_events(meas: dict, base_event: dict) -> tuple[dict, dict]:
    """Event costs (TSC ticks) from native measurements; (values, comments)."""
    ev: dict[str, float] = {}
    com: dict[str, str] = {}
    call = float(meas.get("empty_call", 4.0))      # the harness loop around an empty function
    ee = max(1.0, float(meas["enosys"]) - call)
    ev["syscall_entry_exit"] = ee
    com["syscall_entry_exit"] = "an unknown syscall (-ENOSYS): the bare entry/exit path"
    sc = {int(k): float(v) for k, v in meas.get("syscall", {}).items()}
    key_bytes = int(base_event.get("getrandom_key_bytes", 32))
    if sc:
        # getrandom(n) = call + entry/exit + flat + blocks(n) * per_block + n * per_byte,
        # blocks(n) = 0 up to 32 B (served from the key area), else ceil(n / 64).
        rows = [(1.0, float((s + 63) // 64 if s > key_bytes else 0), float(s), v - call - ee) for s, v in sc.items()]
        flat, pb, pB = _lstsq(rows)
        ev["getrandom_call"] = flat
        ev["getrandom_per_block"] = pb
        ev["getrandom_per_byte"] = pB
        com["getrandom_call"] = "least squares over every size: the per-call part beyond entry/exit"
        com["getrandom_per_block"] = "same fit: per 64-byte ChaCha20 block (none up to 32 B: the key area)"
        com["getrandom_per_byte"] = "same fit: per byte (copy_to_user)"
    f = meas.get("faults", {})
    po = meas.get("page_ops", {})
    if f:
        entry = 0.6 * ee
        ret = 0.4 * ee
        ev["fault_entry"], ev["fault_return"] = entry, ret
        com["fault_entry"] = "0.6 x the bare syscall round trip (exception entry is not separable natively)"
        com["fault_return"] = "0.4 x the bare syscall round trip"
        lookup = float(base_event.get("vma_lookup", 60))
        fixed = entry + ret + lookup + float(base_event.get("vma_check", 0))
        ev["map_zero_page"] = max(0.0, f["read_zero_page"] - fixed)
        com["map_zero_page"] = "read fault on a fresh anonymous page, minus entry/return/lookup"
        clear = max(0.0, po.get("rep_stosb_4k", base_event.get("zero_fill", 0) + call) - call)
        ev["zero_fill"] = min(clear, max(0.0, f["write_zero_fill"] - fixed))
        com["zero_fill"] = "4 KiB rep stosb natively (clear_page_erms stand-in)"
        ev["alloc"] = max(0.0, f["write_zero_fill"] - fixed - ev["zero_fill"])
        com["alloc"] = "first-write fault minus entry/return/lookup/zero_fill: allocator, memcg, rmap, PTE"
        ev["wp_zero_page"] = max(0.0, f["write_after_zero_page"] - f["write_zero_fill"])
        com["wp_zero_page"] = "write after read (COW from the zero page) minus a first-write fault"
        if f.get("cow_copy") == f.get("cow_copy"):       # not NaN
            ev["cow_copy"] = max(0.0, f["cow_copy"] - fixed - ev["alloc"])
            com["cow_copy"] = "write to a read-mapped MAP_PRIVATE memfd page (wp_page_copy) minus the rest"
    if po.get("pageout_per_page"):
        ev["drop_page"] = po["pageout_per_page"]
        com["drop_page"] = "MADV_PAGEOUT of written MAP_DROPPABLE pages, per page"
    fk = meas.get("fork")
    if fk:
        small = 64
        ev["fork"] = fk["base"] + fk["per_page"] * small
        com["fork"] = (f"raw fork() at two sizes: {fk['base']:.0f} + {fk['per_page']:.1f} per resident page, "
                       f"for a {small}-page process")
    return ev, com


def fit_profile(meas: dict, base: str = "zen4", name: str | None = None,
                image_hint: str | None = None) -> tuple[dict, dict]:
    """The calibrated profile as TOML sections (a variant of `base`) and comments."""
    from emulator.cycles.profile import load_profile
    bp = load_profile(base)
    ratio = float(meas["tsc_per_core_cycle"])
    sections: dict[str, dict] = {}
    com: dict[str, str] = {}
    sections["meta"] = {
        "name": name or f"calibrated-{meas.get('host') or 'host'}",
        "base": base,
        "tsc_mhz": round(float(meas.get("tsc_mhz") or bp.tsc_mhz), 1),
        "tsc_per_core_cycle": ratio,
        "source": f"faultpath calibrate on {meas.get('host')} (Linux {meas.get('kernel')}), {meas.get('when')}"
                  + (" [quick]" if meas.get("quick") else ""),
    }
    com["meta.tsc_per_core_cycle"] = "add r,r (1 cycle) and imul r,r (3 cycles) dependency chains"
    forms = {}
    for name_, key in (("add", "add"), ("imul", "imul"), ("paddd", "paddd"), ("pxor", "pxor"), ("por", "por"),
                       ("pslld", "pslld"), ("pshufd", "pshufd"), ("pshuflw", "pshuflw")):
        if name_ in meas.get("chains", {}):
            lat = meas["chains"][name_] / ratio
            forms[key] = {"lat": round(lat, 2)}
            com[f"forms.{key}"] = "measured dependency chain"
    # psrld shares pslld's pipe and latency; por's stands for pand/pandn.
    for twin, src in (("psrld", "pslld"), ("pand", "por"), ("pshufhw", "pshuflw"), ("paddq", "paddd")):
        if src in forms:
            forms[twin] = dict(forms[src])
            com[f"forms.{twin}"] = f"as {src}"
    sections["forms"] = forms
    core: dict[str, float] = {}
    ch = meas.get("chains", {})
    if "load" in ch:
        core["load_latency"] = round(ch["load"] / ratio, 2)
        com["core.load_latency"] = "pointer-chasing chain mov rbx,[rbx]"
    po = meas.get("page_ops", {})
    call = float(meas.get("empty_call", 0))
    if po.get("rep_stosb_4k") and po.get("rep_stosb_1k"):
        t4 = (po["rep_stosb_4k"] - call) / ratio
        t1 = (po["rep_stosb_1k"] - call) / ratio
        if t4 > t1 > 0:
            bpc = 3072.0 / (t4 - t1)
            core["rep_bytes_per_cycle"] = round(bpc, 2)
            core["rep_startup"] = round(max(0.0, t1 - 1024.0 / bpc), 2)
            com["core.rep_bytes_per_cycle"] = "rep stosb of 1 KiB and 4 KiB"
            com["core.rep_startup"] = "same fit: intercept"
    win, wcom = fit_window(meas, bp, ratio)
    if win:
        sections["window"] = win
        com.update(wcom)
    sections["core"] = core
    ev, ecom = fit_events(meas, bp.event)
    sections["event"] = {k: round(v, 2) for k, v in ev.items()}
    for k, c in ecom.items():
        com[f"event.{k}"] = c
    m: dict = {"tsc_mhz": round(float(meas.get("tsc_mhz", 0)), 1), "empty_call": round(call, 2)}
    if meas.get("vdso"):
        m["vdso_image"] = meas.get("vdso_image") or ""
        m["vdso"] = {str(k): round(v, 1) for k, v in meas["vdso"].items()}
    if meas.get("chacha"):
        m["chacha"] = {str(k): round(v, 1) for k, v in meas["chacha"].items()}
    m["syscall"] = {str(k): round(v, 1) for k, v in meas.get("syscall", {}).items()}
    m["faults"] = {k: round(v, 1) for k, v in meas.get("faults", {}).items()}
    m["chains"] = {k: round(v, 4) for k, v in meas.get("chains", {}).items()}
    sections["measured"] = _finite(m)       # a figure that could not be measured is left out, not NaN
    return sections, com


def _finite(d: dict) -> dict:
    out = {}
    for k, v in d.items():
        if isinstance(v, dict):
            out[k] = _finite(v)
        elif not (isinstance(v, float) and not math.isfinite(v)):
            out[k] = v
    return out


def fit_window(meas: dict, base: Profile, ratio: float) -> tuple[dict, dict]:
    """[window] pool entries from the chain loops calibrate times (measure.window):
    the slope between 512 and 2048 iterations is the chain's cycles an iteration;
    what the 512-iteration call saves against it is how far the next call ran
    ahead: entries = saved cycles / cycles an iteration x chain uops an iteration."""
    from emulator.calibrate.harness import WINDOW_LOOPS
    out, com = {}, {}
    for name, t in (meas.get("window") or {}).items():
        t = {int(k): float(v) for k, v in t.items()}
        if name not in base.window or name not in WINDOW_LOOPS or not {512, 2048} <= set(t):
            continue
        slope = (t[2048] - t[512]) / 1536 / ratio
        if slope <= 0:
            continue
        saved = slope * 512 - t[512] / ratio
        entries = max(0.0, saved / slope * WINDOW_LOOPS[name][2])
        out[name] = {"groups": list(base.window[name].get("groups", ())), "entries": round(entries, 1)}
        com[f"window.{name}"] = (f"chain loop ({WINDOW_LOOPS[name][0].splitlines()[0]} ...): {slope:.2f} cycles an "
                                 f"iteration, the next call {saved:.0f} cycles early")
    return out, com
