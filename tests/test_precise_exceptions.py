"""Precise exceptions: Unicorn commits the first-page part of a split store;
real x86 commits nothing.  No partial write of a faulting instruction may
survive, under either droppable-OOM design."""
from __future__ import annotations

import pytest

from snippets import mmap, snippet_machine

PAGE = 4096


def _split_case(insn: str, offset: int, width: int, policy: str):
    # rdi = address `offset` bytes before the end of a present page, followed by
    # a droppable page under persistent OOM.
    src = f"""
        mov rax, 0x1122334455667788
        movq xmm0, rax
        movlhps xmm0, xmm0
        {insn}
        mov r11, 0x5a
        ret
    """
    m = snippet_machine(src, policy=policy)
    base = mmap(m, 2 * PAGE)                               # plain anon: page 0
    m.mm.munmap(base + PAGE, PAGE)
    drop = mmap(m, PAGE, droppable=True, addr=base + PAGE)  # droppable: page 1
    assert drop == base + PAGE
    m.user_write(base + PAGE - 64, b"\xee" * 64)            # make page 0 present with a pattern
    m.kernel.phys.fail_allocations(persistent=True)
    dst = base + PAGE - offset
    res = m.call(m.kernel.image.symbol("entry"), [dst])
    return m, res, base


@pytest.mark.parametrize("policy", ["skip", "retry"])
@pytest.mark.parametrize("insn,offset,width", [
    ("mov qword ptr [rdi], rax", 4, 8),
    ("mov dword ptr [rdi], eax", 2, 4),
    ("movups xmmword ptr [rdi], xmm0", 8, 16),
    ("movdqu xmmword ptr [rdi], xmm0", 3, 16),
    ("add qword ptr [rdi], rax", 4, 8),
])
def test_split_store_leaves_present_page_unchanged(policy, insn, offset, width):
    m, res, base = _split_case(insn, offset, width, policy)
    assert m.read(base + PAGE - 64, 64) == b"\xee" * 64, "partial write survived the fault"
    write_faults = [f for f in res.faults if f.access == "write"]
    assert write_faults, res.faults
    if policy == "skip":
        assert res.outcome == "returned"
        f = write_faults[0]
        assert f.decision == "skip" and f.skip_len == len(f.insn_bytes)
        assert m.reg("r11") == 0x5A          # the next instruction ran
    else:
        assert res.outcome == "livelock"
        assert write_faults[-1].repeats > 1
    if insn.startswith("add"):
        # A read-modify-write's load runs into the second page first: the CPU
        # (and the emulator) fault before anything is stored, with W=1 as the
        # CPU reports it for the whole instruction.
        assert all(f.restored == 0 for f in write_faults)
        assert write_faults[0].address == base + PAGE
    else:
        assert any(f.restored for f in write_faults)


def test_unsplit_store_is_not_touched_by_the_journal():
    """A store wholly inside the present page near its end still commits."""
    src = "mov qword ptr [rdi], rsi\nret"
    m = snippet_machine(src)
    base = mmap(m, PAGE)
    m.mm.munmap(base + PAGE, PAGE)
    mmap(m, PAGE, droppable=True, addr=base + PAGE)
    m.user_write(base, b"\0")
    res = m.call(m.kernel.image.symbol("entry"), [base + PAGE - 8, 0x0102030405060708])
    assert res.outcome == "returned"
    assert m.read(base + PAGE - 8, 8) == bytes(range(8, 0, -1))


@pytest.mark.parametrize("policy", ["skip", "retry"])
def test_rep_stosb_shows_exact_progress(policy):
    """rep stosb into a present page then a droppable OOM page: the elements on
    the present page are architecturally done, RCX/RDI are exact."""
    src = """
        mov rcx, 40
        mov al, 0xab
        rep stosb
        mov r11, 0x77
        ret
    """
    m = snippet_machine(src, policy=policy)
    base = mmap(m, PAGE)
    m.mm.munmap(base + PAGE, PAGE)
    mmap(m, PAGE, droppable=True, addr=base + PAGE)
    m.user_write(base, b"\0")
    m.kernel.phys.fail_allocations(persistent=True)
    start = base + PAGE - 10
    res = m.call(m.kernel.image.symbol("entry"), [start])
    assert m.read(start, 10) == b"\xab" * 10
    assert m.reg("rdi") == base + PAGE
    assert m.reg("rcx") == 30
    if policy == "skip":
        assert res.outcome == "returned" and m.reg("r11") == 0x77
        f = [f for f in res.faults if f.access == "write"][0]
        assert f.decision == "skip" and f.skip_len == 2
    else:
        assert res.outcome == "livelock"
