"""The x86 page-fault entry (arch/x86/mm/fault.c), for user and kernel mode.

mm decides (handle_mm_fault returns VM_FAULT_* bits); this file alone decides
what those bits mean for the CPU:

- a fault taken by user code: resume at the same instruction, skip it
  (VM_FAULT_SKIP_INSN, the v13/v14 patch), deliver a signal, or OOM-kill;
- a fault taken by the kernel itself on a user address (copy_to_user in a
  syscall, reached through Task.page_fault): there is no signal and no OOM
  kill in kernel mode; an error goes through the exception-table fixup (the
  copy comes back short), and a droppable OOM refaults under both designs
  (under `skip`, insn_fetch_from_user() of a kernel rip copies nothing).

Both go through the one function below, do_user_addr_fault(), as in Linux,
where the name says which *address* faulted, not which mode did.  Every stage
is charged and traced so `fstep` can walk it.
"""
from __future__ import annotations

from typing import TYPE_CHECKING

from emulator.insn_fetch import insn_fetch_from_user, skip_length
from emulator.instrument import effective_address, mem_descriptor
from emulator.usercopy import fault_in_write
from emulator.traps import BUS_ADRERR, SEGV_ACCERR, SEGV_MAPERR, X86_TRAP_GP, X86_TRAP_PF, SignalInfo, signal_for_trap
from emulator.records import (X86_PF_INSTR, X86_PF_PROT, X86_PF_USER, X86_PF_WRITE, CallContext, FaultRecord,
                              PendingFault, append_fault)
from mm import flags as F
from mm.flags import PAGE_MASK, PAGE_SIZE
from mm.smaps import vm_flags_str
from capstone import CS_AC_READ, CS_AC_WRITE
from capstone import x86 as cs_x86

from vdso.insn import MAX_INSN_LEN, decode_one, disassembler, mem_operand_size

if TYPE_CHECKING:
    from emulator.task import Task

# Decisions after which the same instruction runs again (a refault counts toward livelock).
_RESUMED = ("retry", "retry-oom", "mapped", "zero-page", "cow", "reuse", "swap-in")


def vm_fault_names(bits: int) -> list[str]:
    return [name for v, name in F.VM_FAULT_NAMES.items() if bits & v]


def fault_flags(access: str, user: bool) -> int:
    fl = 0
    if access == "write":
        fl |= F.FAULT_FLAG_WRITE
    if access == "exec":
        fl |= F.FAULT_FLAG_INSTRUCTION
    if user:
        fl |= F.FAULT_FLAG_USER
    return fl


def error_code(m: "Task", address: int, access: str, user: bool) -> int:
    pte = m.mm.pte(address)
    code = X86_PF_USER if user else 0
    if pte is not None and pte.frame is not None:
        code |= X86_PF_PROT
    if access == "write":
        code |= X86_PF_WRITE
    if access == "exec":
        code |= X86_PF_INSTR
    return code


def pte_state(m: "Task", address: int) -> str:
    pte = m.mm.pte(address)
    if pte is None:
        return "none"
    if pte.frame is None:
        if pte.swap_slot is not None:
            return f"swapped(slot {pte.swap_slot})"
        return "dropped" if getattr(pte, "dropped", False) else "not-present"
    if pte.frame is m.kernel.phys.zero_frame:
        return "zero-page(ro)"
    rw = "rw" if pte.writable else "ro"
    shared = " cow-shared" if getattr(pte.frame, "refcount", 1) > 1 else ""
    return f"present({rw}) pfn={pte.frame.pfn}{shared}"


def vma_desc(m: "Task", address: int) -> tuple[str, str, object]:
    vma = m.mm.find_vma(address)
    if vma is None:
        sp = m.special_at(address)
        return (sp or "", "special" if sp else "", None)
    return (f"{vma.start:#x}-{vma.end:#x}", vm_flags_str(vma.vm_flags), vma)


