"""Machine snapshots: restoring and re-running from the middle of a call gives
exactly the run that was not interrupted, any number of times."""
from __future__ import annotations

from emulator.records import Injection
from emulator.run import RunConfig, new_process
from vdso.asm_build import build_image


def _proc():
    return new_process(RunConfig(image=build_image("builtin"), sizes=[300], calls=1, seed=4))


def test_restore_mid_call_replays_identically():
    k, m, caller = _proc()
    caller.getrandom(300)
    ctx = m.prepare_call(caller.func, caller.args(300), size=300)
    m.step(ctx, 123)
    snap = m.snapshot(ctx)
    m.run(ctx)
    ref = (ctx.result.ret, m.read(caller.buffer, 300), m.read(caller.states[0], 144), ctx.index, ctx.cycles)
    for _ in range(3):
        c2 = m.restore(snap)
        assert c2.index == 123
        m.run(c2)
        got = (c2.result.ret, m.read(caller.buffer, 300), m.read(caller.states[0], 144), c2.index, c2.cycles)
        assert got == ref


def test_restore_undoes_a_drop_and_oom_and_a_reseed():
    k, m, caller = _proc()
    caller.getrandom(300)
    ctx = m.prepare_call(caller.func, caller.args(300), size=300,
                         injections=[Injection(50, "drop"), Injection(50, "oom"), Injection(60, "reseed")])
    m.step(ctx, 40)
    snap = m.snapshot(ctx)
    gen = k.generation
    m.run(ctx)
    assert k.generation == gen + 1 and k.phys.failing == "persistent"
    c2 = m.restore(snap)
    assert k.generation == gen and k.phys.failing == "off"
    assert m.read(caller.states[0], 144) != bytes(144)
    m.run(c2)
    assert c2.result.outcome == ctx.result.outcome and c2.result.ret == ctx.result.ret


def test_a_snapshot_changes_no_fault_record_or_cycle_count():
    def once(take_snapshot: bool):
        k, m, caller = _proc()
        caller.getrandom(300)
        ctx = m.prepare_call(caller.func, caller.args(300), size=300)
        m.step(ctx, 77)
        snap = m.snapshot(ctx) if take_snapshot else None
        m.run(ctx)
        del snap
        r = ctx.result
        return (r.ret, m.read(caller.buffer, 300), len(r.faults), r.instructions, round(r.cycles, 6))
    assert once(True) == once(False)


def test_a_released_snapshot_leaves_no_visible_fault_behind():
    """The snapshot's write-protection outlives the snapshot object; the first
    write after its release must still be invisible."""
    import gc

    def once(take_snapshot: bool):
        k, m, caller = _proc()
        caller.getrandom(300)
        ctx = m.prepare_call(caller.func, caller.args(300), size=300)
        m.step(ctx, 77)
        if take_snapshot:
            m.snapshot(ctx)          # dropped at once
            gc.collect()
        m.run(ctx)
        r = ctx.result
        return (r.ret, m.read(caller.buffer, 300), len(r.faults), r.instructions, round(r.cycles, 6))
    assert once(True) == once(False)
