"""Per-block decode cache: instruction boundaries, instruction classes and the
cached cycle cost of each translated block.

The native block hook (blockhook.py) tells us which blocks ran; everything a
block needs for accounting is computed once, the first time it is seen.
"""
from __future__ import annotations

from bisect import bisect_left
from dataclasses import dataclass

from capstone import x86 as cs_x86

from emulator.cost import Profile
from emulator.decode import disassembler, is_rep_string, unfaithful_reason

_SIMD_PREFIXES = ("p", "movdq", "movap", "movup", "movq", "movd", "shufp", "unpck", "xorp", "andp", "orp")


def classify(ins) -> str:
    """Instruction class for the first-version cost table (capstone detail on)."""
    m = ins.mnemonic
    if is_rep_string(m):
        return "rep"
    grp = set(ins.groups)
    if cs_x86.X86_GRP_CALL in grp or cs_x86.X86_GRP_RET in grp or m.startswith(("push", "pop")):
        return "call_ret"
    if cs_x86.X86_GRP_JUMP in grp or cs_x86.X86_GRP_BRANCH_RELATIVE in grp:
        return "branch"
    has_mem = any(op.type == cs_x86.X86_OP_MEM for op in ins.operands) and m != "lea"
    is_simd = any(r in ins.op_str for r in ("xmm", "ymm", "zmm")) or m.startswith(_SIMD_PREFIXES) and "xmm" in ins.op_str
    if is_simd:
        return "simd_mem" if has_mem else "simd"
    if has_mem:
        ops = ins.operands
        if ops and ops[0].type == cs_x86.X86_OP_MEM:
            return "store"
        return "load"
    return "int_alu"


@dataclass
class BlockInfo:
    addr: int
    size: int
    insn_addrs: tuple[int, ...]     # start address of each instruction
    prefix_cost: tuple[float, ...]  # prefix_cost[k] = cost of the first k instructions
    rep_tail: bool                  # the last instruction is a rep string op
    unfaithful: str | None          # reason, if the block holds an instruction Unicorn runs wrongly

    @property
    def ninsns(self) -> int:
        return len(self.insn_addrs)

    @property
    def cost(self) -> float:
        return self.prefix_cost[-1]

    def executed_before(self, rip: int) -> int:
        """How many of this block's instructions retired if execution stopped at rip."""
        if not (self.addr <= rip < self.addr + self.size):
            return self.ninsns
        return bisect_left(self.insn_addrs, rip)


class BlockCache:
    def __init__(self, read_code, profile: Profile):
        self._read = read_code      # (addr, size) -> bytes
        self.profile = profile
        self._cache: dict[int, BlockInfo] = {}
        self.rep_element_cost = profile.insn_cost("rep_element")

    def get(self, entry: int) -> BlockInfo:
        info = self._cache.get(entry)
        if info is None:
            info = self._cache[entry] = self._decode(entry & ((1 << 48) - 1), entry >> 48)
        return info

    def invalidate(self) -> None:
        self._cache.clear()

    def _decode(self, addr: int, size: int) -> BlockInfo:
        code = self._read(addr, size)
        addrs, costs, total = [], [0.0], 0.0
        rep_tail = False
        unfaithful = None
        p = self.profile
        for ins in disassembler(True).disasm(code, addr):
            addrs.append(ins.address)
            cls = classify(ins)
            rep_tail = cls == "rep"
            total += p.insn_cost("rep_startup") if rep_tail else p.insn_cost(cls)
            costs.append(total)
            if unfaithful is None:
                unfaithful = unfaithful_reason(bytes(ins.bytes), ins.mnemonic, ins.op_str)
        if not addrs:   # undecodable: count the block as one instruction
            addrs, costs = [addr], [0.0, p.insn_cost("other")]
        return BlockInfo(addr, size, tuple(addrs), tuple(costs), rep_tail, unfaithful)