def predict(m: "Task", address: int, access: str) -> str:
    """What mm will decide for this fault, without changing anything (for the stepper)."""
    vma = m.mm.find_vma(address)
    if vma is None:
        return "SIGSEGV (no VMA)"
    fl = fault_flags(access, True)
    if m.mm.access_error(vma, fl):
        return "SIGSEGV (access error)"
    pte = m.mm.pte(address)
    write = access == "write"
    phys = m.kernel.phys
    alloc_fails = phys.failing != "off" or (phys.free_pages == 0 and not phys.lru_drop)

    def oom_text(what: str) -> str:
        if vma.vm_flags & F.VM_DROPPABLE:
            return f"{what}: OOM on droppable -> " + ("skip instruction" if m.mm.droppable_oom == "skip"
                                                      else "retry (refault)")
        return f"{what}: OOM -> OOM kill"
    if pte is not None and pte.frame is not None:
        if write and not pte.writable:
            needs_copy = getattr(pte.frame, "refcount", 1) > 1 or pte.frame is phys.zero_frame
            if not needs_copy:
                return "reuse (write-enable)"
            return oom_text("COW copy") if alloc_fails else "COW copy"
        return "spurious"
    if pte is not None and pte.swap_slot is not None:
        return oom_text("swap-in") if alloc_fails else "swap-in"
    if not write:
        return "map zero page"
    if alloc_fails:
        return oom_text("allocate zeroed frame")
    return "allocate zeroed frame"


def snapshot_cow(m: "Task", address: int) -> bool:
    """A write to a page write-protected only because a Machine snapshot shares
    its frame.  Snapshots are a tool artifact, not kernel state: such a fault is
    resolved silently (mm copies the frame without allocating) so that taking a
    snapshot changes no fault record, cycle count or outcome."""
    pte = m.mm.pte(address)
    f = pte.frame if pte is not None else None
    # snap_wp survives the snapshot's release (the PTE stays write-protected),
    # and a fork in between clears it (that write-protection is the kernel's).
    return f is not None and pte.snap_wp and not pte.writable and not f.is_zero and len(f.rmap) == 1


def resolve_snapshot_cow(m: "Task", address: int, user: bool) -> bool:
    if not snapshot_cow(m, address):
        return False
    res = fault_in_write(m, address, user)
    return res is not None and not res.bits & F.VM_FAULT_ERROR


def do_user_addr_fault(m: "Task", ctx: CallContext, pf: PendingFault, rip: int) -> None:
    """A fault taken by user code at rip (the run loop stopped there)."""
    code = m.read(rip, MAX_INSN_LEN)
    ins = decode_one(code, rip)
    access = pf.access
    if access == "read" and _read_modify_write(code, rip):
        # Unicorn performs a read-modify-write as a load, then a store; the CPU
        # checks the access for writing up front and raises one #PF with W=1.
        access = "write"
    address = _cpu_fault_address(m, code, rip, pf.address, access)
    if access != "exec" and not _canonical(address):
        # A non-canonical linear address is #GP, not #PF: SIGSEGV with
        # si_code SI_KERNEL and no address (the kernel cannot know it).
        sig = signal_for_trap(X86_TRAP_GP, rip, f"non-canonical address {address:#x}")
        m.charge(ctx, "signal", rip, {"signal": sig.signal, "si_code": sig.code_name, "why": sig.why})
        m.force_sig(ctx, sig, f"SIGSEGV (general protection: non-canonical address {address:#x}) at rip={rip:#x} "
                              f"[{ins.text if ins else '?'}]")
        return
    if access == "write" and resolve_snapshot_cow(m, address, True):
        ctx.rip = rip
        return
    rec = _new_record(m, ctx, address, access, rip, True,
                      ins.text if ins else "(undecodable)", ins.raw if ins else code[:1])
    rec.restored = pf.restored     # rolled back by the run loop at the stop
    _handle(m, ctx, rec, {})


_VA_MASK = (1 << 48) - 1        # what Unicorn keeps of a linear address


def _canonical(address: int) -> bool:
    """x86-64 with 4-level paging: bits 63..47 all equal."""
    top = address >> 47
    return top == 0 or top == (1 << 17) - 1


