"""SIMD floating-point exception flags (MXCSR bits 0-5) as this CPU sets them.

Unicorn 2.1.4 (QEMU 5) runs SSE floating-point instructions in softfloat and
keeps their exception flags in its own float_status: they never reach MXCSR
(measured: `ucomiss` with a NaN operand leaves MXCSR.IE clear, the CPU sets
it; `stmxcsr`/`fxsave` then store the wrong value).  softfloat could not give
them all anyway: x86 sets DE for any denormal input (SDM vol. 1, 11.5.2.2),
softfloat only when it flushes one.

Nor are its results always this CPU's: with two NaN operands QEMU 5
returns the second, x86 the first (SDM vol. 1, table 4-7; measured with
mulps).

So flags and result come from the CPU itself.  Each SSE floating-point
instruction met at first sight (emulator/instrument.py) gets a hook; the
hook calls `SimdFp.run` with the operand values Unicorn holds, which runs the
very same instruction natively: its memory (or general/MMX register) source
rewritten to a scratch slot holding the same bytes, a general destination
redirected to rax (an MMX one to mm0), under the guest's MXCSR control bits
(rounding, DAZ, FTZ) with the flags cleared and every exception masked.
emulator/fixups.py ORs the flags into MXCSR and writes the result to the
destination once the instruction has completed.  Integer SIMD (paddd,
pxor...) never sets them and gets no hook.

Only x86-64 Linux can run the probes; elsewhere `native()` is None and the
flags stay as Unicorn leaves them.
"""
from __future__ import annotations

import ctypes
import mmap
import platform
import re
import struct
from dataclasses import dataclass

from capstone import x86 as cs_x86

# Mnemonics (capstone's names) of the legacy-SSE instructions that can raise
# SIMD floating-point exceptions (SDM vol. 2, "SIMD Floating-Point
# Exceptions" of each; AMD APM vol. 4).  Exact conversions (cvtdq2pd,
# cvtpi2pd) and the approximations (rcpps, rsqrtps) raise none.
_ARITH = {f"{op}{t}" for op in ("add", "sub", "mul", "div", "sqrt", "min", "max", "round")
          for t in ("ps", "pd", "ss", "sd")}
_ARITH |= {"addsubps", "addsubpd", "haddps", "haddpd", "hsubps", "hsubpd", "dpps", "dppd",
           "comiss", "comisd", "ucomiss", "ucomisd"}
_CONVERT = {"cvtss2sd", "cvtsd2ss", "cvtps2pd", "cvtpd2ps", "cvtdq2ps", "cvtps2dq", "cvttps2dq",
            "cvtpd2dq", "cvttpd2dq", "cvtsi2ss", "cvtsi2sd", "cvtss2si", "cvttss2si", "cvtsd2si",
            "cvttsd2si", "cvtpi2ps", "cvtps2pi", "cvttps2pi", "cvtpd2pi", "cvttpd2pi"}
# cmpps & co. print as their predicate (cmpltps...); `cmpsd` without xmm
# operands is the string compare.
_CMP = re.compile(r"^cmp(eq|lt|le|unord|neq|nlt|nle|ord)?(ps|pd|ss|sd)$")

MXCSR_FLAGS = 0x3F              # IE DE ZE OE UE PE
MXCSR_MASKS = 0x1F80            # IM DM ZM OM UM PM
_SEGMENT_PREFIXES = {0x26, 0x2E, 0x36, 0x3E, 0x64, 0x65}
_LEGACY = _SEGMENT_PREFIXES | {0x66, 0x67, 0xF0, 0xF2, 0xF3}

# The probe area: one data page (the caller's MXCSR, the guest's, the
# probe's, the scratch operand 16-byte aligned, the xmm registers, an fxsave
# image), then the stubs.
_SAVED, _IN, _OUT, _RESULT, _SCRATCH, _XMM, _FXSAVE = 0x00, 0x04, 0x08, 0x20, 0x40, 0x100, 0x200
# Instructions whose first operand is a source too, not a destination.
_NO_DEST = {"comiss", "comisd", "ucomiss", "ucomisd"}


def is_simd_fp(mnemonic: str, op_str: str) -> bool:
    """A legacy-SSE instruction that can set MXCSR exception flags."""
    return mnemonic in _ARITH or mnemonic in _CONVERT or bool(_CMP.match(mnemonic) and "xmm" in op_str)


@dataclass(frozen=True)
class Probe:
    """One instruction, ready to run natively.  Its stub is shared by every
    instruction of the same shape: the destination is always xmm0 (rax for a
    general register, mm0 for an MMX one), an xmm source xmm1, any other
    source the scratch slot; `xmm` says which guest registers load xmm0/xmm1."""
    call: object                    # the stub, as a ctypes function
    xmm: tuple[tuple[int, int], ...]    # (stub register 0|1, guest xmm register)
    source: str                     # "mem" | "gpr" | "mm" | "": what the scratch slot stands for
    size: int                       # bytes of the scratch operand
    rm_reg: str = ""                # the general or MMX source register
    dest: str = ""                  # the guest register the result goes to ("": none, comiss...)
    dest_kind: str = ""             # "xmm" | "gpr" | "mm" (an MMX result is not taken)


