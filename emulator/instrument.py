"""What a block needs before it first runs: the few instructions Unicorn 2.1.4
gets wrong for a user task, found when the native block hook first meets
their block (emulator/blockhook.py stops before an unknown block runs).

Each one gets a code hook on its own address, and only there:

- I/O and a few system instructions that QEMU lets through at CPL 3 where the
  CPU raises an exception (measured here: in/out/ins/outs, rdpmc and sysret
  #GP; sysenter #UD on this AMD CPU in long mode): the hook raises it before
  the instruction runs;
- legacy-SSE instructions with a 16-byte memory operand that must be aligned
  (movaps, movdqa, paddd xmm, m128...): QEMU 5 never checks, the CPU raises
  #GP; the hook computes the effective address and raises it when misaligned
  (a RIP-relative operand is checked once, here, and needs no hook);
- instructions that read the flags and store to memory (setcc m8, pushf,
  adc/sbb/rcl/rcr with a memory destination): QEMU may fold the lazily kept
  flags into EFLAGS form before the store, and when the store faults the
  unwinding restores the old lazy-flags mode over the folded value (CF, AF
  and OF come out wrong after the restart); rcl/rcr also update CF/OF before
  their store faults.  So RFLAGS is saved before they run and put back at the
  fault;
- encodings the CPU refuses with #UD and Unicorn runs anyway (a lock prefix
  on an instruction that cannot take one, the "unicorn-only" encodings of
  vdso/insn.py): the hook raises #UD, so the task gets SIGILL as natively;
- the instruction after a store done inside a QEMU helper (fxsave, x87
  stores, cmpxchg8b/16b, maskmov*): when such a store faults, the helper
  finishes and the rest of the block runs before Unicorn stops; the hook on
  the next instruction stops it there (the run loop then puts the CPU back at
  the faulting store), so nothing after the fault leaves a trace.

A code hook covering an instruction that faults makes Unicorn restore a stale
lazy-flags state (see emulator/blockhook.py), so every hook saves RFLAGS as it
fires (a code hook reads them right) and the run loop writes them back when
that very instruction faults.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import capstone
from capstone import x86 as cs_x86

from emulator.traps import X86_TRAP_DB, X86_TRAP_GP, X86_TRAP_UD
from vdso.insn import mem_operand_size, unfaithful_reason

# Instructions QEMU executes at CPL 3 that the CPU refuses (IOPL 0, CR4.PCE
# clear, EFER.SCE-independent checks).  Measured natively on this CPU.
_GP_ALWAYS = {"in", "out", "insb", "insw", "insd", "outsb", "outsw", "outsd", "rdpmc", "sysret", "sysretq",
              "invpcid"}
_UD_ALWAYS = {"sysenter"}          # AMD: SYSENTER is #UD in long mode
# CR4.UMIP (this CPU has it, Linux sets it): #GP at CPL 3, then the kernel
# emulates them (emulator/umip.py).
_UMIP = {"sgdt", "sidt", "sldt", "str", "smsw"}
# 16-byte SSE memory operands that need no alignment (SDM vol. 1, 14.9 / 12.x).
_UNALIGNED_OK = {"movups", "movupd", "movdqu", "lddqu", "maskmovdqu",
                 "pcmpestri", "pcmpestrm", "pcmpistri", "pcmpistrm"}     # SSE4.2 string ops: no alignment
# Flag readers that store: see the docstring.  setcc's aliases included.
_FLAG_READING_STORES = {"rcl", "rcr", "adc", "sbb", "pushf", "pushfq", "pushfw", "adcx", "adox"} | {
    "set" + cc for cc in ("o", "no", "b", "nae", "c", "ae", "nb", "nc", "e", "z", "ne", "nz", "be", "na", "a",
                          "nbe", "s", "ns", "p", "pe", "np", "po", "l", "nge", "ge", "nl", "le", "ng", "g", "nle")}
# Memory writes QEMU 5 performs in a C helper rather than in generated code.
_HELPER_STORES = {"fxsave", "fxsave64", "xsave", "xsave64", "xsaveopt", "xsaveopt64", "xsavec", "xsavec64",
                  "xsaves", "xsaves64", "fnsave", "fsave", "fnstenv", "fstenv", "fstp", "fst", "fistp", "fist",
                  "fisttp", "fbstp", "fnstcw", "fstcw", "fnstsw", "fstsw", "cmpxchg8b", "cmpxchg16b",
                  "maskmovdqu", "maskmovq"}


@dataclass(frozen=True)
class InsnHook:
    address: int
    kind: str                 # "raise" | "raise_after" | "align16" | "flags" | "fence"
    trapno: int | None = None
    why: str = ""
    mem: tuple | None = None  # (segment, base, index, scale, disp, addr32, next_rip) for align16
    length: int = 0           # the instruction's length (raise_after: Unicorn's hook size is unreliable there)


@lru_cache(maxsize=None)
def _md() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


def _mem_operand(ins):
    for op in ins.operands:
        if op.type == cs_x86.X86_OP_MEM:
            return op
    return None


def _cpu_refuses(reason: str | None) -> bool:
    """An unfaithful instruction the CPU itself refuses with #UD (vdso/insn.py
    says so in its reason): emulated faithfully by raising #UD first."""
    return reason is not None and "#UD on the CPU" in reason


