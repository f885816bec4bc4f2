"""Just enough DWARF 4 to describe C data and functions to gdb: base, array
and struct types, global variables at fixed addresses, functions by name
and code range (.debug_info, .debug_abbrev).

Used for the caller's executable, so that `p *state`, `p state.in_use` and
`watch -l state.in_use` work in gdb with the vDSO's own struct layouts, and
for a vDSO's debug file, so that gdb names frames after the kernel's
functions rather than their weak aliases.
Encodings are DWARF 4's (sections 7.5 and 7.8).
"""
from __future__ import annotations

import struct
from dataclasses import dataclass, field

from vdso.eh_frame import uleb128

# tags
DW_TAG_array_type = 0x01
DW_TAG_member = 0x0D
DW_TAG_compile_unit = 0x11
DW_TAG_structure_type = 0x13
DW_TAG_subrange_type = 0x21
DW_TAG_subprogram = 0x2E
DW_TAG_base_type = 0x24
DW_TAG_variable = 0x34
# attributes
DW_AT_location = 0x02
DW_AT_name = 0x03
DW_AT_byte_size = 0x0B
DW_AT_low_pc = 0x11
DW_AT_high_pc = 0x12
DW_AT_language = 0x13
DW_AT_producer = 0x25
DW_AT_upper_bound = 0x2F
DW_AT_data_member_location = 0x38
DW_AT_encoding = 0x3E
DW_AT_external = 0x3F
DW_AT_type = 0x49
# forms
DW_FORM_addr = 0x01
DW_FORM_data1 = 0x0B
DW_FORM_data2 = 0x05
DW_FORM_string = 0x08
DW_FORM_udata = 0x0F
DW_FORM_ref4 = 0x13
DW_FORM_exprloc = 0x18
DW_FORM_flag_present = 0x19
# values
DW_LANG_C99 = 0x0C
DW_ATE_boolean = 0x02
DW_ATE_unsigned = 0x07
DW_ATE_unsigned_char = 0x08
DW_OP_addr = 0x03


@dataclass
class Die:
    tag: int
    attrs: list[tuple[int, int, object]] = field(default_factory=list)   # (attribute, form, value)
    children: list["Die"] = field(default_factory=list)
    offset: int = 0                 # filled in by encode(): CU-relative, what DW_FORM_ref4 points at


