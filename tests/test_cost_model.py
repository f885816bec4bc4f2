"""The cycle model: the per-block scoreboard (emulator/cycles/scoreboard.py over the
instruction forms of emulator/cycles/uarch.py), the block cache, profiles as data,
and event costs charged once per fault stage.  Numeric accuracy against the
real CPU is `faultpath bench`'s job, not a unit test's."""
from __future__ import annotations

import pytest

from emulator.cycles.blocks import analyse_code
from emulator.cycles.profile import load_profile
from emulator.errors import UsageError
from vdso.asm_build import assemble_snippet

P = load_profile("zen4")


def timing(src: str, addr: int = 0x1000):
    return analyse_code(bytes(assemble_snippet(src, addr, "<test>")), addr, P)


@pytest.mark.parametrize("n", [4, 16, 64])
def test_a_chain_of_n_adds_costs_n_latencies(n):
    t = timing("add rax, rcx\n" * n)
    lat = P.forms["add"]["lat"]
    assert t.latency == pytest.approx(n * lat)
    assert t.recurrence == pytest.approx(n * lat)      # rax feeds the next execution too
    assert t.cost == pytest.approx(n * lat)
    assert t.bound == "recurrence"


def test_a_chain_of_imuls_costs_three_cycles_each():
    assert timing("imul rax, rcx\n" * 10).cost == pytest.approx(30)


def test_independent_adds_are_throughput_bound():
    regs = ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "r8", "r9", "r10", "r11", "r12", "r13"]
    t = timing("".join(f"add {r}, 0x1\n" for r in regs))
    assert t.recurrence == pytest.approx(1)
    assert t.latency == pytest.approx(1)
    # 12 ALU uops over 4 ALU pipes: 3 cycles (dispatch alone would allow 2)
    assert t.throughput == pytest.approx(12 / len(P.ports["ALU"]))
    assert t.cost == pytest.approx(3)
    assert t.bound.startswith("ports:")


def test_dispatch_width_bounds_eliminated_moves():
    t = timing("mov rax, rbx\nmov rcx, rdx\n" * 6)      # 12 eliminated moves: no pipe, 6 a cycle
    assert t.cost == pytest.approx(12 / P.core["dispatch_width"])
    assert t.bound == "dispatch"


def test_zero_idiom_breaks_a_chain():
    t = timing("add rax, rcx\nadd rax, rcx\nxor eax, eax\nadd rax, rcx\n")
    assert t.latency == pytest.approx(2)
    assert t.recurrence == 0            # the final rax no longer depends on the previous execution


def test_vector_shifts_use_two_pipes():
    t = timing("".join(f"pslld xmm{i}, 0x1\n" for i in range(8)))
    assert t.throughput == pytest.approx(8 / len(P.ports["VSHIFT"]))


def test_loop_carried_chain_across_repeated_executions():
    # The loop's own recurrence is the imul chain (3), not its throughput or the adds.
    t = timing(".Ltop:\nadd rsi, 0x1\nimul rbx, rbx\nadd rdi, rsi\ndec rdx\njnz .Ltop\n")
    assert t.detail["loop"]
    assert t.recurrence == pytest.approx(3)
    assert t.cost == pytest.approx(3)


def test_loop_inside_a_longer_block_keeps_its_chain():
    # Unicorn may merge a loop's pre-header with the first iteration: the block
    # still costs the loop's chain, not just its throughput.
    pre = "movdqa xmm1, xmm5\nmov eax, 0xa\n"
    body = ".Ltop:\npaddd xmm1, xmm2\npxor xmm1, xmm3\npslld xmm1, 0x7\npor xmm1, xmm4\ndec eax\njnz .Ltop\n"
    t = timing(pre + body)
    assert t.recurrence == pytest.approx(4)