def refusal(code: bytes, addr: int) -> str | None:
    """Why a block cannot run faithfully at all (AVX, which the CPU runs and
    Unicorn cannot; a 66h-prefixed near call or ret, whose 16-bit operand
    size this CPU honours and Unicorn does not), or None."""
    decoded = 0
    for ins in _md().disasm(code, addr):
        raw = bytes(ins.bytes)
        reason = unfaithful_reason(raw, ins.mnemonic, ins.op_str)
        if reason is not None and not _cpu_refuses(reason):
            return f"{reason} at {ins.address:#x}"
        if ins.mnemonic in ("call", "ret") and 0x66 in bytes(ins.prefix) and not ins.rex & 0x08:
            return (f"'{ins.mnemonic} {ins.op_str}' at {ins.address:#x}: a 66h-prefixed near {ins.mnemonic} "
                    "pushes/pops 2 bytes on this CPU (AMD), 8 in Unicorn 2.1.4")
        decoded += ins.size
    if decoded < len(code):
        reason = unfaithful_reason(code[decoded:decoded + 15])
        if reason is not None and not _cpu_refuses(reason):
            return f"{reason} at {addr + decoded:#x}"
    return None


def hooks_for(code: bytes, addr: int) -> list[InsnHook]:
    """The instruction hooks a block at addr (its bytes: code) needs."""
    md = _md()
    out: list[InsnHook] = []
    fence_next = False
    decoded = 0
    for ins in md.disasm(code, addr):
        decoded += ins.size
        reason = unfaithful_reason(bytes(ins.bytes), ins.mnemonic, ins.op_str)
        if _cpu_refuses(reason):
            out.append(InsnHook(ins.address, "raise", X86_TRAP_UD, reason))
            continue
        m = ins.mnemonic
        if m.startswith(("rep ", "repne ", "repe ", "lock ")):
            m = m.split(" ", 1)[1]
        if fence_next:
            out.append(InsnHook(ins.address, "fence"))
        fence_next = m in _HELPER_STORES and _mem_operand(ins) is not None
        if m in _GP_ALWAYS:
            out.append(InsnHook(ins.address, "raise", X86_TRAP_GP, f"{ins.mnemonic} at CPL 3"))
            continue
        if m in _UMIP:
            out.append(InsnHook(ins.address, "raise", X86_TRAP_GP, f"{ins.mnemonic} under UMIP"))
            continue
        if m in _UD_ALWAYS:
            out.append(InsnHook(ins.address, "raise", X86_TRAP_UD, f"{ins.mnemonic} in long mode"))
            continue
        if m == "int1":
            # icebp: a #DB trap (rip past it); QEMU 5 has no int1 and raises #UD.
            out.append(InsnHook(ins.address, "raise_after", X86_TRAP_DB, "int1 (icebp)", length=ins.size))
            continue
        if m.startswith("pushf"):
            out.append(InsnHook(ins.address, "flags"))        # its store is to the stack
            continue
        op = _mem_operand(ins)
        if op is None:
            continue
        if m in _FLAG_READING_STORES and ins.operands[0].type == cs_x86.X86_OP_MEM:
            out.append(InsnHook(ins.address, "flags"))
            continue
        if mem_operand_size(ins.op_str, m) == 16 and m not in _UNALIGNED_OK and _is_sse(ins):
            desc = mem_descriptor(md, ins, op)
            _seg, base, index, _scale, disp, addr32, nxt = desc
            if base in ("rip", "eip") and not index:
                # RIP-relative (EIP-relative under 0x67): the address is fixed, check it once.
                if ((nxt + disp) & (0xFFFF_FFFF if addr32 else (1 << 64) - 1)) % 16:
                    out.append(InsnHook(ins.address, "raise", X86_TRAP_GP, f"{ins.mnemonic}: misaligned operand"))
                continue
            out.append(InsnHook(ins.address, "align16", X86_TRAP_GP, f"{ins.mnemonic}: misaligned operand", desc))
    if decoded < len(code):
        # Bytes capstone cannot decode, which Unicorn ran: #UD on the CPU.
        reason = unfaithful_reason(code[decoded:decoded + 15])
        if _cpu_refuses(reason):
            out.append(InsnHook(addr + decoded, "raise", X86_TRAP_UD, reason))
    return out


