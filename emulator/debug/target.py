"""What gdb is told the target is, and its registers.

The target description (qXfer:features:read target.xml) is i386:x86-64 with
the org.gnu.gdb.i386 core, sse, linux and segments features, osabi GNU/Linux
so that gdb applies its Linux conventions (auxv, the vDSO, signals).  The
register numbers below are the order of that description, which is also the
order of the `g` packet.

Register packets are validated here: a value must have exactly the
register's width (`P10=` is refused, it does not set rip to 0), a `G` packet
must cover every register, and nothing is written unless all of it is valid.
"""
from __future__ import annotations

from dataclasses import dataclass

from unicorn import x86_const as X

from emulator.errors import FaultpathError


class ProtocolError(FaultpathError):
    """A malformed or out-of-range packet; answered with an error reply."""


@dataclass(frozen=True)
class Reg:
    name: str
    bits: int
    type: str
    feature: str
    group: str = ""

    @property
    def size(self) -> int:
        return self.bits // 8


def _reg_table() -> list[Reg]:
    core = "org.gnu.gdb.i386.core"
    regs = [Reg(n, 64, "data_ptr" if n in ("rbp", "rsp") else "int64", core)
            for n in ["rax", "rbx", "rcx", "rdx", "rsi", "rdi", "rbp", "rsp",
                      "r8", "r9", "r10", "r11", "r12", "r13", "r14", "r15"]]
    regs.append(Reg("rip", 64, "code_ptr", core))
    regs.append(Reg("eflags", 32, "i386_eflags", core))
    regs += [Reg(n, 32, "int32", core) for n in ["cs", "ss", "ds", "es", "fs", "gs"]]
    regs += [Reg(f"st{i}", 80, "i387_ext", core) for i in range(8)]
    regs += [Reg(n, 32, "int", core, "float")
             for n in ["fctrl", "fstat", "ftag", "fiseg", "fioff", "foseg", "fooff", "fop"]]
    sse = "org.gnu.gdb.i386.sse"
    regs += [Reg(f"xmm{i}", 128, "vec128", sse) for i in range(16)]
    regs.append(Reg("mxcsr", 32, "i386_mxcsr", sse, "vector"))
    regs.append(Reg("orig_rax", 64, "int", "org.gnu.gdb.i386.linux"))
    seg = "org.gnu.gdb.i386.segments"
    regs += [Reg("fs_base", 64, "int", seg), Reg("gs_base", 64, "int", seg)]
    return regs


REGS = _reg_table()
REGNUM = {r.name: i for i, r in enumerate(REGS)}

_TYPES = {
    "org.gnu.gdb.i386.core": """
  <flags id="i386_eflags" size="4">
    <field name="CF" start="0" end="0"/><field name="" start="1" end="1"/>
    <field name="PF" start="2" end="2"/><field name="AF" start="4" end="4"/>
    <field name="ZF" start="6" end="6"/><field name="SF" start="7" end="7"/>
    <field name="TF" start="8" end="8"/><field name="IF" start="9" end="9"/>
    <field name="DF" start="10" end="10"/><field name="OF" start="11" end="11"/>
    <field name="NT" start="14" end="14"/><field name="RF" start="16" end="16"/>
    <field name="VM" start="17" end="17"/><field name="AC" start="18" end="18"/>
    <field name="VIF" start="19" end="19"/><field name="VIP" start="20" end="20"/>
    <field name="ID" start="21" end="21"/>
  </flags>""",
    "org.gnu.gdb.i386.sse": """
  <vector id="v4f" type="ieee_single" count="4"/>
  <vector id="v2d" type="ieee_double" count="2"/>
  <vector id="v16i8" type="int8" count="16"/>
  <vector id="v8i16" type="int16" count="8"/>
  <vector id="v4i32" type="int32" count="4"/>
  <vector id="v2i64" type="int64" count="2"/>
  <union id="vec128">
    <field name="v4_float" type="v4f"/><field name="v2_double" type="v2d"/>
    <field name="v16_int8" type="v16i8"/><field name="v8_int16" type="v8i16"/>
    <field name="v4_int32" type="v4i32"/><field name="v2_int64" type="v2i64"/>
    <field name="uint128" type="uint128"/>
  </union>
  <flags id="i386_mxcsr" size="4">
    <field name="IE" start="0" end="0"/><field name="DE" start="1" end="1"/>
    <field name="ZE" start="2" end="2"/><field name="OE" start="3" end="3"/>
    <field name="UE" start="4" end="4"/><field name="PE" start="5" end="5"/>
    <field name="DAZ" start="6" end="6"/><field name="IM" start="7" end="7"/>
    <field name="DM" start="8" end="8"/><field name="ZM" start="9" end="9"/>
    <field name="OM" start="10" end="10"/><field name="UM" start="11" end="11"/>
    <field name="PM" start="12" end="12"/><field name="FZ" start="15" end="15"/>
  </flags>""",
}


