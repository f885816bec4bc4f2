"""Instruction forms: what one decoded x86 instruction is to the scoreboard.

`model(ins, profile)` turns a capstone instruction (detail on) into an
InsnModel: the registers it reads (split into data and address sources), the
registers it writes, its uops (port group + latency each), how many macro-ops
it takes at dispatch, and whether it is a branch, a zero idiom or an
eliminated move.  All timing numbers come from the profile's [forms] and
[core] sections; this file only knows x86 semantics (which operand is read,
written, or an address), not costs.

Form keys are "mnemonic sig" with sig made of r (general register), x (xmm),
m (memory), i (immediate): "paddd x,x", "mov r,i".  The lookup goes from the
most specific to the most general: the exact key, the key with memory
operands replaced by registers (the load or store is added separately), the
bare mnemonic, then a per-kind default ("default_int" / "default_vec").
"""
from __future__ import annotations

from dataclasses import dataclass, field

from capstone import CS_AC_READ, CS_AC_WRITE
from capstone import x86 as cs_x86

from emulator.cycles.memdeps import MemRef
from emulator.cycles.profile import Profile

FLAGS = "flags"

_GPR64 = {
    "a": "rax", "b": "rbx", "c": "rcx", "d": "rdx",
}
_CANON: dict[str, str] = {}
for _l, _r in _GPR64.items():
    for _n in (f"{_l}l", f"{_l}h", f"{_l}x", f"e{_l}x", f"r{_l}x"):
        _CANON[_n] = _r
for _b in ("si", "di", "bp", "sp"):
    for _n in (_b, f"{_b}l", f"e{_b}", f"r{_b}"):
        _CANON[_n] = f"r{_b}"
for _i in range(8, 16):
    for _s in ("", "b", "w", "d"):
        _CANON[f"r{_i}{_s}"] = f"r{_i}"
for _i in range(32):
    for _p in ("x", "y", "z"):
        _CANON[f"{_p}mm{_i}"] = f"xmm{_i}"
for _n in ("rflags", "eflags", "flags"):
    _CANON[_n] = FLAGS
_IGNORED = {"rip", "eip", "ip", "fs", "gs", "cs", "ds", "es", "ss", "mxcsr", "fpsw", "fpcw"}

# Pure moves: a memory source is just the load, a memory destination just the store.
MOVES = {"mov", "movabs", "movzx", "movsx", "movsxd", "movdqa", "movdqu", "movaps", "movups", "movapd",
         "movupd", "movq", "movd", "movnti", "movntdq", "movss", "movsd", "lddqu"}
ELIMINABLE = {"mov", "movdqa", "movdqu", "movaps", "movups", "movapd", "movupd"}
ZERO_IDIOMS = {"xor", "sub", "pxor", "xorps", "xorpd", "psubd", "psubq", "psubb", "psubw", "pcmpgtd",
               "pcmpgtb", "pcmpgtw", "pcmpgtq", "sbb", "pandn", "andnps"}
FUSIBLE = {"cmp", "test", "add", "sub", "and", "or", "xor", "inc", "dec"}
STACK_OPS = {"push", "pop", "call", "ret", "pushfq", "popfq", "leave"}


@dataclass
class Uop:
    ports: str | None      # port group name in profile.ports; None: no execution port
    lat: float             # core cycles from its inputs to its result
    kind: str = "op"       # load | op | store | branch


