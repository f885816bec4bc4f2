"""The native block hook: block record, instruction budget and first sight.

Unicorn calls a UC_HOOK_BLOCK at the entry of every translated block (TB).
This one is ~30 instructions assembled with keystone into an executable mmap
and registered through the binding's own uc_hook_add, so the hot path never
enters Python.  For each TB entered it:

1. looks the TB up in a small open hash table (start address -> size, number
   of instructions, rep-string facts) that Python fills;
2. if the TB is unknown (or Unicorn cut it to another size), stops emulation
   *before the TB runs* (reason UNKNOWN): Python analyses it (cycle cost,
   instructions that need a hook) and resumes.  So every block is seen before
   its first instruction executes;
3. if the TB's instructions would overrun the instruction budget, stops
   before it runs (reason BUDGET); Python then reaches the exact instruction
   with one run ending at an exit (emulator/entry.py);
4. otherwise takes the TB's instructions off the budget and appends
   `address | size << 48` to the record, which Python turns into retired
   instructions and cycles at each stop.

Why not `emu_start(count=N)`: Unicorn implements count with a code hook on
every instruction, and with any code hook on a faulting instruction Unicorn
2.1.4 restores a stale lazy-flags state when the fault unwinds: CF/AF/OF of
an earlier cmp are lost when the instruction is restarted.  A block hook is
emitted before the TB's first instruction and never touches flag state.

`uc_emu_stop` from a block hook stops before the entered block runs; rip is
its start.  Each further element of a `rep` string instruction re-enters a
one-instruction TB: it is the same architectural instruction, so it costs
nothing when the previous TB ended with that very instruction.
"""
from __future__ import annotations

import ctypes
import mmap

from unicorn import UC_HOOK_BLOCK
from unicorn.unicorn_py3 import unicorn as _ucmod

# Stop reasons (buf[REASON]).
NONE, UNKNOWN, BUDGET, FULL = 0, 1, 2, 3

# Layout of the control buffer (uint64 slots).
_N, _REMAINING, _STOP_FN, _TABLE, _MASK, _CAPACITY, _REASON, _UNKNOWN_SIZE, _PREV_REP = range(9)
_ENTRIES = 10          # first entry slot
_ENTRY_BYTES = 32      # table entry: addr u64 | size u32 | ninsns u32 | rep_tail u64 | flags u64
_REP_ONLY = 1          # flags: the TB is one rep string instruction

# void cb(uc_engine *uc, uint64_t address, uint32_t size, void *user_data)
#   rdi = uc, rsi = address, edx = size, rcx = user_data = &buf[0]
_HOOK_SRC = f"""
    mov rax, rsi
    mov r8, rsi
    shr r8, 12
    xor rax, r8
    and rax, qword ptr [rcx + {_MASK * 8}]
    shl rax, 5
    add rax, qword ptr [rcx + {_TABLE * 8}]
    cmp qword ptr [rax], rsi
    jne unknown
    cmp dword ptr [rax + 8], edx
    jne unknown
    mov r8d, dword ptr [rax + 12]
    test byte ptr [rax + 24], {_REP_ONLY}
    jz charge
    cmp qword ptr [rcx + {_PREV_REP * 8}], rsi
    jne charge
    xor r8d, r8d
charge:
    mov r9, qword ptr [rcx + {_N * 8}]
    cmp r9, qword ptr [rcx + {_CAPACITY * 8}]
    jae full
    mov r10, qword ptr [rcx + {_REMAINING * 8}]
    sub r10, r8
    jb budget
    mov qword ptr [rcx + {_REMAINING * 8}], r10
    mov r10, qword ptr [rax + 16]
    mov qword ptr [rcx + {_PREV_REP * 8}], r10
    shl rdx, 48
    or rdx, rsi
    mov qword ptr [rcx + r9*8 + {_ENTRIES * 8}], rdx
    inc r9
    mov qword ptr [rcx + {_N * 8}], r9
    ret
unknown:
    mov qword ptr [rcx + {_REASON * 8}], {UNKNOWN}
    mov r9d, edx
    mov qword ptr [rcx + {_UNKNOWN_SIZE * 8}], r9
    jmp qword ptr [rcx + {_STOP_FN * 8}]
budget:
    mov qword ptr [rcx + {_REASON * 8}], {BUDGET}
    jmp qword ptr [rcx + {_STOP_FN * 8}]
full:
    mov qword ptr [rcx + {_REASON * 8}], {FULL}
    jmp qword ptr [rcx + {_STOP_FN * 8}]
"""


class _HookCode:
    """The hook's machine code: immutable, shared by every engine in the process."""
    page: mmap.mmap | None = None

    @classmethod
    def address(cls) -> int:
        if cls.page is None:
            # The project's one keystone front end: it normalises number
            # literals, since keystone's radix is process-global state.
            from vdso.asm_build import assemble_snippet
            code = assemble_snippet(_HOOK_SRC, 0, "<native block hook>")
            page = mmap.mmap(-1, mmap.PAGESIZE, prot=mmap.PROT_READ | mmap.PROT_WRITE | mmap.PROT_EXEC)
            page.write(bytes(code))
            cls.page = page
        return ctypes.addressof(ctypes.c_char.from_buffer(cls.page))


