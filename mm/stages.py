"""What handle_mm_fault returns: VM_FAULT_* bits plus the stages it went through,
so the emulator can trace each stage and charge its cycle cost."""

from __future__ import annotations

from dataclasses import dataclass, field

from .flags import (VM_FAULT_ERROR, VM_FAULT_OOM, VM_FAULT_SIGBUS, VM_FAULT_SIGSEGV,
                    VM_FAULT_SKIP_INSN, vm_fault_str)

# Every stage kind mm emits, in the order they can occur within one fault.
STAGE_KINDS = (
    "vma_check",       # handle_mm_fault's sanity checks on (vma, address, flags)
    "sigsegv",         # vma_check failed, or a guard-region PTE: VM_FAULT_SIGSEGV
    "sigbus",          # a file page wholly past the end of the file: VM_FAULT_SIGBUS
    "spurious",        # the PTE already allows the access (e.g. another fault fixed it)
    "map_zero_page",   # read fault on a none PTE: the shared zero page mapped read-only
    "swap_in",         # do_swap_page: bytes copied back from a swap slot
    "reclaim",         # the allocator had to reclaim: detail has dropped/evicted/swapped
    "alloc",           # a frame allocation attempt: detail["ok"], ["reason"] on failure
    "filemap_fault",   # the page-cache page of a file: detail["cached"] or read in (MAJOR)
    "zero_fill",       # the new frame was zeroed (first write, or write after zero page)
    "cow_copy",        # a private copy of a shared or page-cache frame (detail["file"])
    "reuse",           # do_wp_page made a sole-owner frame writable
    "oom",             # allocation failed in a non-droppable VMA: VM_FAULT_OOM
    "droppable_oom",   # allocation failed in a droppable VMA: per policy skip/retry
)


@dataclass
class FaultStage:
    kind: str
    detail: dict = field(default_factory=dict)


@dataclass
class FaultResult:
    """bits: VM_FAULT_* (0 = resolved; VM_FAULT_MAJOR may accompany a resolved swap-in).
    stages: what the handler did, in order."""

    bits: int
    stages: list[FaultStage] = field(default_factory=list)

    @property
    def error(self) -> bool:
        return bool(self.bits & VM_FAULT_ERROR)

    @property
    def oom(self) -> bool:
        return bool(self.bits & VM_FAULT_OOM)

    @property
    def sigsegv(self) -> bool:
        return bool(self.bits & VM_FAULT_SIGSEGV)

    @property
    def sigbus(self) -> bool:
        return bool(self.bits & VM_FAULT_SIGBUS)

    @property
    def skip_insn(self) -> bool:
        return bool(self.bits & VM_FAULT_SKIP_INSN)

    def kinds(self) -> list[str]:
        return [s.kind for s in self.stages]

    def __str__(self) -> str:
        return f"FaultResult({vm_fault_str(self.bits)}: {' > '.join(self.kinds())})"
