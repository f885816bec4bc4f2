"""Per-block decode cache: instruction boundaries and the cached cycle cost of
each translated block.

The native block hook (blockhook.py) tells us which blocks ran; everything a
block needs for accounting is computed once, the first time it is seen:
capstone decodes it, emulator/cycles/uarch.py models each instruction from the
profile's form table, and emulator/cycles/scoreboard.py gives the steady-state cost
of one execution (max of the throughput bound and the loop-carried chain),
converted to TSC ticks.  prefix_cost spreads that cost over the instructions
in proportion to their macro-ops, so a run that stops inside a block is
charged for the part that retired.  That is the block on its own; a run is
charged block after block as the blocks ran (emulator/cycles/sequence.py,
emulator/cycles/context.py), from the instruction models kept here.
"""
from __future__ import annotations


from capstone import x86 as cs_x86

from emulator.cycles import scoreboard, uarch, window
from emulator.cycles.blockinfo import BlockInfo
from emulator.cycles.profile import Profile
from emulator.cycles.sequence import Sequence
from vdso.insn import disassembler, is_rep_string, unfaithful_reason

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


class _Shared:
    """Block analyses for one profile, shared by every Machine in the process
    (a sweep or a bench creates many): keyed by (entry, code bytes)."""

    def __init__(self, profile: Profile):
        self.profile = profile                      # keeps id(profile) from being reused
        self.blocks: dict[tuple, BlockInfo] = {}
        self.triples: dict[tuple, tuple] = {}       # keys of three blocks -> Sequence.charge


_SHARED: dict[int, _Shared] = {}
MAX_LOOP_BODY = 4096
_SHARED_MAX = 8


def _shared(profile: Profile) -> _Shared:
    sh = _SHARED.get(id(profile))
    if sh is None or sh.profile is not profile:
        if len(_SHARED) >= _SHARED_MAX:
            _SHARED.pop(next(iter(_SHARED)))
        sh = _SHARED[id(profile)] = _Shared(profile)
    return sh