def target_xml() -> str:
    out = ['<?xml version="1.0"?>', '<!DOCTYPE target SYSTEM "gdb-target.dtd">', '<target version="1.0">',
           "  <architecture>i386:x86-64</architecture>", "  <osabi>GNU/Linux</osabi>"]
    feature = None
    for i, r in enumerate(REGS):
        if r.feature != feature:
            if feature is not None:
                out.append("</feature>")
            feature = r.feature
            out.append(f'<feature name="{feature}">{_TYPES.get(feature, "")}')
        g = f' group="{r.group}"' if r.group else ""
        out.append(f'  <reg name="{r.name}" bitsize="{r.bits}" type="{r.type}" regnum="{i}"{g}/>')
    out.append("</feature>")
    out.append("</target>")
    return "\n".join(out) + "\n"


TARGET_XML = target_xml().encode()

_UC = {"eflags": X.UC_X86_REG_EFLAGS, "fctrl": X.UC_X86_REG_FPCW, "fstat": X.UC_X86_REG_FPSW,
       "ftag": X.UC_X86_REG_FPTAG, "mxcsr": X.UC_X86_REG_MXCSR}
# Written through to the CPU; the rest (x87 state, which the vDSO never uses, and
# the segment selectors, which Unicorn would reload in 64-bit mode) are
# accepted and ignored.
_WRITABLE = {r.name for r in REGS[:17]} | {"eflags", "mxcsr", "fs_base", "gs_base"} | {
    f"xmm{i}" for i in range(16)}


def read_reg(session, num: int) -> bytes:
    r = REGS[num]
    uc = session.m.uc
    n = r.name
    if n.startswith("st"):
        v = uc.reg_read(X.UC_X86_REG_FP0 + int(n[2:]))
        val = (v[0] | (v[1] << 64)) if isinstance(v, tuple) else int(v)
    elif n.startswith("xmm"):
        val = uc.reg_read(getattr(X, f"UC_X86_REG_XMM{n[3:]}"))
    elif n in _UC:
        val = uc.reg_read(_UC[n])
    elif n == "orig_rax":
        val = (1 << 64) - 1
    elif n in ("fiseg", "fioff", "foseg", "fooff", "fop"):
        val = 0
    else:
        val = uc.reg_read(getattr(X, f"UC_X86_REG_{n.upper()}"))
    return (val & ((1 << r.bits) - 1)).to_bytes(r.size, "little")


def all_registers(session) -> bytes:
    return b"".join(read_reg(session, i) for i in range(len(REGS)))


def parse_regnum(text: bytes) -> int:
    num = parse_hex(text, "register number")
    if num >= len(REGS):
        raise ProtocolError(f"no register number {num:#x}")
    return num


def parse_reg_value(num: int, text: bytes) -> bytes:
    """A register value in target byte order, exactly the register's width."""
    r = REGS[num]
    raw = parse_hexbytes(text, f"{r.name} value")
    if len(raw) != r.size:
        raise ProtocolError(f"{r.name} is {r.size} bytes, the packet has {len(raw)}")
    return raw


def parse_g(text: bytes) -> list[bytes]:
    """A `G` packet: every register, in description order."""
    raw = parse_hexbytes(text, "G packet")
    if len(raw) != G_SIZE:
        raise ProtocolError(f"G packet has {len(raw)} bytes of registers, {G_SIZE} expected")
    out = []
    off = 0
    for r in REGS:
        out.append(raw[off:off + r.size])
        off += r.size
    return out


def write_reg(session, num: int, raw: bytes) -> None:
    r = REGS[num]
    if r.name not in _WRITABLE:
        return                       # x87 state is not modelled: accepted and ignored
    val = int.from_bytes(raw, "little")
    uc = session.m.uc
    if r.name.startswith("xmm"):
        uc.reg_write(getattr(X, f"UC_X86_REG_XMM{r.name[3:]}"), val)
    elif r.name in _UC:
        uc.reg_write(_UC[r.name], val)
    else:
        session.set_register(r.name, val)


G_SIZE = sum(r.size for r in REGS)


# ---------------------------------------------------------------------------- hex fields
U64 = (1 << 64) - 1
_HEX = frozenset(b"0123456789abcdefABCDEF")


def parse_hex(text: bytes, what: str, limit: int = U64) -> int:
    """A hex number field: digits only, at most `limit` (an address: 64 bits)."""
    if not text or not set(text) <= _HEX:
        raise ProtocolError(f"{what}: {text[:24]!r} is not a hex number")
    if len(text.lstrip(b"0")) > 16:
        raise ProtocolError(f"{what}: wider than 64 bits")
    v = int(text, 16)
    if v > limit:
        raise ProtocolError(f"{what}: {v:#x} out of range")
    return v


def parse_hexbytes(text: bytes, what: str) -> bytes:
    if len(text) % 2 or not set(text) <= _HEX:
        raise ProtocolError(f"{what}: not an even number of hex digits")
    return bytes.fromhex(text.decode())
