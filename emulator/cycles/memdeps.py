"""Memory dependencies by address: which load reads what an earlier store wrote.

The scoreboard (emulator/cycles/scoreboard.py) follows registers; code that
keeps values in memory (gcc -O0 keeps every variable in a stack slot, -O2
spills when it runs out of registers) carries its chains through stores and
loads instead.  This module matches them by address, statically, per block:

* an address is its registers, each at the version it has at that point of
  the block (a register written in between makes it another address), plus
  the displacement; rsp is followed through push/pop, call/ret and
  `add/sub rsp, imm` (the stack engine), so [rsp+8] after a push is the slot
  [rsp] was before; a register popped from where it was pushed is its old
  version again (an -O0 callee's push rbp / mov rbp, rsp / pop rbp leaves
  the caller's [rbp - 8] the slot it was);
* a call stores its return address and the ret loads it: the RAS predicts
  the return, but the load is served by the call's store in flight;
* a load that overlaps an earlier store of the block gets that store's data,
  after the forwarding latency the profile gives for the case (memory
  renaming, ordinary forwarding, vector forwarding, or a failed forward);
  every store read in flight takes a slot of a one-a-cycle resource
  (`forwards`, the profile's MEMFILE group), renamed or forwarded alike;
* in a block that loops on itself, a store whose address registers the block
  never writes is loop-carried: the next execution of the block reads it
  through a memory node `mem:<k>`, which the scoreboard's recurrence (Karp)
  treats like a register.  That is how a counter kept in [rbp-8] forms a
  chain across loop iterations.

Different registers are taken for different addresses, as the CPU's memory
dependence predictor assumes until it learns otherwise.
"""
from __future__ import annotations

from dataclasses import dataclass, field

from emulator.cycles.profile import Profile


@dataclass(frozen=True)
class MemRef:
    """One memory access of an instruction."""
    base: str | None        # canonical register ("rsp", "rdi"...), "rip" for RIP-relative, None
    index: str | None
    scale: int
    disp: int               # absolute address for RIP-relative accesses
    size: int               # bytes
    vector: bool            # the data side is an XMM register
    load: bool
    store: bool
    renamable: bool = True  # a move or read-modify-write; the memory source of an ALU op is not


@dataclass
class _Store:
    region: tuple
    lo: int
    hi: int                 # exclusive
    ref: MemRef
    data: dict[str, float]  # latest path from each entry register to the stored data
    t: float                # time the data is ready, all inputs at 0
    carried: bool = False   # its address is the same in the next execution of the block
    insn: int = -1          # index of the storing instruction in the block
    value: tuple | None = None   # (register, version) it stored whole (push rbp), for a pop to restore