def _reg_class(name: str) -> str:
    if name.startswith("xmm"):
        return "xmm"
    if name.startswith("mm"):
        return "mm"
    return "gpr"


@dataclass(frozen=True)
class _Shape:
    """An instruction with its registers renamed as Probe says: what a stub
    is made of, and its key."""
    head: bytes                     # prefixes, REX, opcode, ModRM (mod=00 rm=101 when `scratch`)
    imm: bytes
    scratch: bool                   # the rm operand is [rip + scratch]
    loads: tuple[int, ...]          # stub xmm registers loaded (0, 1)
    dest_kind: str


def _shape(ins, md, mem_size: int | None) -> tuple[_Shape, Probe] | None:
    """Rename the registers of `ins` (capstone, detail on); None for an
    encoding this module does not know."""
    raw = bytes(ins.bytes)
    ops = list(ins.operands)
    mo = ins.modrm_offset
    if len(ops) < 2 or ops[0].type != cs_x86.X86_OP_REG or not 0 < mo < len(raw):
        return None
    i = 0
    prefixes = bytearray()
    while i < mo and raw[i] in _LEGACY:
        if raw[i] not in _SEGMENT_PREFIXES and raw[i] != 0x67:   # the address is ours now
            prefixes.append(raw[i])
        i += 1
    rex = 0
    if i < mo and 0x40 <= raw[i] <= 0x4F:
        rex = raw[i]
        i += 1
    opcode, modrm = raw[i:mo], raw[mo]
    rex &= 0x48                             # W stays; R, X, B go with the renaming
    dest = md.reg_name(ops[0].reg)
    dest_kind = _reg_class(dest)
    xmm: list[tuple[int, int]] = []
    if dest_kind == "xmm":
        xmm.append((0, int(dest[3:])))      # read too: a scalar op keeps the upper lanes
    src = ops[1]
    source, size, rm_reg = "", 0, ""
    if src.type == cs_x86.X86_OP_MEM:
        source, size = "mem", mem_size or src.size
    elif src.type == cs_x86.X86_OP_REG:
        name = md.reg_name(src.reg)
        if _reg_class(name) == "xmm":
            xmm.append((1, int(name[3:])))
        else:
            source, size, rm_reg = _reg_class(name), src.size, name
    else:
        return None
    if source and not 0 < size <= 16:
        return None
    if ins.mnemonic in _NO_DEST:
        dest, dest_kind = "", ""
    imm = raw[ins.imm_offset:ins.imm_offset + ins.imm_size] if ins.imm_size else b""
    rm = 5 if source else 1                 # [rip + disp32], or xmm1
    mod = 0 if source else 3
    head = bytes(prefixes) + (bytes([rex]) if rex else b"") + opcode + bytes([(mod << 6) | rm])
    shape = _Shape(head, imm, bool(source), tuple(k for k, _ in xmm), dest_kind)
    return shape, Probe(None, tuple(xmm), source, size, rm_reg, dest, dest_kind)


class _Assembler:
    """Appends instructions at a known address, resolving RIP-relative
    displacements to the data page."""

    def __init__(self, at: int, data: int):
        self.at, self.data = at, data
        self.out = bytearray()

    def rip(self, head: bytes, target: int, tail: bytes = b"") -> None:
        """head + disp32 (to data + target) + tail."""
        end = self.at + len(self.out) + len(head) + 4 + len(tail)
        self.out += head + struct.pack("<i", self.data + target - end) + tail

    def raw(self, b: bytes) -> None:
        self.out += b


def _stub(shape: _Shape, at: int, data: int) -> bytes:
    """stmxcsr [saved]; ldmxcsr [in]; movdqu xmm0/xmm1, [xmm...]; <the
    instruction>; stmxcsr [out]; movdqu [result], xmm0 | mov [result], rax;
    ldmxcsr [saved]; (emms); ret"""
    a = _Assembler(at, data)
    a.rip(b"\x0f\xae\x1d", _SAVED)
    a.rip(b"\x0f\xae\x15", _IN)
    for k in shape.loads:
        a.rip(b"\xf3\x0f\x6f" + bytes([(k << 3) | 5]), _XMM + 16 * k)
    if shape.scratch:
        a.rip(shape.head, _SCRATCH, shape.imm)
    else:
        a.raw(shape.head + shape.imm)
    a.rip(b"\x0f\xae\x1d", _OUT)
    if shape.dest_kind == "xmm":
        a.rip(b"\xf3\x0f\x7f\x05", _RESULT)
    elif shape.dest_kind == "gpr":
        a.rip(b"\x48\x89\x05", _RESULT)
    a.rip(b"\x0f\xae\x15", _SAVED)
    if shape.dest_kind == "mm":
        a.raw(b"\x0f\x77")                  # emms: an empty x87 stack, as the ABI wants
    a.raw(b"\xc3")
    return bytes(a.out)