def _cpu_fault_address(m: "Task", code: bytes, rip: int, reported: int, access: str) -> int:
    """The address the CPU reports (CR2) for this fault: of the pages the
    access touches, the first one (in address order) the access is not
    allowed on, at the first byte of the access in it.  Unicorn may report
    another page (a read-modify-write it splits into a load, then a store),
    or another byte (wide accesses split into pieces, maskmov* byte by byte,
    a fetch)."""
    if access == "exec":
        return rip if not m.mmu.allows(rip, "exec") else reported & PAGE_MASK
    page = reported & PAGE_MASK
    mnemonic, spans = _access_spans(m, code, rip)
    if mnemonic in ("repe cmpsb", "repz cmpsb"):
        # repe cmpsb reads [rsi] first on this CPU, QEMU [rdi] (measured: the
        # other cmps forms read [rdi] first here too): the first of its two
        # operands that cannot be read faults.
        for start, size in spans:
            va = start & PAGE_MASK
            while va < start + size:
                if not m.mmu.allows(va, access):
                    return max(start, va)
                va += PAGE_SIZE
    for start, size in spans:
        end = (start + size - 1) & (1 << 64) - 1
        if not (_canonical(start) and _canonical(end)) and (start & _VA_MASK) >> 12 <= page >> 12 <= \
                (end & _VA_MASK) >> 12:
            # Unicorn drops the address bits above 47 and reports the
            # truncated address: the CPU raises #GP (the caller's check).
            return start if not _canonical(start) else end
        if not (start < page + PAGE_SIZE and start + size > page):
            continue
        first = _SAVE_FIRST_FIELD.get(mnemonic)
        if first is not None:
            if size in (14, 94):
                first = 2                   # the 16-bit layouts (66h) start with a word
            # State saves store their first field, then touch the area's last
            # byte, before the rest (measured natively): the fault is at the
            # first byte of those that cannot be written.
            for a in [*range(start, start + min(first, size)), start + size - 1]:
                if not m.mmu.allows(a, access):
                    return a
        va = start & PAGE_MASK
        while va < start + size:
            if not m.mmu.allows(va, access):
                return max(start, va)
            va += PAGE_SIZE
        return max(start, page)
    return reported


# Memory operands whose size capstone does not print: the x87/SSE state areas
# (64-bit mode; fnsave/frstor with a 32-bit operand size layout; xsave: the
# legacy area and its header, all the emulated CPU's XCR0 holds).
_AREA_SIZES = {"fxsave": 512, "fxsave64": 512, "fxrstor": 512, "fxrstor64": 512, "fnsave": 108, "frstor": 108,
               "fnstenv": 28, "fldenv": 28, "xsave": 576, "xsave64": 576, "xsaveopt": 576, "xsaveopt64": 576}
_AREA_SIZES_16 = {"fnsave": 94, "frstor": 94, "fnstenv": 14, "fldenv": 14}      # with a 66h prefix
# Bytes of the first field a state save stores (the 16-bit layouts, 66h: 2);
# fxsave's area is 16-byte aligned, so its first store never straddles.
_SAVE_FIRST_FIELD = {"fnstenv": 4, "fstenv": 4, "fnsave": 4, "fsave": 4, "fxsave": 0, "fxsave64": 0, "xsave": 0,
                     "xsave64": 0, "xsaveopt": 0, "xsaveopt64": 0}


def _access_spans(m: "Task", code: bytes, rip: int) -> tuple[str, list[tuple[int, int]]]:
    """The instruction's mnemonic and (start, size) of each memory access it makes."""
    md = disassembler(True)
    reg = m.read_reg_by_name
    spans = []
    mn = ""
    for ins in md.disasm(code, rip, 1):
        mn = ins.mnemonic
        for op in ins.operands:
            if op.type == cs_x86.X86_OP_MEM:
                size = (_AREA_SIZES_16.get(mn) if 0x66 in bytes(ins.prefix) else None) or _AREA_SIZES.get(mn) \
                    or mem_operand_size(ins.op_str, mn) or op.size
                spans.append((effective_address(reg, mem_descriptor(md, ins, op)), size))
        if mn.startswith("maskmov"):
            spans.append((reg("rdi"), 16 if mn == "maskmovdqu" else 8))
        elif mn.startswith(("push", "call")):
            width = 2 if 0x66 in bytes(ins.prefix) and mn.startswith("push") else 8
            spans.append((reg("rsp") - width, width))
        elif mn.startswith(("pop", "ret")):
            spans.append((reg("rsp"), 8))
    return mn, spans


def _read_modify_write(code: bytes, rip: int) -> bool:
    """Whether the instruction's memory operand is both read and written
    (add [m], r; lock xadd; xchg; inc; btc [m]...)."""
    for ins in disassembler(True).disasm(code, rip, 1):
        ops = ins.operands
        if ins.mnemonic.split()[-1] in _RMW_MNEMONICS and ops and ops[0].type == cs_x86.X86_OP_MEM:
            return True
        return any(op.type == cs_x86.X86_OP_MEM and op.access & CS_AC_READ and op.access & CS_AC_WRITE
                   for op in ops)
    return False