@dataclass
class InsnModel:
    address: int
    text: str
    key: str
    mops: float                       # macro-ops at dispatch
    data_srcs: tuple[str, ...]        # registers the operation reads
    addr_srcs: tuple[str, ...]        # registers the address generation reads
    dsts: tuple[str, ...]             # registers written
    uops: list[Uop] = field(default_factory=list)
    load: bool = False
    store: bool = False
    branch: str | None = None         # cond | jmp | call | ret | None
    eliminated: bool = False          # move eliminated at rename: zero latency, no port
    zero_idiom: bool = False          # result independent of the inputs
    fused: bool = False               # this jcc is fused into the previous flag-setting op
    rep: str | None = None            # rep-string mnemonic, if any
    rep_elem: int = 0                 # element size of a rep string op
    vector: bool = False
    unknown_form: bool = False
    target: int | None = None         # direct branch target
    size: int = 0
    mem: MemRef | None = None         # the memory access, for dependencies by address
    rsp_delta: int | None = None      # how the stack engine moves rsp (push -8, pop +8, sub rsp,16 -16)

    @property
    def lat(self) -> float:
        return sum(u.lat for u in self.uops if u.kind != "store")


def canon(name: str) -> str | None:
    if name in _IGNORED:
        return None
    return _CANON.get(name, name)


def _sig(ins, ops) -> tuple[str, bool, bool, bool, list]:
    parts, has_load, has_store, vec = [], False, False, False
    mems = []
    for op in ops:
        if op.type == cs_x86.X86_OP_REG:
            n = ins.reg_name(op.reg)
            if n.startswith(("xmm", "ymm", "zmm")):
                parts.append("x")
                vec = True
            else:
                parts.append("r")
        elif op.type == cs_x86.X86_OP_IMM:
            parts.append("i")
        elif op.type == cs_x86.X86_OP_MEM:
            parts.append("m")
            mems.append(op)
    return ",".join(parts), has_load, has_store, vec, mems


def _lookup(profile: Profile, mn: str, sig: str, vec: bool) -> tuple[dict, str, bool]:
    keys = [f"{mn} {sig}".strip()]
    if "m" in sig:
        regsig = sig.replace("m", "x" if vec else "r")
        keys.append(f"{mn} {regsig}")
    keys.append(mn)
    for k in keys:
        f = profile.forms.get(k)
        if f is not None:
            return f, k, False
    k = "default_vec" if vec else "default_int"
    return profile.forms.get(k, {"lat": 1.0, "ports": "-"}), k, True


def _ports(f: dict) -> str | None:
    p = f.get("ports", "-")
    return None if p == "-" else p


def _memref(ins, op, vec: bool, load: bool, store: bool, move: bool) -> MemRef:
    mem = op.mem
    # Memory renaming covers moves and read-modify-writes, not the memory source of
    # an ALU op (add r,[m]; cmp r,[m]): [MEAS] xor eax,[rsi] / mov [rsi],eax 7.9 a step.
    renamable = move or store
    if mem.base == cs_x86.X86_REG_RIP:
        return MemRef("rip", None, 1, ins.address + ins.size + mem.disp, op.size, vec, load, store, renamable)
    base = canon(ins.reg_name(mem.base)) if mem.base else None
    index = canon(ins.reg_name(mem.index)) if mem.index else None
    return MemRef(base, index, mem.scale, mem.disp, op.size, vec, load, store, renamable)


def _stack_engine(ins, m: InsnModel, mn: str, ops) -> None:
    """push/pop touch [rsp] and move it by 8; add/sub rsp, imm move it by a known amount."""
    if mn == "push":
        m.rsp_delta = -8
        m.mem = MemRef("rsp", None, 1, -8, 8, False, False, True)
    elif mn == "pop":
        m.rsp_delta = 8
        m.mem = MemRef("rsp", None, 1, 0, 8, False, True, False)
    elif mn == "call":
        # The return address: the RAS predicts the return, but the ret still loads it,
        # and that load is served by the call's store in flight like any other [MEAS:
        # a loop of call f / f: 8 independent store-load pairs; ret: 9.0 cycles a call,
        # the 8 pairs inline 8.0, an empty call/ret 5.0].
        m.rsp_delta = -8
        m.mem = MemRef("rsp", None, 1, -8, 8, False, False, True)
    elif mn == "ret":
        m.rsp_delta = 8 + (ops[0].imm if ops and ops[0].type == cs_x86.X86_OP_IMM else 0)
        m.mem = MemRef("rsp", None, 1, 0, 8, False, True, False)
    elif mn in ("add", "sub") and len(ops) == 2 and ops[0].type == cs_x86.X86_OP_REG and \
            ops[1].type == cs_x86.X86_OP_IMM and ins.reg_name(ops[0].reg) == "rsp":
        m.rsp_delta = ops[1].imm if mn == "add" else -ops[1].imm