class BlockCache:
    def __init__(self, read_code, profile: Profile):
        self._read = read_code      # (addr, size) -> bytes
        self.profile = profile
        self._cache: dict[int, BlockInfo] = {}
        self.shared = _shared(profile)
        self._by_end: dict[int, BlockInfo] = {}     # block end -> the longest block seen ending there
        self._targets: set[int] = set()              # direct branch targets of the blocks seen
        self.seq = Sequence(self)                    # blocks in the order they ran (emulator/cycles/sequence.py)
        self.decoded = 0            # blocks analysed by this cache (misses in the shared cache too)
        # Per further element of a rep string tail (machine.py charges it per
        # repeated execution of the one-instruction rep block).  The qword
        # element is the common case (rep stosq in the vDSO's params query);
        # BlockInfo.rep_element_cost has the exact one per block.
        bpc = profile.param("rep_bytes_per_cycle", 32.0) or 32.0
        self.rep_element_cost = profile.to_tsc(max(8.0 / bpc, profile.param("rep_min_element", 0.0))) \
            if profile.core else profile.insn_cost("rep_element")

    def get(self, entry: int) -> BlockInfo:
        info = self._cache.get(entry)
        if info is None:
            addr, size = entry & ((1 << 48) - 1), entry >> 48
            code = self._read(addr, size)
            loop = self._loop_before(addr)
            key = (entry, code, loop)
            info = self.shared.blocks.get(key)
            if info is None:
                info = self.shared.blocks[key] = self._decode(addr, size, code, loop)
                info.key = key
            info = self._as_suffix(info)
            self._cache[entry] = info
        return info

    def _as_suffix(self, info: BlockInfo) -> BlockInfo:
        """Unicorn re-splits blocks (a run restarted mid-block after a fault, a
        step or a flushed translation cache): a block that is the tail of a
        longer one already run is charged that block's share for its
        instructions, so where Unicorn happens to cut never changes the cycle
        count.  A block starting at a branch target is a real block of its own
        (a loop head), and so is a rep string tail (its start-up is its own)."""
        t = info.timing
        if t is not None:
            for a in (t.detail.get("target"), t.detail.get("loop_target")):
                if a is not None:
                    self._targets.add(a)
        end = info.addr + info.size
        big = self._by_end.get(end)
        if big is None or big.addr > info.addr:
            if info.unfaithful is None:
                self._by_end[end] = info
            return info
        if big.addr == info.addr or info.addr in self._targets or info.rep_tail or \
                info.addr not in big.insn_addrs or big.rep_tail:
            return info
        k = big.insn_addrs.index(info.addr)
        base = big.prefix_cost[k]
        return BlockInfo(info.addr, info.size, big.insn_addrs[k:], tuple(c - base for c in big.prefix_cost[k:]),
                         big.rep_tail, info.unfaithful, None, big.rep_element_cost, big.models[k:])

    def __len__(self) -> int:
        return len(self._cache)

    def invalidate(self) -> None:
        self._cache.clear()
        self._by_end.clear()
        self._targets.clear()
        self.seq.clear()

    def forget(self, lo: int, hi: int) -> None:
        """Drop what is known of blocks overlapping [lo, hi): the code there was
        unmapped or replaced (the shared cache is keyed by the code bytes too,
        so only this cache's by-address views go stale)."""
        mask = (1 << 48) - 1
        self._cache = {e: i for e, i in self._cache.items() if not (e & mask) < hi or (e & mask) + (e >> 48) <= lo}
        self.seq.clear()            # a pair's charge may rest on any block of a loop: start afresh
        self._by_end = {end: i for end, i in self._by_end.items() if not i.addr < hi or end <= lo}
        self._targets = {a for a in self._targets if not lo <= a < hi}

    def _loop_before(self, addr: int) -> tuple[int, bytes] | None:
        """(start, body) of the loop whose closing jcc ends right before addr, if
        any: addr is then where that loop exits to.  Found from the bytes alone
        (jcc rel8 / rel32 backwards), so the answer never depends on which blocks
        happened to be analysed first."""
        for k in (2, 6):
            try:
                b = self._read(addr - k, k)
            except Exception:       # the page before is not mapped
                continue
            if k == 2 and 0x70 <= b[0] <= 0x7F:
                rel = int.from_bytes(b[1:2], "little", signed=True)
            elif k == 6 and b[0] == 0x0F and 0x80 <= b[1] <= 0x8F:
                rel = int.from_bytes(b[2:6], "little", signed=True)
            else:
                continue
            start = addr + rel
            if addr - MAX_LOOP_BODY <= start < addr - k:
                try:
                    return start, self._read(start, addr - start)
                except Exception:
                    continue
        return None

    def _exit_credit(self, loop: tuple[int, bytes] | None, after: list) -> float:
        """Core cycles the block after a latency-bound loop (its models: after)
        overlaps with the loop's last chains (emulator/cycles/window.py); 0 if none."""
        if loop is None:
            return 0.0
        start, body = loop
        models = []
        end = start
        for ins in disassembler(True).disasm(body, start):
            models.append(uarch.model(ins, self.profile))
            end = ins.address + ins.size
        if end != start + len(body) or not models or models[-1].target != start:
            return 0.0
        uarch.fuse_pairs(models, self.profile)
        w = scoreboard.analyse(models, self.profile).loop_window
        if w is None:
            return 0.0
        last = after[-1] if after else None
        again = None
        if last is not None and last.target is not None and last.target <= start and last.branch in ("cond", "jmp"):
            again = self._straight(last.target)
        return window.overlap(w, after, again, self.profile)

    def _straight(self, addr: int) -> list:
        """Models of the straight code at addr, up to and including its first branch."""
        try:
            code = self._read(addr, 256)
        except Exception:       # not mapped
            return []
        out = []
        for ins in disassembler(True).disasm(code, addr):
            out.append(uarch.model(ins, self.profile))
            if out[-1].branch or out[-1].rep:
                break
        return out

    def _decode(self, addr: int, size: int, code: bytes | None = None,
                loop: tuple[int, bytes] | None = None) -> BlockInfo:
        self.decoded += 1
        if code is None:
            code = self._read(addr, size)
        addrs = []
        models = []
        unfaithful = None
        p = self.profile
        decoded = 0
        for ins in disassembler(True).disasm(code, addr):
            addrs.append(ins.address)
            models.append(uarch.model(ins, p))
            decoded += ins.size
            if unfaithful is None:
                unfaithful = unfaithful_reason(bytes(ins.bytes), ins.mnemonic, ins.op_str)
        if unfaithful is None and decoded < len(code):
            # Bytes capstone stopped on but Unicorn ran (the CPU raises #UD there).
            unfaithful = unfaithful_reason(code[decoded:decoded + 15])
        if not addrs:   # undecodable: count the block as one instruction
            return BlockInfo(addr, size, (addr,), (0.0, p.insn_cost("other")), False, unfaithful)
        uarch.fuse_pairs(models, p)
        t = scoreboard.analyse(models, p)
        total = p.to_tsc(t.cost)
        wsum = sum(t.weights)
        costs, acc = [0.0], 0.0
        for w in t.weights:
            acc += w
            costs.append(total * acc / wsum)
        costs[-1] = total
        credit = self._exit_credit(loop, models)
        if credit:
            # The block that follows a latency-bound loop's exit: the loop's last
            # chains and this work overlap (emulator/cycles/window.py).  Charged
            # when the block completes, so a block cut short by a fault keeps its cost.
            costs[-1] = total - p.to_tsc(credit)
            t.detail["exit_credit"] = credit
        rep_tail = models[-1].rep is not None
        return BlockInfo(addr, size, tuple(addrs), tuple(costs), rep_tail, unfaithful, t,
                         p.to_tsc(t.rep_elem) if rep_tail else 0.0, models)


def analyse_code(code: bytes, addr: int, profile: Profile) -> scoreboard.BlockTiming:
    """The scoreboard's view of a straight piece of code (tests, `bench`, reports)."""
    models = [uarch.model(ins, profile) for ins in disassembler(True).disasm(code, addr)]
    uarch.fuse_pairs(models, profile)
    return scoreboard.analyse(models, profile)