# Read-modify-writes whose memory operand capstone 5 marks read-only or
# write-only (cmpxchg writes back even when the compare fails).
_RMW_MNEMONICS = {"cmpxchg", "cmpxchg8b", "cmpxchg16b", "rcl", "rcr", "rol", "ror", "shl", "sal", "shr", "sar"}


def do_kernel_uaccess_fault(m: "Task", ctx: CallContext, address: int, access: str, rip: int,
                            what: str) -> FaultRecord | None:
    """A fault taken by the kernel on a user address (a uaccess such as
    getrandom's copy_to_user): the same path, without FAULT_FLAG_USER.
    Returns the record (its decision tells the copy what to do), or None when
    the fault was a snapshot artifact resolved silently."""
    if access == "write" and resolve_snapshot_cow(m, address, False):
        return None
    rec = _new_record(m, ctx, address, access, rip, False, what, b"")
    _handle(m, ctx, rec, {"mode": "kernel", "in": what})
    return rec


def _new_record(m: "Task", ctx: CallContext, address: int, access: str, rip: int, user: bool,
                insn: str, insn_bytes: bytes) -> FaultRecord:
    rec = FaultRecord(index=ctx.index, rip=rip, address=address, access=access,
                      error_code=error_code(m, address, access, user), user=user,
                      insn=insn, insn_bytes=insn_bytes)
    rec.vma, rec.vm_flags, _ = vma_desc(m, address)
    rec.pte = pte_state(m, address)
    return rec


def _handle(m: "Task", ctx: CallContext, rec: FaultRecord, entry_detail: dict) -> None:
    rip, address, access, user = rec.rip, rec.address, rec.access, rec.user
    cyc0 = ctx.cycles
    detail = {"address": address, "access": access}
    if user:
        detail.update(error_code=rec.error_code, insn=rec.insn)
    m.charge(ctx, "fault_entry", rip, {**detail, **entry_detail})
    if rec.restored:
        m.charge(ctx, "undo_split_store", rip, {"bytes": rec.restored}, cycles=0)
    m.charge(ctx, "vma_lookup", rip, {"vma": rec.vma, "flags": rec.vm_flags})
    vma = m.mm.find_vma(address)
    flags = fault_flags(access, user)
    if vma is None or m.mm.access_error(vma, flags):
        why = "no VMA" if vma is None else "access error"
        if user:
            _end_signal(m, ctx, rec, "SIGSEGV", why)
        else:
            _fixup(m, ctx, rec, {"why": why})
        return _record(ctx, rec, cyc0)
    res = m.mm.handle_mm_fault(vma, address, flags)
    for st in res.stages:
        m.charge(ctx, st.kind, rip, dict(st.detail), cycles=m.kernel.profile.stage_cost(st.kind, st.detail))
        rec.stages.append(st.kind)
    rec.bits = vm_fault_names(res.bits)
    bits = res.bits
    m.sync()
    if bits & (F.VM_FAULT_SIGSEGV | F.VM_FAULT_SIGBUS | F.VM_FAULT_OOM) and not user:
        # Kernel mode: no OOM kill and no signal; the exception-table fixup
        # makes the copy return what it managed (the syscall gives -EFAULT).
        _fixup(m, ctx, rec, {"bits": rec.bits})
        return _record(ctx, rec, cyc0)
    if bits & F.VM_FAULT_SIGSEGV:
        _end_signal(m, ctx, rec, "SIGSEGV", "VM_FAULT_SIGSEGV")
    elif bits & F.VM_FAULT_SIGBUS:
        _end_signal(m, ctx, rec, "SIGBUS", "VM_FAULT_SIGBUS")
    elif bits & F.VM_FAULT_OOM:
        # Classic OOM for a user fault: pagefault_out_of_memory() kills the task.
        rec.decision = "oom-kill"
        m.charge(ctx, "oom", rip, {"victim": m.name})
        m.killed = True
        m.finish(ctx, "killed", f"OOM kill: write to {address:#x} (non-droppable) at rip={rip:#x}")
    elif bits & F.VM_FAULT_SKIP_INSN and not user:
        # insn_fetch_from_user() of a kernel rip copies 0 bytes: rip untouched,
        # so the kernel's own access refaults.
        rec.decision = "retry"
        rec.fetched = 0
        rec.new_rip = rip
        m.charge(ctx, "decode", rip, {"fetched": 0, "why": "kernel rip: copy_from_user copies nothing"})
    elif bits & F.VM_FAULT_SKIP_INSN:
        _skip_insn(m, ctx, rec)
    else:
        rec.decision = _resolved_decision(rec.stages)
        rec.new_rip = rip
        if user:
            ctx.rip = rip
            _count_refault(ctx, rip)
    m.charge(ctx, "fault_return", rip, {"decision": rec.decision, "new_rip": rec.new_rip} if user
             else {"decision": rec.decision})
    if user and rec.decision in _RESUMED and ctx.refaults > m.livelock_limit and not ctx.done:
        rec.decision = "livelock"
        m.finish(ctx, "livelock",
                 f"user-mode write livelock: rip={rip:#x} [{rec.insn}] refaulted {ctx.refaults} times at {address:#x}")
    _record(ctx, rec, cyc0)