def _uc_emu_stop_address() -> int:
    return ctypes.cast(_ucmod.uclib.uc_emu_stop, ctypes.c_void_p).value


class BlockRecorder:
    """One control buffer, one TB table and one native hook on one engine."""

    def __init__(self, uc, capacity: int = 1 << 16, table_bits: int = 14):
        self.capacity = capacity
        self.buf = (ctypes.c_uint64 * (capacity + _ENTRIES))()
        self._table_mask = (1 << table_bits) - 1
        self.table = (ctypes.c_uint8 * ((1 << table_bits) * _ENTRY_BYTES))()
        self.buf[_STOP_FN] = _uc_emu_stop_address()
        self.buf[_TABLE] = ctypes.addressof(self.table)
        self.buf[_MASK] = self._table_mask
        self.buf[_CAPACITY] = capacity
        self.known: dict[int, tuple[int, int, int, int]] = {}   # addr -> (size, ninsns, rep_tail, flags)
        self._handle = _ucmod.uc_hook_h()
        self._uc = uc
        self._add_hook()

    def _add_hook(self) -> None:
        status = _ucmod.uclib.uc_hook_add(
            self._uc._uch, ctypes.byref(self._handle), UC_HOOK_BLOCK,
            ctypes.c_void_p(_HookCode.address()), ctypes.cast(self.buf, ctypes.c_void_p),
            ctypes.c_uint64(1), ctypes.c_uint64(0))
        if status != 0:
            raise RuntimeError(f"uc_hook_add(native block hook) failed: {status}")

    # ---------------------------------------------------------------- the TB table
    def _slot(self, addr: int) -> int:
        return (((addr ^ (addr >> 12)) & self._table_mask) * _ENTRY_BYTES)

    def learn(self, addr: int, size: int, ninsns: int, rep_tail: int = 0, rep_only: bool = False) -> None:
        """Tell the hook what the TB at addr is (overwrites a colliding entry)."""
        flags = _REP_ONLY if rep_only else 0
        self.known[addr] = (size, ninsns, rep_tail, flags)
        self._write(addr, size, ninsns, rep_tail, flags)

    def _write(self, addr: int, size: int, ninsns: int, rep_tail: int, flags: int) -> None:
        off = self._slot(addr)
        ctypes.memmove(ctypes.addressof(self.table) + off,
                       addr.to_bytes(8, "little") + size.to_bytes(4, "little") + ninsns.to_bytes(4, "little")
                       + rep_tail.to_bytes(8, "little") + flags.to_bytes(8, "little"), _ENTRY_BYTES)

    def override(self, addr: int, size: int, ninsns: int) -> None:
        """A temporary entry for a TB cut short by an exit (restore() puts back the real one)."""
        self._write(addr, size, ninsns, 0, 0)

    def restore(self, addr: int) -> None:
        k = self.known.get(addr)
        if k is None:
            self._write(addr, 0, 0, 0, 0)
        else:
            self._write(addr, *k)

    def forget(self, lo: int, hi: int) -> None:
        """Forget the TBs overlapping [lo, hi): their code is gone."""
        for addr in [a for a, k in self.known.items() if a < hi and a + k[0] > lo]:
            del self.known[addr]
            self._write(addr, 0, 0, 0, 0)

    def lookup(self, addr: int) -> tuple[int, int, int, int] | None:
        return self.known.get(addr)

    # ---------------------------------------------------------------- one run
    def reset(self, remaining: int, prev_rep: int = 0) -> None:
        self.buf[_N] = 0
        self.buf[_REMAINING] = remaining
        self.buf[_REASON] = NONE
        self.buf[_PREV_REP] = prev_rep

    @property
    def count(self) -> int:
        """Blocks entered (and recorded) in this run."""
        return self.buf[_N]

    @property
    def remaining(self) -> int:
        return self.buf[_REMAINING]

    @property
    def reason(self) -> int:
        return self.buf[_REASON]

    @property
    def unknown_size(self) -> int:
        return self.buf[_UNKNOWN_SIZE]

    def entries(self) -> list[int]:
        n = self.buf[_N]
        return self.buf[_ENTRIES:_ENTRIES + n]

    def close(self) -> None:
        if self._handle.value:
            _ucmod.uclib.uc_hook_del(self._uc._uch, self._handle)
            self._handle.value = 0

    def reopen(self) -> None:
        """The hook again after close() (a process that exited, brought back
        by a snapshot restore); the TB table is kept.  Blocks translated
        without the hook would not call it: Unicorn's cache is flushed."""
        if not self._handle.value:
            self._add_hook()
            self._uc.ctl_flush_tb()
