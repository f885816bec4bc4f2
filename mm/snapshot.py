"""Cheap, reusable snapshots of an mm (a harness feature, not a kernel one).

snapshot(): every writable PTE is write-protected (recorded in drain_changes), then
the page table dict is copied: PTE objects are immutable, so the snapshot shares
them, and it takes a reference on every frame (snap_refs) and swap slot it points
to. No page is copied.

After a snapshot, the first write to a page faults into do_wp_page. If only
snapshots share the frame, the mm gets a private copy and the fault is reported as
a plain "reuse" (what the emulated kernel would have done): snapshots change no
fault outcome and no cycle count.

Budget: a frame only snapshots hold is *uncharged* (PhysMem.charged counts frames
mapped by a PTE), so snapshots never push the emulated process towards OOM or
reclaim. restore() maps the snapshot's frames again and charges them, which may
leave the budget overdrawn until the next allocation reclaims (and the same for
swap slots). restore() can be repeated any number of times; the snapshot's own PTEs
and frames are never modified.

Snapshot references are dropped by snap.release(), or when the snapshot object is
garbage collected.
"""

from __future__ import annotations

import weakref
from dataclasses import dataclass, field
from typing import TYPE_CHECKING, Any

from .flags import VM_ACCOUNT, VM_EXEC, VM_READ, VM_WRITE
from .page import PTE
from .vma import VMA
from .vma_tree import VmaTree

if TYPE_CHECKING:  # pragma: no cover
    from .mm_types import MmStruct, Zone


@dataclass(eq=False)
class MMSnapshot:
    mm_id: int
    vmas: list[VMA]
    ptes: dict[int, PTE] = field(repr=False)
    locked_vm: int
    def_flags: int
    committed: int
    _finalizer: Any = field(default=None, repr=False)

    @property
    def released(self) -> bool:
        return self._finalizer is None or not self._finalizer.alive

    def release(self) -> None:
        """Drop the snapshot's frame and swap references now."""
        if self._finalizer is not None:
            self._finalizer()

    @property
    def frames(self) -> list:
        return [p.frame for p in self.ptes.values() if p.frame is not None and not p.frame.is_zero]


def _release_refs(phys: "Zone", frames: list, slots: list[int]) -> None:
    for f in frames:
        phys.snap_put(f)
    for s in slots:
        phys.swap.snap_put(s)


def _committed(vmas) -> int:
    return sum(v.pages for v in vmas if v.vm_flags & VM_ACCOUNT)


def take_snapshot(mm: "MmStruct") -> MMSnapshot:
    phys = mm.phys
    for vpn, pte in mm.pt.items():
        if pte.frame is not None and pte.writable:
            mm.set_pte(vpn, PTE(pte.frame, False, snap_wp=True))
    ptes = mm.pt.copy()
    frames = [p.frame for p in ptes.values() if p.frame is not None and not p.frame.is_zero]
    slots = [p.swap_slot for p in ptes.values() if p.swap_slot is not None]
    for f in frames:
        phys.snap_get(f)
    for s in slots:
        phys.swap.snap_get(s)
    vmas = [v.copy() for v in mm.vma_tree]
    snap = MMSnapshot(mm.id, vmas, ptes, mm.locked_vm, mm.def_flags, _committed(vmas))
    snap._finalizer = weakref.finalize(snap, _release_refs, phys, frames, slots)
    return snap


_PROT = VM_READ | VM_WRITE | VM_EXEC


def restore_snapshot(mm: "MmStruct", snap: MMSnapshot) -> None:
    if snap.mm_id != mm.id:
        raise ValueError("snapshot belongs to another mm")
    if snap.released:
        raise ValueError("snapshot was released")
    old_vmas = mm.vma_tree.as_list()
    old_keys = {(v.start, v.end, v.vm_flags & _PROT) for v in old_vmas}
    new_keys = {(v.start, v.end, v.vm_flags & _PROT) for v in snap.vmas}
    for s, e, _ in old_keys ^ new_keys:
        mm.mark_changed(s, e)

    # Install the snapshot's PTEs first (frames gain a mapping before losing the
    # old one, so nothing is freed and re-allocated needlessly).
    pt = mm.pt
    for vpn, pte in snap.ptes.items():
        if pt.get(vpn) is not pte:
            mm.set_pte(vpn, pte)
    for vpn in [v for v in pt if v not in snap.ptes]:
        mm.set_pte(vpn, None)

    mm.phys.vm_committed_as += snap.committed - _committed(old_vmas)
    tree = VmaTree()
    for v in snap.vmas:
        tree.insert(v.copy())
    mm.vma_tree = tree
    mm.locked_vm = snap.locked_vm
    mm.def_flags = snap.def_flags