def test_chacha_double_round_is_latency_bound():
    """The host vDSO's ChaCha20 loop: 2 x (4 quarter-round steps of 4 + pshufd) = 34."""
    step = ("paddd xmm1, xmm2\npxor xmm4, xmm1\nmovdqa xmm0, xmm4\npslld xmm0, 0x10\npsrld xmm4, 0x10\n"
            "por xmm4, xmm0\npaddd xmm3, xmm4\npxor xmm2, xmm3\nmovdqa xmm0, xmm2\npslld xmm0, 0xc\n"
            "psrld xmm2, 0x14\npor xmm2, xmm0\n")
    half = step * 2 + "pshufd xmm2, xmm2, 0x39\npshufd xmm3, xmm3, 0x4e\npshufd xmm4, xmm4, 0x93\n"
    t = timing(".Ltop:\n" + half * 2 + "dec al\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(34)
    assert t.throughput < 15


def test_stores_bound_loops_only():
    straight = timing("mov qword ptr [rdi], rax\n" * 8)
    loop = timing(".Ltop:\n" + "mov qword ptr [rdi], rax\n" * 8 + "dec rcx\njnz .Ltop\n")
    assert straight.cost < loop.cost == pytest.approx(8 / len(P.ports["ST"]))


def test_rep_string_tail_has_startup_and_element_costs():
    t = timing("mov ecx, 0x10\nrep stosq qword ptr [rdi], rax\n")
    assert t.bound == "rep"
    assert t.cost >= P.core["rep_startup"]
    assert t.rep_elem == pytest.approx(8 / P.core["rep_bytes_per_cycle"])


def test_core_cycles_convert_to_tsc():
    assert P.to_tsc(100) == pytest.approx(100 * P.tsc_per_core_cycle)
    assert 0.3 < P.tsc_per_core_cycle < 2


def test_getrandom_syscall_cost_counts_chacha_blocks():
    assert [P.getrandom_blocks(n) for n in (0, 1, 32, 33, 64, 65, 128, 4096)] == [0, 0, 0, 1, 1, 2, 2, 64]
    small, one, two = P.syscall_cost(318, 32), P.syscall_cost(318, 64), P.syscall_cost(318, 96)
    assert small < one < two
    assert two - one == pytest.approx(P.event["getrandom_per_block"] + 32 * P.event["getrandom_per_byte"])


def test_split_access_penalties():
    assert P.mem_access_penalty(0x1000, 8, store=False) == 0
    assert P.mem_access_penalty(0x103C, 8, store=False) == pytest.approx(P.to_tsc(P.core["load_line_split"]))
    assert P.mem_access_penalty(0x1FFC, 8, store=True) == pytest.approx(P.to_tsc(P.core["store_page_split"]))


# --- memory dependencies by address (emulator/cycles/memdeps.py) ----------------------------

FWD = P.core["store_forward_latency"]
RENAME = P.core["mem_rename_latency"]


def test_a_counter_in_a_stack_slot_is_a_loop_carried_chain():
    # gcc -O0 keeps i in [rbp-8]: load, add, imul, store back.  The chain goes
    # through memory from one iteration to the next: add + imul + the rename.
    t = timing(".Ltop:\nmov rax, qword ptr [rbp - 0x8]\nadd rax, rcx\nimul rax, rax\n"
               "mov qword ptr [rbp - 0x8], rax\ndec rdx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(1 + P.forms["imul"]["lat"] + RENAME)
    assert t.bound == "recurrence"


def test_the_memory_source_of_an_alu_op_is_forwarded_not_renamed():
    t = timing(".Ltop:\nxor eax, dword ptr [rsi]\nmov dword ptr [rsi], eax\ndec ecx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(FWD + P.forms["xor"]["lat"])


def test_a_narrow_read_modify_write_chain_pays_the_forwarding_latency():
    t = timing(".Ltop:\nadd byte ptr [rsi], 0x1\ndec ecx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(FWD + 1)
    wide = timing(".Ltop:\nadd qword ptr [rsi], 0x1\ndec ecx\njnz .Ltop\n")
    assert wide.recurrence == pytest.approx(RENAME + 1)


def test_vector_stores_forward_with_their_own_latency():
    t = timing(".Ltop:\nmovdqu xmmword ptr [rsi], xmm0\nmovdqu xmm0, xmmword ptr [rsi]\npaddd xmm0, xmm1\n"
               "dec ecx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(P.core["vec_store_forward_latency"] + P.forms["paddd"]["lat"])


def test_a_moving_pointer_carries_nothing_through_memory():
    # [rdi] is another address in the next iteration: only the pointer's own add chains.
    t = timing(".Ltop:\nmov rax, qword ptr [rdi]\nimul rax, rax\nmov qword ptr [rdi], rax\nadd rdi, 0x8\n"
               "dec ecx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(1)


def test_push_and_pop_forward_through_the_stack_engine():
    # pop reads what push wrote: imul's chain continues through the stack slot.
    t = timing(".Ltop:\npush rax\npop rax\nimul rax, rax\ndec ecx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(P.forms["imul"]["lat"] + RENAME)
    # [rsp] after a push is the slot [rsp - 8] was before it
    t = timing(".Ltop:\nmov qword ptr [rsp - 0x8], rax\nsub rsp, 0x8\nmov rax, qword ptr [rsp]\n"
               "add rsp, 0x8\nimul rax, rax\ndec ecx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(P.forms["imul"]["lat"] + RENAME)


def test_a_block_that_does_not_loop_carries_nothing_through_memory():
    # A vDSO call updates its state once per call: no back-to-back chain.
    t = timing("add byte ptr [r14 + 0x88], cl\nadd r12, rcx\ntest rbx, rbx\njne 0x2000\n")
    assert t.recurrence < FWD


def test_forwarding_through_a_read_modify_write_goes_one_a_cycle():
    t = timing(".Ltop:\nadd qword ptr [rsi], 0x1\nmov rax, qword ptr [rsi]\nmov rcx, qword ptr [rsi]\n"
               "dec edx\njnz .Ltop\n")
    assert t.throughput == pytest.approx(3)      # the RMW and both reloads
    fresh = timing(".Ltop:\nadd qword ptr [rsi + rdx*8], 0x1\nadd qword ptr [rsi + rdx*8 + 0x8], 0x1\n"
                   "dec edx\njnz .Ltop\n")
    assert fresh.throughput < 2                   # nothing forwarded: no such limit


def test_a_scaled_index_adds_address_latency():
    t = timing(".Ltop:\nmov eax, dword ptr [rsi + rax*4]\ndec ecx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(P.core["load_latency"] + P.core["load_scaled_index_extra"])
    t = timing(".Ltop:\nmov eax, dword ptr [rsi + rax]\ndec ecx\njnz .Ltop\n")
    assert t.recurrence == pytest.approx(P.core["load_latency"])


def test_a_failed_forward_stalls_even_when_nothing_uses_the_load():
    t = timing(".Ltop:\n" + "".join(f"mov dword ptr [rsi + {4 * k:#x}], ecx\n" for k in range(4)) +
               "movdqu xmm0, xmmword ptr [rsi]\ndec edi\njnz .Ltop\n")
    assert t.cost >= P.core["store_forward_fail_latency"]
    assert t.detail["bounds"]["forward-fail"] == pytest.approx(P.core["store_forward_fail_latency"])


# --- the pipeline model (emulator/cycles/pipeline.py) -------------------------------------

def _sim(src: str) -> float:
    from emulator.cycles import pipeline, scoreboard
    ms = _models(".Ltop:\n" + src + "dec rdi\njnz .Ltop\n")
    return pipeline.simulate(ms, scoreboard.dependencies(ms, P, True), P)


def test_the_pipeline_model_meets_each_bound_alone():
    assert _sim("imul rax, rcx\n" * 4) == pytest.approx(4 * P.forms["imul"]["lat"])       # a chain
    assert _sim("".join(f"rol {r}, 0x1\n" for r in ("eax", "ecx", "edx", "esi", "r8d", "r9d", "r10d", "r11d"))) \
        == pytest.approx(8 / len(P.ports["SHIFT"]))                                       # two shift pipes
    assert _sim("mov rax, qword ptr [rsi]\nadd rax, 0x1\nmov qword ptr [rsi], rax\n") == pytest.approx(1)


QR = ("add {a}, {b}\nxor {d}, {a}\nrol {d}, 0x10\nadd {c}, {d}\nxor {b}, {c}\nrol {b}, 0xc\n"
      "add {a}, {b}\nxor {d}, {a}\nrol {d}, 0x8\nadd {c}, {d}\nxor {b}, {c}\nrol {b}, 0x7\n")


def test_where_the_bounds_meet_the_pipeline_model_decides():
    # Three quarter rounds, ChaCha20's shape: 12-op chains with no slack on the ALUs.
    regs = [("eax", "esi", "r10d", "r13d"), ("ebx", "r8d", "r11d", "r14d"), ("ecx", "r9d", "r12d", "r15d")]
    body = "".join(QR.format(a=a, b=b, c=c, d=d) for a, b, c, d in regs) * 2
    t = timing(".Ltop:\n" + body + "dec rdi\njnz .Ltop\n")
    assert min(t.throughput, t.recurrence) >= 0.5 * max(t.throughput, t.recurrence)
    assert t.cost >= max(t.throughput, t.recurrence)
    assert t.bound == "pipeline" or t.cost == max(t.throughput, t.recurrence)
    small = timing(".Ltop:\nmovzx ecx, byte ptr [rsi]\nadd rsi, 0x1\ncmp rcx, rdx\nadc rax, 0x0\n"
                   "dec rdi\njnz .Ltop\n")
    assert small.bound != "pipeline"                 # below core.pipeline_min_uops: the bounds stand


# --- the window at a loop's exit (emulator/cycles/window.py) -------------------------------

def _models(src: str, addr: int = 0x1000):
    from emulator.cycles import uarch
    from vdso.insn import disassembler
    ms = [uarch.model(i, P) for i in disassembler(True).disasm(bytes(assemble_snippet(src, addr, "<t>")), addr)]
    uarch.fuse_pairs(ms, P)
    return ms


def test_a_latency_bound_loop_leaves_its_chain_waiting():
    t = timing(".Ltop:\nimul rax, rax\nadd rcx, 0x1\ndec rdi\njnz .Ltop\n")
    w = t.loop_window
    assert w.slow == frozenset({"rax"})               # the counters run ahead
    assert w.waiting == {"int": 1.0, "mul": 1.0}     # one imul an iteration waits
    assert timing(".Ltop:\nadd rax, 0x1\ndec rdi\njnz .Ltop\n").loop_window is None   # not latency-bound


def test_the_work_after_a_loop_overlaps_its_last_chains():
    from emulator.cycles import window
    w = timing(".Ltop:\nimul rax, rax\ndec rdi\njnz .Ltop\n").loop_window
    free = window.overlap(w, _models("ret\n"), None, P)
    assert free == pytest.approx(3 * P.window["mul"]["entries"] / 1)     # the mul pool binds
    busy = window.overlap(w, _models("imul rax, rax\nimul rax, rax\nret\n"), None, P)
    assert busy == pytest.approx(3 * (P.window["mul"]["entries"] - 2))   # two waiting imuls take entries
    # an enclosing loop that runs the loop again on its result: nothing overlaps
    again = _models("mov edx, 0x8\nxor rax, rcx\njmp 0x1000\n")
    assert window.overlap(w, _models("add rsi, 0x1\njne 0x1000\n"), again, P) == 0
    fresh = _models("mov eax, 0x3\njmp 0x1000\n")                  # ...on a fresh value: it does
    assert window.overlap(w, _models("add rsi, 0x1\njne 0x1000\n"), fresh, P) == pytest.approx(free)


# --- profiles as data ------------------------------------------------------------------

def test_every_form_names_a_known_port_group_and_has_a_source_line():
    text = (P.path and open(P.path).read()) or ""
    assert "[UOPS]" in text and "[SOG]" in text and "[AGNER]" in text
    for key, f in P.forms.items():
        assert f.get("ports", "-") == "-" or f["ports"] in P.ports, key


def test_a_variant_profile_overlays_its_base(tmp_path):
    p = tmp_path / "v.toml"
    p.write_text('[meta]\nname = "v"\nbase = "zen4"\ntsc_per_core_cycle = 0.5\n'
                 '[forms]\npaddd = { lat = 2.0 }\n[event]\nalloc = 1.0\n')
    v = load_profile(str(p))
    assert v.name == "v" and v.tsc_per_core_cycle == 0.5
    assert v.forms["paddd"] == {"lat": 2.0, "ports": "VALU"}     # ports kept from the base
    assert v.event["alloc"] == 1.0 and v.event["zero_fill"] == P.event["zero_fill"]
    assert load_profile(str(p)) is v                              # loaded once per file version


BASE = '[meta]\nname = "bad"\nbase = "zen4"\n'


@pytest.mark.parametrize("body, needle", [
    (BASE + '[event]\nalloc = "x"\n', r"\[event\] alloc = 'x': expected a finite number >= 0 and <= 1e\+09"),
    (BASE + '[event]\nalloc = -1\n', r"\[event\] alloc = -1: expected a finite number"),
    (BASE + '[event]\nfault_entry = 1e308\n', r"\[event\] fault_entry = 1e\+308: expected a finite number"),
    (BASE + '[event]\nfault_entry = inf\n', r"\[event\] fault_entry = inf"),
    (BASE + '[core]\ndispatch_width = 0\n', r"\[core\] dispatch_width = 0: expected a finite number >= 1"),
    (BASE + '[core]\ndispatch_width = "six"\n', r"\[core\] dispatch_width = 'six': expected a finite number"),
    (BASE + '[core]\nload_latency = nan\n', r"\[core\] load_latency = nan"),
    (BASE + '[core]\nload_ports = "NOPE"\n', r"\[core\] load_ports = 'NOPE': expected the name of a \[ports\] group"),
    (BASE + '[core]\ndispatch_widht = 4\n', r"\[core\] dispatch_widht = 4: expected one of the keys"),
    (BASE + '[core]\nwindow_uops = 24\n', r"\[core\] window_uops is no longer used"),
    (BASE + '[forms]\npaddd = { lat = 1, ports = "NOPE" }\n', r"\[forms\] paddd.ports = 'NOPE'"),
    (BASE + '[forms]\npaddd = { lat = -2 }\n', r"\[forms\] paddd.lat = -2"),
    (BASE + '[window]\nvec = { groups = ["VALU"], entries = -1 }\n', r"\[window\] vec.entries = -1"),
    ('LD = 5\n' + BASE, r"LD = 5: expected a \[LD\] table"),
    (BASE + 'LD = 5\n', r"\[meta\] LD = 5: expected one of the keys"),
    (BASE + '[meta]\n', r"not valid TOML"),
    ('[meta\n', r"not valid TOML"),
    ('', r"no \[meta\] section \(an empty profile would make every cost 0\)"),
    ('meta = 5\n', r"meta = 5: expected a \[meta\] table"),
    ('[meta]\nname = "x"\ntsc_mhz = 2596\ntsc_per_core_cycle = 0.7\n', r"no \[core\] section"),
    ('[meta]\nbase = "no-such-base"\n', r"no such profile"),
    ('[meta]\nbase = 7\n', r"\[meta\] base = 7: expected the name or path of a profile"),
])
def test_bad_profiles_are_one_line_usage_errors(tmp_path, body, needle):
    p = tmp_path / "bad.toml"
    p.write_text(body)
    with pytest.raises(UsageError, match=needle) as e:
        load_profile(str(p))
    msg = str(e.value)
    assert "\n" not in msg
    if "no such profile" not in msg:
        assert str(p) in msg                  # names the file


def test_a_profile_must_be_a_small_regular_file(tmp_path):
    with pytest.raises(UsageError, match="not a regular file"):
        load_profile(str(tmp_path))
    big = tmp_path / "big.toml"
    with open(big, "wb") as f:
        f.truncate(3 << 30)                   # sparse: refused before anything is read
    with pytest.raises(UsageError, match="bytes"):
        load_profile(str(big))


def test_a_variant_cannot_base_itself(tmp_path):
    p = tmp_path / "loop.toml"
    p.write_text(f'[meta]\nbase = "{p}"\n')
    with pytest.raises(UsageError, match="base chain deeper"):
        load_profile(str(p))


def test_the_shipped_profile_passes_the_schema_and_a_bad_key_in_a_base_names_that_file(tmp_path):
    assert load_profile("zen4").core["dispatch_width"] == 6
    base = tmp_path / "b.toml"
    base.write_text((PROFILE_TEXT := open(P.path).read()).replace("dispatch_width = 6", "dispatch_width = 0"))
    top = tmp_path / "t.toml"
    top.write_text(f'[meta]\nname = "t"\nbase = "{base}"\n')
    with pytest.raises(UsageError, match=f"profile {base}: \\[core\\] dispatch_width = 0"):
        load_profile(str(top))
    assert PROFILE_TEXT


def test_unknown_profile_name():
    with pytest.raises(UsageError, match="no such profile"):
        load_profile("no-such-profile-here")


# --- the block cache and event charging in a Machine -----------------------------------------

def test_the_block_cache_is_used():
    from emulator.run import RunConfig, new_process
    from vdso.asm_build import build_image
    img = build_image("builtin")
    _, m, caller = new_process(RunConfig(image=img, sizes=[256], calls=1, seed=3))
    caller.getrandom(256)
    caller.getrandom(256)
    n = m.blocks.decoded
    r = caller.getrandom(256)
    assert r.outcome == "returned" and r.cycles > 0
    assert m.blocks.decoded == n                     # nothing analysed again
    _, m2, caller2 = new_process(RunConfig(image=img, sizes=[256], calls=1, seed=3))
    for _ in range(3):
        r2 = caller2.getrandom(256)
    assert m2.blocks.decoded == 0                    # shared by every Machine of the process
    assert r2.cycles == pytest.approx(r.cycles)


def test_fault_events_are_charged_once_per_stage():
    from emulator.calibrate.predict import _machine, _mmap, _snippet_image
    m = _machine(_snippet_image(), P)
    wr = m.kernel.image.symbol("touch_write")
    a = _mmap(m, 2 * 4096)
    warm = m.call(wr, [a])                           # first write: zero-fill fault
    again = m.call(wr, [a + 8])                      # mapped now: no fault
    assert len(warm.faults) == 1 and not again.faults
    kinds = [e.kind for e in m.trace.events]
    stages = warm.faults[0].stages
    assert stages.count("zero_fill") == 1 and stages.count("alloc") == 1
    for k in ("fault_entry", "vma_lookup", "fault_return"):
        assert kinds.count(k) == 1, (k, kinds)
    charged = sum(e.cycles for e in m.trace.events if e.kind in
                  ("fault_entry", "vma_lookup", "fault_return", *stages))
    expected = (P.event_cost("fault_entry") + P.event_cost("vma_lookup") + P.event_cost("fault_return")
                + sum(P.stage_cost(s, {}) for s in stages))
    assert charged == pytest.approx(expected)
    assert warm.faults[0].cycles == pytest.approx(expected)
    assert warm.cycles - again.cycles == pytest.approx(expected, abs=5)


# --- the front end, forwarding slots, blocks in the order they ran -----------------------------

def test_a_loop_reaching_into_the_next_64_byte_line_fetches_both_lines():
    # gcc's copy_words loop (17 bytes) [MEAS]: 1.0 cycle from offset 0 of a line, 2.0 from 48
    src = (".Ltop:\nmov r8, qword ptr [rsi + rcx*8]\nmov qword ptr [rdi + rcx*8], r8\nadd rcx, 0x1\n"
           "cmp rcx, r9\njne .Ltop\n")
    assert timing(src, 0x1000).cost == pytest.approx(1.0)
    assert timing(src, 0x1030).cost == pytest.approx(2.0)
    assert timing(src, 0x1010).cost == pytest.approx(1.0)     # across 32 bytes: no effect


def test_fetch_follows_how_a_block_was_reached():
    from emulator.cycles import fetch
    taken = P.core["taken_branch_cycles"]
    assert fetch.fetch_cycles(0x1010, 0x1020, fetch.FALL, "cond", P) == 0        # into the line being fetched
    assert fetch.fetch_cycles(0x1040, 0x1050, fetch.FALL, "cond", P) == 1        # starts a line
    assert fetch.fetch_cycles(0x1010, 0x1020, fetch.TAKEN, "cond", P) == taken
    assert fetch.fetch_cycles(0x1030, 0x1050, fetch.TAKEN, None, P) == taken + 1
    assert fetch.fetch_cycles(0x1010, 0x1011, fetch.TAKEN, "ret", P) == taken + P.core["ret_extra_cycles"]
    assert fetch.entry_kind(0x1020, "cond", 0x1020) == fetch.FALL                 # a jcc not taken
    assert fetch.entry_kind(0x1020, "jmp", 0x1020) == fetch.TAKEN                 # a jump to the next insn


@pytest.mark.parametrize("k", [1, 2, 4])
def test_every_store_read_in_flight_takes_a_forwarding_slot(k):
    pairs = "".join(f"mov qword ptr [rsp - {8 + 8 * i:#x}], rcx\nmov rdx, qword ptr [rsp - {8 + 8 * i:#x}]\n"
                    for i in range(k))
    assert timing(".Ltop:\n" + pairs + "dec edi\njnz .Ltop\n").throughput == pytest.approx(max(k, 1))
    # one store read twice: still one slot
    t = timing(".Ltop:\nmov qword ptr [rsp - 0x8], rcx\nmov rdx, qword ptr [rsp - 0x8]\n"
               "mov r8, qword ptr [rsp - 0x8]\ndec edi\njnz .Ltop\n")
    assert t.detail["ports"][P.core["rmw_forward_ports"]] == 1


def test_a_ret_reads_its_calls_return_address_in_flight():
    from emulator.cycles import scoreboard
    models = _models("call 0x1008\nnop\nnop\nnop\n") + _models("ret\n", 0x1008)
    assert scoreboard.dependencies(models, P, looping=False).mem.forwards == 1


def test_a_popped_frame_pointer_addresses_the_frame_it_addressed_before_the_call():
    # -O0 code: a variable in [rbp - 8] updated around a call whose callee pushes,
    # moves and pops rbp: the next iteration reads what this one stored.
    src = (".Ltop:\nmov rax, qword ptr [rbp - 0x8]\nadd rax, 0x1\nmov qword ptr [rbp - 0x8], rax\n"
           "push rbp\nmov rbp, rsp\npop rbp\ndec edi\njnz .Ltop\n")
    group = P.core["rmw_forward_ports"]
    assert timing(src).detail["ports"][group] == 2            # push/pop, and [rbp - 8] from the last run
    other = timing(src.replace("pop rbp", "pop rbx\nmov rbp, rbx"))
    assert other.detail["ports"][group] == 1                  # rbp is another value: push/pop only


def _asm_machine(kernels: dict):
    from emulator.calibrate.predict import _machine
    from emulator.calibrate.validation.build import build_asm
    return _machine(build_asm(kernels), P)


def _per_iteration(m, name: str, a: int = 64, b: int = 1024) -> float:
    fn = m.kernel.image.symbol(name)
    for _ in range(2):
        ca = m.call(fn, [a, 0]).cycles
        cb = m.call(fn, [b, 0]).cycles
    return (cb - ca) / (b - a) / P.to_tsc(1.0)


def test_straight_code_costs_the_larger_of_its_front_end_and_back_end_sums():
    # insert_sorted's loop at gcc -O2, the inner loop never taken [MEAS: 2.0 cycles an
    # iteration]: two taken branches (the fetch) and a dispatch-bound block falling
    # through; each block's larger bound summed would be 2.7.
    m = _asm_machine({"ins": "mov r8, rsi\nmov r10, rdi\nxor r9d, r9d\njmp .Ltop\n"
                             ".Ltop:\nmovzx esi, word ptr [r8]\nmov rax, r8\njmp .Lc\n"
                             ".Lc:\nmovzx edx, word ptr [rax - 0x2]\nmov rcx, rax\ncmp si, dx\njb .Lout\n"
                             "add r9, 0x1\nmov word ptr [rcx], si\nadd r8, 0x2\ncmp r10, r9\njne .Ltop\n.Lout:\nret\n"})
    fn = m.kernel.image.symbol("ins")
    a = _mmap_zero(m) + 0x100

    def cost(n: int) -> float:
        for _ in range(2):
            c = m.call(fn, [n, a]).cycles
        return c
    assert (cost(1024) - cost(64)) / 960 / P.to_tsc(1.0) == pytest.approx(2.0, abs=0.35)


def test_where_the_run_loop_stops_changes_no_cycle_count():
    src = {"mix": ".Ltop:\nmov rax, qword ptr [rsi]\nadd rax, 0x1\nmov qword ptr [rsi], rax\njmp .La\n"
                  ".La:\nimul rcx, rcx\ndec rdi\njnz .Ltop\nret\n"}
    m = _asm_machine(src)
    fn = m.kernel.image.symbol("mix")
    a = _mmap_zero(m)
    m.call(fn, [50, a])
    whole = m.call(fn, [50, a])
    ctx = m.prepare_call(fn, [50, a])
    for _ in range(60):              # stop after every 7 instructions, mid-block mostly
        m.step(ctx, 7)
        if ctx.done:
            break
    m.run(ctx)
    assert ctx.result.instructions == whole.instructions
    assert ctx.cycles == pytest.approx(whole.cycles)


def _mmap_zero(m) -> int:
    from emulator.calibrate.predict import _mmap
    return _mmap(m, 4096)


def test_a_run_seen_before_costs_what_it_cost_then():
    m = _asm_machine({"jumps": ".Ltop:\njmp .La\n.La:\nadd rax, 0x1\njmp .Lb\n.Lb:\ndec rdi\njnz .Ltop\nret\n"})
    fn = m.kernel.image.symbol("jumps")
    m.call(fn, [10, 0])                              # first sight: runs cut short to learn each block
    again = m.call(fn, [10, 0]).cycles
    assert m.blocks.seq.runs                         # remembered
    assert m.call(fn, [10, 0]).cycles == pytest.approx(again)
    assert _per_iteration(m, "jumps") == pytest.approx(3 * P.core["taken_branch_cycles"], abs=0.2)