def model(ins, profile: Profile) -> InsnModel:
    """The scoreboard's view of one instruction (capstone detail must be on)."""
    mn = ins.mnemonic
    prefix_rep = None
    if mn.startswith(("rep ", "repe ", "repne ", "repz ", "repnz ")):
        prefix_rep, mn = mn.split(" ", 1)
    ops = ins.operands
    sig, _, _, vec, mems = _sig(ins, ops)
    # Registers read/written, split between data and address operands.
    data_srcs: list[str] = []
    addr_srcs: list[str] = []
    dsts: list[str] = []
    load = store = False
    partial_dst = False
    two_op_move = mn in MOVES and len(ops) == 2
    mem_op = None
    for i, op in enumerate(ops):
        if op.type == cs_x86.X86_OP_REG:
            r = canon(ins.reg_name(op.reg))
            if r is None:
                continue
            if op.access & CS_AC_READ:
                data_srcs.append(r)
            if op.access & CS_AC_WRITE:
                dsts.append(r)
                if op.size in (1, 2) and not r.startswith("xmm"):
                    partial_dst = True          # AMD merges 8/16-bit writes: depends on the old value
            if op.access == 0:                  # capstone left access unset: assume read
                data_srcs.append(r)
        elif op.type == cs_x86.X86_OP_MEM:
            for reg in (op.mem.base, op.mem.index):
                if reg:
                    r = canon(ins.reg_name(reg))
                    if r is not None:
                        addr_srcs.append(r)
            if mn in ("lea", "nop", "prefetcht0", "prefetcht1", "prefetcht2", "prefetchnta", "prefetchw",
                      "clflush", "clflushopt"):
                continue
            acc = op.access
            if two_op_move:
                # capstone 5 marks the memory destination of SSE moves (movups [m], x)
                # as read: for a two-operand move the first operand is the destination.
                acc = CS_AC_WRITE if i == 0 else CS_AC_READ
            if acc & CS_AC_READ or acc == 0:
                load = True
            if acc & CS_AC_WRITE:
                store = True
            mem_op = op
    if mn == "lea":
        data_srcs.extend(addr_srcs)
        addr_srcs = []
    # Implicit registers (flags, rsp of the stack ops, rax/rdx of mul/div...).
    for r in ins.regs_read:
        c = canon(ins.reg_name(r))
        if c is not None and not (c == "rsp" and mn in STACK_OPS):
            data_srcs.append(c)
    for r in ins.regs_write:
        c = canon(ins.reg_name(r))
        if c is not None and not (c == "rsp" and mn in STACK_OPS):
            dsts.append(c)
    if partial_dst:
        data_srcs.extend(d for d in dsts if d != FLAGS)
    f, key, unknown = _lookup(profile, mn, sig, vec)
    m = InsnModel(address=ins.address, text=f"{ins.mnemonic} {ins.op_str}".strip(), key=key,
                  mops=float(f.get("mops", 1.0)), data_srcs=tuple(dict.fromkeys(data_srcs)),
                  addr_srcs=tuple(dict.fromkeys(addr_srcs)), dsts=tuple(dict.fromkeys(dsts)),
                  load=load, store=store, vector=vec, unknown_form=unknown)
    core = profile.core
    lat_load = float(core.get("vec_load_latency" if vec else "load_latency", 4))
    if mem_op is not None and (load or store) and not (prefix_rep or mn.startswith(("movs", "stos", "lods"))):
        m.mem = _memref(ins, mem_op, vec, load, store, mn in MOVES)
        if load and m.mem.index is not None and m.mem.scale > 1:
            # A scaled index costs the address generation a cycle [AGNER][SOG 2.11]
            lat_load += float(core.get("load_scaled_index_extra", 0))
    _stack_engine(ins, m, mn, ops)
    # Branch kind.
    grp = set(ins.groups)
    if cs_x86.X86_GRP_CALL in grp:
        m.branch = "call"
    elif cs_x86.X86_GRP_RET in grp:
        m.branch = "ret"
    elif cs_x86.X86_GRP_JUMP in grp or cs_x86.X86_GRP_BRANCH_RELATIVE in grp:
        m.branch = "jmp" if mn == "jmp" else "cond"
    m.size = ins.size
    if m.branch in ("cond", "jmp", "call") and len(ops) == 1 and ops[0].type == cs_x86.X86_OP_IMM:
        m.target = ops[0].imm
    # Rep strings: the scoreboard adds start-up and per-element costs.
    if prefix_rep and mn.startswith(("movs", "stos", "lods", "scas", "cmps")):
        m.rep = mn
        m.rep_elem = {"b": 1, "w": 2, "d": 4, "q": 8}.get(mn[-1], 1)
        m.uops = [Uop(_ports(f), float(f.get("lat", 1.0)))]
        return m
    # Zero idioms and eliminated moves.
    if mn in ZERO_IDIOMS and len(ops) == 2 and all(o.type == cs_x86.X86_OP_REG for o in ops) \
            and ops[0].reg == ops[1].reg:
        m.zero_idiom = True
        m.data_srcs = ()
        m.uops = [Uop(None, 0.0)]
        return m
    if mn in ELIMINABLE and sig in ("r,r", "x,x") and not partial_dst and \
            float(core.get("move_elimination", 1)) > 0:
        m.eliminated = True
        m.uops = [Uop(None, 0.0)]
        return m
    uops: list[Uop] = []
    if load:
        uops.append(Uop(str(core.get("load_ports", "LD")), lat_load, "load"))
    pure_move = mn in MOVES or mn in ("push", "pop")
    if mn in ("push", "call") or (store and pure_move):
        pass
    if not (pure_move and (load or store)):
        if m.branch is None or m.branch in ("cond", "jmp"):
            uops.append(Uop(_ports(f), float(f.get("lat", 1.0)), "branch" if m.branch else "op"))
        else:       # call / ret: the branch part
            uops.append(Uop(str(core.get("branch_ports", "BR")), 1.0, "branch"))
    if store:
        uops.append(Uop(str(core.get("store_ports", "ST")), 0.0, "store"))
        if vec:
            uops.append(Uop(str(core.get("vec_store_data_ports", "VST")), 0.0, "store"))
    if mn == "push" or mn == "call":
        m.store = True
        uops.append(Uop(str(core.get("store_ports", "ST")), 0.0, "store"))
    if mn == "pop" or mn == "ret":
        m.load = True
        uops.insert(0, Uop(str(core.get("load_ports", "LD")), lat_load, "load"))
    m.uops = uops or [Uop(None, 0.0)]
    return m


def fuse_pairs(models: list[InsnModel], profile: Profile) -> None:
    """Branch fusion: a flag-setting cmp/test/ALU op followed by a jcc dispatches as
    one macro-op and executes on a branch pipe (AMD Family 19h SOG, branch fusion)."""
    if float(profile.core.get("branch_fusion", 1)) <= 0:
        return
    for a, b in zip(models, models[1:]):
        if b.branch == "cond" and not a.load and not a.store and a.text.split(" ", 1)[0] in FUSIBLE \
                and not a.zero_idiom:
            b.fused = True
            b.mops = 0.0
            # the pair executes as one op on a branch-capable ALU
            a.uops = [Uop(str(profile.core.get("branch_ports", "BR")), u.lat, u.kind) if u.kind == "op" else u
                      for u in a.uops]
            b.uops = []