# Stores Unicorn commits in pieces (the split-store journal must cover 512 bytes).
MULTI_PIECE_STORES = {"fxsave", "fxsave64", "xsave", "xsave64", "xsaveopt", "xsaveopt64", "xsavec",
                      "xsavec64", "xsaves", "xsaves64", "enter", "fnsave", "fsave", "fnstenv", "fstenv"}


def has_multi_piece_store(code: bytes, addr: int) -> bool:
    return any(ins.mnemonic in MULTI_PIECE_STORES for ins in _md().disasm(code, addr))


def mem_descriptor(md, ins, op) -> tuple:
    """A memory operand as effective_address() takes it."""
    mem = op.mem
    return (md.reg_name(mem.segment) if mem.segment else "", md.reg_name(mem.base) if mem.base else "",
            md.reg_name(mem.index) if mem.index else "", mem.scale, mem.disp, 0x67 in bytes(ins.prefix),
            ins.address + ins.size)


def _is_sse(ins) -> bool:
    """A legacy-encoded instruction working on xmm registers (or cmpxchg16b,
    whose 16-byte operand must be aligned too)."""
    if ins.mnemonic == "cmpxchg16b":
        return True
    return any(op.type == cs_x86.X86_OP_REG and _md().reg_name(op.reg).startswith("xmm") for op in ins.operands)


def effective_address(read_reg, mem: tuple) -> int:
    """The linear address of a memory operand, from register values now."""
    seg, base, index, scale, disp, addr32, nxt = mem
    ea = disp
    if base in ("rip", "eip"):
        ea += nxt
    elif base:
        ea += read_reg(base)
    if index and index not in ("riz", "eiz"):       # a SIB byte with no index: capstone's pseudo-register
        ea += read_reg(index) * scale
    ea &= 0xFFFF_FFFF if addr32 else 0xFFFF_FFFF_FFFF_FFFF
    if seg in ("fs", "gs"):
        ea = (ea + read_reg(seg + "_base")) & 0xFFFF_FFFF_FFFF_FFFF
    return ea