@dataclass
class MemWalk:
    """The memory side of one walk over a block's instructions."""
    profile: Profile
    written: frozenset[str]                 # registers the block writes (other than rsp via the stack engine)
    rsp_net: int | None                     # the block's net rsp change, None if unknown
    ver: dict[str, int] = field(default_factory=dict)
    delta: int = 0                          # rsp offset from the block's entry
    rsp_known: bool = True
    stores: list[_Store] = field(default_factory=list)
    carried: list[_Store] = field(default_factory=list)   # from a first pass: the block's carried stores
    forwarded: int = 0                      # loads that read an in-flight store (this block or the last run)
    rmw_forwards: int = 0                   # of them: a read-modify-write's load, or any load of one's store
    links: dict[int, list] = field(default_factory=dict)  # load insn -> [(store insn, from the last run, latency)]
    fails: int = 0                          # loads whose forward fails: each stalls until the stores commit
    fwd_stores: set = field(default_factory=set)   # plain stores read in flight: (store insn, from the last run)
    loaded: tuple | None = None             # (register, version) the last load read back whole, if any
    _fresh: int = 0

    @property
    def forwards(self) -> int:
        """Slots of the one-a-cycle forwarding resource the walk's loads take."""
        return self.rmw_forwards + len(self.fwd_stores)

    # --- addresses ------------------------------------------------------------------
    def _region(self, ref: MemRef) -> tuple[tuple, int]:
        if ref.base == "rip":
            return ("abs",), ref.disp
        base_ver = self.ver.get(ref.base, 0) if ref.base else 0
        idx_ver = self.ver.get(ref.index, 0) if ref.index else 0
        lo = ref.disp
        if ref.base == "rsp" and self.rsp_known:
            lo += self.delta
            base_ver = 0
        return (ref.base, base_ver, ref.index, idx_ver, ref.scale), lo

    def _invariant(self, ref: MemRef) -> bool:
        """The address is the same in the next execution of the block."""
        for r in (ref.base, ref.index):
            if r is None or r == "rip":
                continue
            if r == "rsp":
                if not self.rsp_known or self.rsp_net != 0 or self.ver.get("rsp", 0):
                    return False
            elif r in self.written:
                return False
        return True

    # --- the walk -----------------------------------------------------------------------
    def wrote(self, regs, rsp_delta: int | None, restores: bool = False) -> None:
        """After an instruction: registers it wrote, and how it moved rsp (None: not at all
        through the stack engine).  restores: the instruction loaded its register back
        from the stack (pop): a register popped from where it was pushed is the same
        value again, so [rbp - 8] after a call's push rbp / pop rbp is the slot it was."""
        if rsp_delta is not None:
            self.delta += rsp_delta
        for r in regs:
            if r == "rsp" and rsp_delta is not None:
                continue
            if r == "rsp":
                self.rsp_known = False
            if restores and self.loaded is not None and self.loaded[0] == r:
                self.ver[r] = self.loaded[1]
                continue
            self._fresh += 1
            self.ver[r] = self._fresh

    def final_versions(self) -> dict[str, int]:
        return dict(self.ver)

    def load(self, ref: MemRef, addr: dict[str, float], t_addr: float, load_lat: float, insn: int = -1
             ) -> tuple[dict[str, float], float]:
        """(dependency vector, time) of a load's result."""
        region, lo = self._region(ref)
        hi = lo + ref.size
        self.loaded = None
        vec = {k: v + load_lat for k, v in addr.items()}
        t = t_addr + load_lat
        hits = [s for s in self.stores if s.region == region and s.lo < hi and lo < s.hi]
        if not hits and self._invariant(ref):
            hits = [s for s in self.carried if s.region == region and s.lo < hi and lo < s.hi]
            from_last_run = True
        else:
            from_last_run = False
        if not hits:
            return vec, t
        self.forwarded += 1
        last = hits[-1]
        if (ref.renamable and ref.store) or (last.ref.load and last.ref.store):
            # Forwarding through a read-modify-write goes one a cycle: the RMW's own
            # load, and any load of its store [MEAS: add qword [m],1 then k reloads of
            # [m]: 1.0, 1.6, 2.8, 3.4 cycles a step for k = 0..3; two RMW chains 2.0;
            # RMWs to fresh addresses 0.5 each].
            self.rmw_forwards += 1
        else:
            # Any other store read in flight takes a slot of the same one-a-cycle
            # resource, once however many loads read it [MEAS, independent pairs
            # of store and load: k pairs k cycles, renamed (mov qword/dword), forwarded
            # (a byte, a dword at +4, an ALU op's source, push/pop, XMM, movq) alike;
            # one store read by 1, 2, 3, 4 loads: 1.0, 1.1, 1.5, 2.0].
            self.fwd_stores.add((last.insn, from_last_run))
        # The youngest overlapping store supplies the bytes; only if it does not
        # hold all of them do the older ones matter (a failed forward).
        covers = last.lo <= lo and hi <= last.hi
        if covers and last.lo == lo and last.hi == hi and not from_last_run:
            self.loaded = last.value
        used = [last] if covers else hits
        lat = self.forward_latency(last, ref, lo, 1 if covers else len(hits))
        if not covers:
            self.fails += 1
        self.links[insn] = [(s.insn, from_last_run, lat) for s in used]
        for s in used:
            if from_last_run:
                node = f"mem:{self.carried.index(s)}"
                src, t_src = {node: 0.0}, 0.0
            else:
                src, t_src = s.data, s.t
            for k, v in src.items():
                if v + lat > vec.get(k, float("-inf")):
                    vec[k] = v + lat
            t = max(t, t_src + lat)
        return vec, t

    def forward_latency(self, s: _Store, ref: MemRef, lo: int, nstores: int) -> float:
        core = self.profile.core
        if nstores > 1 or lo < s.lo or lo + ref.size > s.hi:
            return float(core.get("store_forward_fail_latency", 19))
        if s.ref.vector or ref.vector:
            return float(core.get("vec_store_forward_latency", 9))
        rename_min = float(core.get("mem_rename_min_bytes", 4))
        if lo == s.lo and ref.renamable and ref.size >= rename_min and s.ref.size >= rename_min:
            return float(core.get("mem_rename_latency", 0))
        return float(core.get("store_forward_latency", 6))

    def store(self, ref: MemRef, data: dict[str, float], t: float, insn: int = -1, src: str | None = None) -> None:
        """A store of data; src: the register it stores whole, if it is one (push rbp)."""
        region, lo = self._region(ref)
        s = _Store(region, lo, lo + ref.size, ref, data, t, self._invariant(ref), insn,
                   (src, self.ver.get(src, 0)) if src is not None else None)
        self.stores.append(s)

    def carried_out(self) -> dict[str, dict[str, float]]:
        """Memory nodes at the block's exit: the data of every loop-carried store
        (numbered as in the first pass, which walks the same stores in the same order)."""
        if not self.carried:
            return {}
        return {f"mem:{k}": s.data for k, s in enumerate(s for s in self.stores if s.carried)}

    def carried_stores(self) -> list[_Store]:
        """After a first pass: the stores a next execution of the block can read."""
        return [s for s in self.stores if s.carried]