class CompileUnit:
    """A builder: add types and variables, then encode()."""

    def __init__(self, name: str, producer: str, code: tuple[int, int]):
        # The unit's code range: without one gdb files the variables' addresses
        # under this unit's code and warns when it prints a pointer to them.
        self.root = Die(DW_TAG_compile_unit, [(DW_AT_producer, DW_FORM_string, producer),
                                              (DW_AT_language, DW_FORM_data1, DW_LANG_C99),
                                              (DW_AT_name, DW_FORM_string, name),
                                              (DW_AT_low_pc, DW_FORM_addr, code[0]),
                                              (DW_AT_high_pc, DW_FORM_udata, code[1] - code[0])])
        self._base: dict[str, Die] = {}

    def base_type(self, name: str, size: int, encoding: int) -> Die:
        if name not in self._base:
            d = Die(DW_TAG_base_type, [(DW_AT_name, DW_FORM_string, name), (DW_AT_byte_size, DW_FORM_data1, size),
                                       (DW_AT_encoding, DW_FORM_data1, encoding)])
            self.root.children.append(d)
            self._base[name] = d
        return self._base[name]

    def array(self, elem: Die, count: int) -> Die:
        index = self.base_type("unsigned long", 8, DW_ATE_unsigned)
        d = Die(DW_TAG_array_type, [(DW_AT_type, DW_FORM_ref4, elem)],
                [Die(DW_TAG_subrange_type, [(DW_AT_type, DW_FORM_ref4, index),
                                            (DW_AT_upper_bound, DW_FORM_udata, count - 1)])])
        self.root.children.append(d)
        return d

    def struct(self, name: str, size: int, members: list[tuple[str, int, Die]]) -> Die:
        d = Die(DW_TAG_structure_type, [(DW_AT_name, DW_FORM_string, name), (DW_AT_byte_size, DW_FORM_data2, size)],
                [Die(DW_TAG_member, [(DW_AT_name, DW_FORM_string, m), (DW_AT_type, DW_FORM_ref4, t),
                                     (DW_AT_data_member_location, DW_FORM_udata, off)])
                 for m, off, t in members])
        self.root.children.append(d)
        return d

    def function(self, name: str, low: int, high: int) -> Die:
        """A function with no type information: its name and code range."""
        d = Die(DW_TAG_subprogram, [(DW_AT_name, DW_FORM_string, name),
                                    (DW_AT_external, DW_FORM_flag_present, True),
                                    (DW_AT_low_pc, DW_FORM_addr, low),
                                    (DW_AT_high_pc, DW_FORM_udata, high - low)])
        self.root.children.append(d)
        return d

    def variable(self, name: str, type_: Die, addr: int) -> Die:
        loc = bytes([DW_OP_addr]) + struct.pack("<Q", addr)
        d = Die(DW_TAG_variable, [(DW_AT_name, DW_FORM_string, name), (DW_AT_type, DW_FORM_ref4, type_),
                                  (DW_AT_external, DW_FORM_flag_present, True),
                                  (DW_AT_location, DW_FORM_exprloc, loc)])
        self.root.children.append(d)
        return d

    def encode(self) -> tuple[bytes, bytes]:
        """(.debug_info, .debug_abbrev)"""
        abbrevs: dict[tuple, int] = {}
        abbrev_bytes = bytearray()

        def code_of(d: Die) -> int:
            key = (d.tag, bool(d.children), tuple((a, f) for a, f, _ in d.attrs))
            if key not in abbrevs:
                abbrevs[key] = len(abbrevs) + 1
                abbrev_bytes.extend(uleb128(abbrevs[key]) + uleb128(d.tag) + bytes([1 if d.children else 0]))
                for a, f in key[2]:
                    abbrev_bytes.extend(uleb128(a) + uleb128(f))
                abbrev_bytes.extend(b"\0\0")
            return abbrevs[key]

        header = 11              # unit_length(4) version(2) abbrev_offset(4) address_size(1)
        # pass 1: offsets (every attribute's size is known without the refs' values)
        def layout(d: Die, off: int) -> int:
            d.offset = off
            off += len(uleb128(code_of(d)))
            for _, form, v in d.attrs:
                off += len(_value(form, v))
            for c in d.children:
                off = layout(c, off)
            return off + (1 if d.children else 0)
        end = layout(self.root, header)

        def emit(d: Die) -> bytes:
            out = bytearray(uleb128(code_of(d)))
            for _, form, v in d.attrs:
                out += _value(form, v)
            for c in d.children:
                out += emit(c)
            if d.children:
                out.append(0)
            return bytes(out)
        body = emit(self.root)
        info = struct.pack("<IHIB", end - 4, 4, 0, 8) + body
        abbrev_bytes.append(0)
        return info, bytes(abbrev_bytes)


def _value(form: int, v) -> bytes:
    if isinstance(v, Die):
        v = v.offset
    if form == DW_FORM_string:
        return v.encode() + b"\0"
    if form == DW_FORM_data1:
        return struct.pack("<B", v)
    if form == DW_FORM_data2:
        return struct.pack("<H", v)
    if form == DW_FORM_ref4:
        return struct.pack("<I", v)
    if form == DW_FORM_udata:
        return uleb128(v)
    if form == DW_FORM_addr:
        return struct.pack("<Q", v)
    if form == DW_FORM_exprloc:
        return uleb128(len(v)) + v
    if form == DW_FORM_flag_present:
        return b""
    raise ValueError(f"DWARF form {form:#x} not supported")