def _skip_insn(m: "Task", ctx: CallContext, rec: FaultRecord) -> None:
    """v13/v14 x86 patch: fetch <=15 bytes at the user rip, decode, add the length.
    A short fetch or a failed decode returns without touching rip (retry)."""
    rip = rec.rip
    raw = insn_fetch_from_user(m, rip)
    rec.fetched = len(raw)
    n = skip_length(raw) if raw else None
    m.charge(ctx, "decode", rip, {"fetched": len(raw), "length": n})
    if n is None:
        rec.decision = "retry"
        rec.new_rip = rip
        ctx.rip = rip
        _count_refault(ctx, rip)
        return
    rec.decision = "skip"
    rec.skip_len = n
    rec.new_rip = rip + n
    ctx.rip = rip + n
    m.set_reg("rip", rip + n)     # debuggers read the register, not ctx
    if ctx.rep_open != rip:       # a rep insn already under way was counted when it started
        ctx.index += 1            # the skipped instruction retires (as a no-op)
    ctx.refaults = 0
    ctx.last_fault_key = None


def _resolved_decision(stages: list[str]) -> str:
    if "droppable_oom" in stages or "oom" in stages:
        return "retry-oom"          # 6.11: ret &= ~VM_FAULT_OOM -> the instruction re-executes
    for kind, name in (("swap_in", "swap-in"), ("cow_copy", "cow"), ("reuse", "reuse"),
                       ("map_zero_page", "zero-page"), ("zero_fill", "mapped")):
        if kind in stages:
            return name
    return "mapped"


def _count_refault(ctx: CallContext, rip: int) -> None:
    key = (ctx.index, rip)
    if ctx.last_fault_key == key:
        ctx.refaults += 1
    else:
        ctx.last_fault_key = key
        ctx.refaults = 1


def _fixup(m: "Task", ctx: CallContext, rec: FaultRecord, detail: dict) -> None:
    rec.decision = "efault"
    m.charge(ctx, "exception_fixup", rec.rip, detail, cycles=0)


def _end_signal(m: "Task", ctx: CallContext, rec: FaultRecord, sig: str, why: str) -> None:
    """bad_area() / do_sigbus(): the signal a user fault ends in, with the si_code
    the kernel gives it: SEGV_MAPERR where no VMA (or a guard marker) covers
    the address, SEGV_ACCERR where one does but forbids the access,
    BUS_ADRERR for VM_FAULT_SIGBUS; si_addr is the faulting address."""
    rec.decision = sig.lower()
    if sig == "SIGBUS":
        code = BUS_ADRERR
    else:
        code = SEGV_ACCERR if why == "access error" else SEGV_MAPERR
    info = SignalInfo(sig, code, rec.address, rec.rip, X86_TRAP_PF, why)
    m.charge(ctx, "signal", rec.rip, {"signal": sig, "si_code": info.code_name, "why": why})
    m.force_sig(ctx, info, f"{sig} ({why}): {rec.access} at {rec.address:#x}, rip={rec.rip:#x} [{rec.insn}]")


def _record(ctx: CallContext, rec: FaultRecord, cyc0: float) -> None:
    rec.cycles = ctx.cycles - cyc0
    append_fault(ctx.result.faults, rec)
