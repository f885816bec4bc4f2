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

- instructions Unicorn runs to completion with a result this CPU would not
  leave (`lock neg` flags, 32-bit cmpxchg's registers, x87 stores from an empty stack,
  the fnstenv/fnsave/fxsave/xsave images, SSE floating-point MXCSR flags and
  results) and stores this CPU checks as a whole before writing (maskmov*,
  fxsave/xsave): the hook records a Fixup's starting state, and a hook on
  the next instruction (where it has completed; possibly past the block)
  puts it right (emulator/fixups.py says what and why).

A code hook covering an instruction that faults makes Unicorn restore a stale
lazy-flags state (see emulator/blockhook.py), so every hook saves RFLAGS as it
fires and the run loop writes them back when that very instruction faults.
A code hook reads RFLAGS right only when its instruction runs first in an
emulation run: further into a block, Unicorn syncs its lazy-flags op before
a hook only if the op differs from the one it synced at the block's previous
hook, so with two hooks in a block the read can mix a stale op with fresh
operands; and a memory hook (the split-store journal) on a code-hooked
instruction that does not fault restores the op recorded before the code
hook folded the flags, over the folded value (both measured: a pushf's CF/OF,
cmpxchg8b's flags, fnstenv's flags at a fault).  At the first instruction of
a run the lazy state is plain EFLAGS and none of this can happen.  So a hook
whose instruction may fault or whose hook reads the flags (`first`) stops
the CPU right before it, and the run resumes there: one more emulation run
per such instruction, on code that has them.  That is also what puts
cmpxchg8b/16b right: QEMU's helper recomputes EFLAGS from the op in memory,
which is exact only there (SDM: only ZF is written).  One address gets one
hook (InsnHook), whatever it needs.
"""
from __future__ import annotations

from dataclasses import dataclass
from functools import lru_cache

import capstone
from capstone import x86 as cs_x86

from emulator.simd_fp import is_simd_fp
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
_X87_STORES = {"fst", "fstp", "fist", "fistp", "fisttp", "fbstp"}


@dataclass(frozen=True)
class Fixup:
    """What an instruction needs put right once it has run (emulator/fixups.py
    says why and how)."""
    kind: str                       # neg_flags | x87_store | x87_env | fxsave | simd_fp | whole_write | cmpxchg32
    next: int                       # the next instruction: reaching it means this one completed
    mem: tuple | str | None = None  # the memory operand (mem_descriptor; whole_write: seg:[rDI]);
                                    # cmpxchg32: the destination register's name when it is one
    size: int = 0                   # x87_store, neg_flags: operand bytes; x87_env: image bytes (14/28);
                                    # fxsave: the image format (32/64)
    mnemonic: str = ""
    raw: bytes = b""                # simd_fp: the instruction's bytes (the native probe's key)


@dataclass(frozen=True)
class InsnHook:
    """Everything one instruction address needs from its code hook."""
    address: int
    kind: str = ""            # "raise" | "raise_after" | "align16" | "flags" | "" (only the fields below)
    trapno: int | None = None
    why: str = ""
    mem: tuple | None = None  # (segment, base, index, scale, disp, addr32, next_rip) for align16
    length: int = 0           # the instruction's length (raise_after: Unicorn's hook size is unreliable there)
    fence: bool = False       # the instruction before is a helper store: stop here if it faulted
    fixup: Fixup | None = None  # what to put right once this instruction has run (emulator/fixups.py)
    first: bool = False       # run it as the first instruction of an emulation run (see the docstring)


@lru_cache(maxsize=None)
def _md() -> capstone.Cs:
    md = capstone.Cs(capstone.CS_ARCH_X86, capstone.CS_MODE_64)
    md.detail = True
    return md


@lru_cache(maxsize=16)
def _disasm(code: bytes, addr: int) -> tuple:
    """The block decoded once for refusal(), hooks_for() and
    has_multi_piece_store(), which first sight calls in turn."""
    return tuple(_md().disasm(code, addr))


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
    for ins in _disasm(code, addr):
        raw = bytes(ins.bytes)
        reason = unfaithful_reason(raw, ins.mnemonic, ins.op_str)
        if reason is not None and not _cpu_refuses(reason):
            return f"{reason} at {ins.address:#x}"
        if ins.mnemonic in ("call", "ret") and 0x66 in bytes(ins.prefix) and not ins.rex & 0x08:
            return (f"'{ins.mnemonic} {ins.op_str}' at {ins.address:#x}: a 66h-prefixed near {ins.mnemonic} "
                    "pushes/pops 2 bytes on this CPU (AMD), 8 in Unicorn 2.1.4")
        decoded += ins.size
    if decoded < len(code):
        tail = code[decoded:decoded + 15]
        reason = unfaithful_reason(tail)
        if reason is not None and not _cpu_refuses(reason):
            return f"{reason} at {addr + decoded:#x}"
        if _near_call16(tail):
            # capstone 5 reads 66 e8 with a 32-bit displacement and often finds no
            # instruction at all; Unicorn runs it.
            return (f"'{tail[:4].hex(' ')}' at {addr + decoded:#x}: a 66h-prefixed near call "
                    "pushes 2 bytes on this CPU (AMD), 8 in Unicorn 2.1.4")
    return None


def _near_call16(raw: bytes) -> bool:
    """66h [REX without W] e8 rel16: a near call with a 16-bit operand size."""
    i, opsize = 0, False
    while i < len(raw) and raw[i] in (0x66, 0x67, 0xF0, 0xF2, 0xF3, 0x2E, 0x36, 0x3E, 0x26, 0x64, 0x65):
        opsize |= raw[i] == 0x66
        i += 1
    rex_w = False
    while i < len(raw) and 0x40 <= raw[i] <= 0x4F:
        rex_w = bool(raw[i] & 0x08)
        i += 1
    return opsize and not rex_w and i < len(raw) and raw[i] == 0xE8


def hooks_for(code: bytes, addr: int) -> list[InsnHook]:
    """The instruction hooks a block at addr (its bytes: code) needs, one per
    address; it may include the address just past the block (where the
    block's last instruction completes)."""
    md = _md()
    found: dict[int, dict] = {}

    def need(address: int, **fields) -> None:
        found.setdefault(address, {}).update(fields)

    decoded = 0
    insns = _disasm(code, addr)
    for ins in insns:
        decoded += ins.size
        nxt = ins.address + ins.size
        reason = unfaithful_reason(bytes(ins.bytes), ins.mnemonic, ins.op_str)
        if _cpu_refuses(reason):
            need(ins.address, kind="raise", trapno=X86_TRAP_UD, why=reason)
            continue
        m = ins.mnemonic
        if m.startswith(("rep ", "repne ", "repe ", "lock ")):
            m = m.split(" ", 1)[1]
        op = _mem_operand(ins)
        if m in _HELPER_STORES and (op is not None or m.startswith("maskmov")):
            need(nxt, fence=True)
        primary = _primary(md, ins, m, op)
        if primary:
            need(ins.address, **primary)
            if primary["kind"] in ("raise", "raise_after"):
                continue
        fx = _fixup(md, ins, m, op)
        if fx is not None:
            need(ins.address, fixup=fx)
            need(nxt)                   # reaching it completes the instruction
        if m in ("cmpxchg8b", "cmpxchg16b"):
            need(ins.address)           # runs first in a run (below), where its helper gets the flags right
    if decoded < len(code):
        # Bytes capstone cannot decode, which Unicorn ran: #UD on the CPU.
        reason = unfaithful_reason(code[decoded:decoded + 15])
        if _cpu_refuses(reason):
            need(addr + decoded, kind="raise", trapno=X86_TRAP_UD, why=reason)
    for ins in insns:
        f = found.get(ins.address)
        if f is not None and f.get("kind") != "raise_after":
            # Its hook reads the flags, or it may fault: exact flags need it first in a run.
            f["first"] = f.get("kind") in ("raise", "align16", "flags") or _touches_memory(ins)
    for a, f in found.items():
        if a >= addr + decoded:
            f["first"] = True           # past the block: not known yet, assume it may fault
    return [InsnHook(a, **f) for a, f in sorted(found.items())]


_STACK_OR_STRING = ("push", "pop", "call", "ret", "enter", "leave", "iret", "movs", "stos", "lods", "cmps", "scas",
                    "ins", "outs", "xlat", "maskmov")


def _touches_memory(ins) -> bool:
    """Whether the instruction may access (and fault on) memory."""
    m = ins.mnemonic.split()[-1]
    if m in ("lea", "nop") or m.startswith("prefetch"):
        return False
    return _mem_operand(ins) is not None or m.startswith(_STACK_OR_STRING)


def _primary(md, ins, m: str, op) -> dict | None:
    """The hook an instruction needs for itself (see the module docstring)."""
    if m in _GP_ALWAYS:
        return {"kind": "raise", "trapno": X86_TRAP_GP, "why": f"{ins.mnemonic} at CPL 3"}
    if m in _UMIP:
        return {"kind": "raise", "trapno": X86_TRAP_GP, "why": f"{ins.mnemonic} under UMIP"}
    if m in _UD_ALWAYS:
        return {"kind": "raise", "trapno": X86_TRAP_UD, "why": f"{ins.mnemonic} in long mode"}
    if m == "int1":
        # icebp: a #DB trap (rip past it); QEMU 5 has no int1 and raises #UD.
        return {"kind": "raise_after", "trapno": X86_TRAP_DB, "why": "int1 (icebp)", "length": ins.size}
    if m.startswith("pushf"):
        return {"kind": "flags"}        # its store is to the stack
    if op is None:
        return None
    if m in _FLAG_READING_STORES and ins.operands[0].type == cs_x86.X86_OP_MEM:
        return {"kind": "flags"}
    if mem_operand_size(ins.op_str, m) == 16 and m not in _UNALIGNED_OK and _is_sse(ins):
        desc = mem_descriptor(md, ins, op)
        _seg, base, index, _scale, disp, addr32, nxt = desc
        if base in ("rip", "eip") and not index:
            # RIP-relative (EIP-relative under 0x67): the address is fixed, check it once.
            if ((nxt + disp) & (0xFFFF_FFFF if addr32 else (1 << 64) - 1)) % 16:
                return {"kind": "raise", "trapno": X86_TRAP_GP, "why": f"{ins.mnemonic}: misaligned operand"}
            return None
        return {"kind": "align16", "trapno": X86_TRAP_GP, "why": f"{ins.mnemonic}: misaligned operand",
                "mem": desc}
    return None


def _fixup(md, ins, m: str, op) -> Fixup | None:
    """What emulator/fixups.py must put right after this instruction, if anything."""
    nxt = ins.address + ins.size
    raw = bytes(ins.bytes)
    if is_simd_fp(m, ins.op_str):
        return Fixup("simd_fp", nxt, mem_descriptor(md, ins, op) if op is not None else None, raw=raw)
    if m == "cmpxchg" and ins.operands[0].size == 4 and not (
            ins.operands[0].type == cs_x86.X86_OP_REG and md.reg_name(ins.operands[0].reg) == "eax"):
        # 32-bit cmpxchg: QEMU writes EAX and the destination whatever the
        # outcome, zero-extending both; this CPU writes only EAX on a failure,
        # only the destination on a success (measured).
        dest = mem_descriptor(md, ins, op) if op is not None else md.reg_name(ins.operands[0].reg)
        return Fixup("cmpxchg32", nxt, dest, 4, m)
    if m in ("maskmovq", "maskmovdqu"):
        # Its store is to DS:rDI, which capstone lists as no operand.  An fs or
        # gs override applies its base, as to any DS operand (SDM: MASKMOVDQU).
        seg = {0x64: "fs", 0x65: "gs"}.get(bytes(ins.prefix)[1])
        addr32 = 0x67 in bytes(ins.prefix)
        return Fixup("whole_write", nxt, (seg, "rdi", None, 1, 0, addr32, nxt), 16 if m == "maskmovdqu" else 8, m)
    if op is None:
        return None
    desc = mem_descriptor(md, ins, op)
    if m == "neg" and 0xF0 in raw[:ins.modrm_offset]:
        return Fixup("neg_flags", nxt, desc, op.size)
    if m in _X87_STORES:
        size = mem_operand_size(ins.op_str, m) or op.size
        if size not in (2, 4, 8, 10) or (size == 10 and m not in ("fstp", "fbstp")) or \
                (size == 2 and not m.startswith("fi")):
            return None
        return Fixup("x87_store", nxt, desc, size, m)
    if m in ("fnstenv", "fstenv", "fnsave", "fsave"):
        return Fixup("x87_env", nxt, desc, 14 if 0x66 in bytes(ins.prefix) else 28, m)
    if m in ("fxsave", "fxsave64", "xsave", "xsave64", "xsaveopt", "xsaveopt64"):
        return Fixup("fxsave", nxt, desc, 64 if ins.rex & 0x08 else 32, m)
    return None


@lru_cache(maxsize=4096)
def probe_insn(raw: bytes):
    """(capstone instruction, disassembler, memory operand size) of one SSE
    instruction, for emulator/simd_fp.py's native probe."""
    md = _md()
    ins = next(md.disasm(raw, 0))
    return ins, md, mem_operand_size(ins.op_str, ins.mnemonic)


# Stores Unicorn commits in pieces (the split-store journal must cover 512 bytes).
MULTI_PIECE_STORES = {"fxsave", "fxsave64", "xsave", "xsave64", "xsaveopt", "xsaveopt64", "xsavec",
                      "xsavec64", "xsaves", "xsaves64", "enter", "fnsave", "fsave", "fnstenv", "fstenv"}


def has_multi_piece_store(code: bytes, addr: int) -> bool:
    return any(ins.mnemonic in MULTI_PIECE_STORES for ins in _disasm(code, addr))


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