class _Area:
    """One mapping: a data page, then stubs (never writable and executable at once)."""

    PAGES = 16

    def __init__(self, libc):
        self._libc = libc
        self._map = mmap.mmap(-1, self.PAGES * mmap.PAGESIZE, flags=mmap.MAP_PRIVATE | mmap.MAP_ANONYMOUS,
                              prot=mmap.PROT_READ | mmap.PROT_WRITE)
        self.data = ctypes.addressof(ctypes.c_char.from_buffer(self._map))
        self.code = self.data + mmap.PAGESIZE
        self.used = 0
        self._protect(mmap.PROT_READ | mmap.PROT_EXEC)

    def _protect(self, prot: int) -> None:
        if self._libc.mprotect(self.code, (self.PAGES - 1) * mmap.PAGESIZE, prot) != 0:
            raise OSError(ctypes.get_errno(), "simd_fp: mprotect of the probe area failed")

    def add(self, make) -> int | None:
        """Place make(address, data) -> bytes; None when it does not fit."""
        at = self.code + self.used
        code = make(at, self.data)
        if self.used + len(code) > (self.PAGES - 1) * mmap.PAGESIZE:
            return None
        self._protect(mmap.PROT_READ | mmap.PROT_WRITE)
        ctypes.memmove(at, code, len(code))
        self._protect(mmap.PROT_READ | mmap.PROT_EXEC)
        self.used += (len(code) + 15) & ~15
        return at


class SimdFp:
    """The probes of this process: stubs made as new instruction shapes are
    met, in as many areas as they take."""

    def __init__(self):
        self._libc = ctypes.CDLL(None, use_errno=True)
        self._libc.mprotect.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_int]
        self._areas = [_Area(self._libc)]
        self._stubs: dict[_Shape, tuple[_Area, object]] = {}
        self._probes: dict[bytes, Probe | None] = {}
        self.mxcsr_mask = self._measure_mxcsr_mask()

    def _place(self, make) -> tuple[_Area, int]:
        at = self._areas[-1].add(make)
        if at is None:
            self._areas.append(_Area(self._libc))
            at = self._areas[-1].add(make)
        return self._areas[-1], at

    def _measure_mxcsr_mask(self) -> int:
        """MXCSR_MASK as this CPU's fxsave writes it (bytes 28-31; AMD sets
        bit 17, MM, besides DAZ)."""
        def make(at: int, data: int) -> bytes:
            return b"\x0f\xae\x05" + struct.pack("<i", data + _FXSAVE - (at + 7)) + b"\xc3"  # fxsave [rip+d]; ret
        area, at = self._place(make)
        ctypes.CFUNCTYPE(None)(at)()
        return struct.unpack("<I", ctypes.string_at(area.data + _FXSAVE + 28, 4))[0]

    def probe(self, ins, md, mem_size: int | None) -> Probe | None:
        raw = bytes(ins.bytes)
        if raw not in self._probes:
            got = _shape(ins, md, mem_size)
            if got is None:
                self._probes[raw] = None
            else:
                shape, p = got
                if shape not in self._stubs:
                    area, at = self._place(lambda at, data: _stub(shape, at, data))
                    self._stubs[shape] = (area, ctypes.CFUNCTYPE(None)(at))
                area, call = self._stubs[shape]
                self._probes[raw] = Probe((area, call), p.xmm, p.source, p.size, p.rm_reg, p.dest, p.dest_kind)
        return self._probes[raw]

    def run(self, p: Probe, mxcsr: int, xmm: dict[int, int], scratch: bytes) -> tuple[int, int | None]:
        """(exception flags, result) of the instruction on this CPU for these
        operands (xmm: stub register 0|1 -> value), under the guest's MXCSR
        control bits with every exception masked.  The result is the
        destination's new value (the whole xmm register; rax for a general
        destination, to be cut to its width), None when it has none or it is
        an MMX register."""
        area, call = p.call
        data = area.data
        ctypes.memmove(data + _IN, struct.pack("<I", (mxcsr & ~MXCSR_FLAGS) | MXCSR_MASKS), 4)
        for k, v in xmm.items():
            ctypes.memmove(data + _XMM + 16 * k, v.to_bytes(16, "little"), 16)
        if scratch:
            ctypes.memmove(data + _SCRATCH, scratch.ljust(16, b"\0"), 16)
        call()
        out = ctypes.string_at(data + _OUT, _RESULT + 16 - _OUT)
        flags = struct.unpack_from("<I", out)[0] & MXCSR_FLAGS
        if p.dest_kind == "xmm":
            return flags, int.from_bytes(out[_RESULT - _OUT:_RESULT - _OUT + 16], "little")
        if p.dest_kind == "gpr":
            return flags, struct.unpack_from("<Q", out, _RESULT - _OUT)[0]
        return flags, None


_NATIVE: list[SimdFp | None] = []


def native() -> SimdFp | None:
    """This process's probe area; None where the host cannot run x86-64 code."""
    if not _NATIVE:
        ok = platform.system() == "Linux" and platform.machine() in ("x86_64", "AMD64")
        _NATIVE.append(SimdFp() if ok else None)
    return _NATIVE[0]
