"""The stepped process's executable, as gdb reads it over vFile.

gdb loads a Linux process's vDSO only once it knows the process's
executable (qXfer:exec-file:read names it, vFile reads it), as it would for
a real process.  faultpath's process has no executable of its own: calls
come from the libc-like caller (emulator/libc.py), which returns to the
sentinel page.  So the stub serves a small ELF that describes that caller:

- `.text`: the sentinel page (the code a call returns to), symbol
  `faultpath_caller`, at the address it is mapped at (ET_EXEC, nothing to
  relocate), preceded by CALL_SITE bytes standing for the caller's `call`
  instruction: a debugger looks a caller frame up at its return address - 1,
  which must fall inside the caller's function (the process itself has
  nothing mapped below the sentinel page);
- `.debug_frame`: one FDE for it that leaves the return address undefined,
  which is how DWARF marks the outermost frame, so `bt` ends there instead
  of wandering into address 0;
- `.debug_info`: the vDSO's own data layouts, `struct vgetrandom_state` and
  `struct vdso_rng_data` (include/vdso/getrandom.h, datapage.h), and the
  process's variables of those types: `state` (and `state1`...),
  `vdso_rng_data`, and `buffer` (u8[]).  So `p *&state`, `p state.in_use`
  and `watch -l state.in_use` work with no symbol file.
"""
from __future__ import annotations

import struct

from emulator.debug import dwarf as D
from emulator.debug.elf_writer import ET_EXEC, ElfFile, OutSection, OutSymbol, Segment, write
from emulator.kernel import SENTINEL_PAGE
from mm.flags import PAGE_SIZE
from vdso import abi
from vdso import elf_structs as E
from vdso.eh_frame import sleb128, uleb128

EXE_PATH = "/faultpath/caller"
CALLER_SYMBOL = "faultpath_caller"

# `call *%r11` (41 ff d3) ending at the sentinel, padded with nops: where libc's
# call to __vdso_getrandom returns to.  In the file only; never executed.
CALL_SITE = b"\x90" * 13 + b"\x41\xff\xd3"
DW_CFA_def_cfa = 0x0C
DW_CFA_undefined = 0x07
RSP, RIP = 7, 16                 # DWARF register numbers (x86-64 psABI)


def caller_elf(kernel, caller) -> bytes:
    """The executable of the process `caller` runs in."""
    text = CALL_SITE + bytes(kernel.sentinel)
    start = SENTINEL_PAGE - len(CALL_SITE)
    info, abbrev = _types(kernel, caller).encode()
    f = ElfFile(e_type=ET_EXEC, entry=SENTINEL_PAGE)
    f.sections = [
        OutSection(".text", E.SHT_PROGBITS, text, E.SHF_ALLOC | E.SHF_EXECINSTR, start, 16),
        OutSection(".debug_frame", E.SHT_PROGBITS, _debug_frame(start, len(text)), align=8),
        OutSection(".debug_info", E.SHT_PROGBITS, info),
        OutSection(".debug_abbrev", E.SHT_PROGBITS, abbrev),
    ]
    f.segments = [Segment(E.PT_LOAD, E.PF_R | E.PF_X, ".text", PAGE_SIZE)]
    f.symbols = [OutSymbol(CALLER_SYMBOL, start, len(text), E.STT_FUNC, ".text")]
    return write(f)


def _debug_frame(start: int, size: int) -> bytes:
    """A CIE and one FDE: CFA = rsp + 8, return address undefined (outermost)."""
    cie_body = (struct.pack("<IB", 0xFFFFFFFF, 3) + b"\0" + uleb128(1) + sleb128(-8) + uleb128(RIP)
                + bytes([DW_CFA_def_cfa]) + uleb128(RSP) + uleb128(8)
                + bytes([DW_CFA_undefined]) + uleb128(RIP))
    cie_body += b"\0" * ((-(4 + len(cie_body))) % 8)
    cie = struct.pack("<I", len(cie_body)) + cie_body
    fde_body = struct.pack("<IQQ", 0, start, size)
    fde_body += b"\0" * ((-(4 + len(fde_body))) % 8)
    return cie + struct.pack("<I", len(fde_body)) + fde_body


def _types(kernel, caller) -> D.CompileUnit:
    code = (SENTINEL_PAGE - len(CALL_SITE), SENTINEL_PAGE + len(kernel.sentinel))
    cu = D.CompileUnit("faultpath-caller", "faultpath (the libc-like caller of emulator/libc.py)", code)
    u8 = cu.base_type("unsigned char", 1, D.DW_ATE_unsigned_char)
    u32 = cu.base_type("unsigned int", 4, D.DW_ATE_unsigned)
    u64 = cu.base_type("unsigned long", 8, D.DW_ATE_unsigned)
    boolean = cu.base_type("_Bool", 1, D.DW_ATE_boolean)
    state = cu.struct("vgetrandom_state", abi.STATE_SIZE, [
        ("batch", abi.STATE_BATCH, cu.array(u8, abi.STATE_BATCH_LEN)),
        ("key", abi.STATE_KEY, cu.array(u32, abi.STATE_KEY_LEN // 4)),
        ("generation", abi.STATE_GENERATION, u64),
        ("pos", abi.STATE_POS, u8),
        ("in_use", abi.STATE_IN_USE, boolean),
    ])
    rng = cu.struct("vdso_rng_data", 16, [             # u64 + u8, padded to 8
        ("generation", abi.RNG_GENERATION, u64),
        ("is_ready", abi.RNG_IS_READY, boolean),
    ])
    for i, addr in enumerate(caller.states):
        cu.variable("state" if i == 0 else f"state{i}", state, addr)
    cu.variable("vdso_rng_data", rng, kernel.image.rng_data_addr)
    cu.variable("buffer", cu.array(u8, caller.buffer_size), caller.buffer)
    return cu
