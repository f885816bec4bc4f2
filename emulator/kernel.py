"""The emulated kernel's shared state: what a parent and its forked child
have in common.  Physical memory, the entropy source behind getrandom(2),
the vvar data page and the vDSO image itself belong to the kernel, not to a
process; a Machine (one process) points at one Kernel."""
from __future__ import annotations

import random
import struct

from emulator.cycles.profile import Profile, load_profile
from mm.physmem import PhysMem
from vdso.abi import RNG_GENERATION, RNG_IS_READY
from vdso.image import PAGE_SIZE, VdsoImage

SENTINEL_PAGE = 0x7FFF_F000_0000   # return address for calls: a page holding `hlt`


class Kernel:
    def __init__(self, image: VdsoImage, *, memory_pages: int = 4096, swap_pages: int = 0,
                 seed: int = 0, profile: Profile | None = None, overcommit_memory: int = 0,
                 overcommit_ratio: int = 50):
        self.image = image
        self.phys = PhysMem(memory_pages, swap_pages=swap_pages, overcommit_memory=overcommit_memory,
                            overcommit_ratio=overcommit_ratio)
        self.seed = seed
        # Deterministic entropy: the same seed gives the same bytes in the same order.
        self._entropy = random.Random(seed)
        self.profile = profile or load_profile()
        # Special mappings ([vdso], [vvar], our return sentinel): kernel pages, never
        # faulted, never reclaimed; shared by every process of this kernel.
        self.text = bytearray(image.text)
        self.vvar_start = image.vvar_start
        self.vvar = bytearray(image.base - self.vvar_start)
        self.sentinel = bytearray(b"\xf4" * PAGE_SIZE)
        self._rng_off = image.rng_data_addr - self.vvar_start
        self.generation = 1          # the kernel's generation is never 0
        self.is_ready = True
        self._write_rng()

    # --- vdso_rng_data -------------------------------------------------------
    def _write_rng(self) -> None:
        struct.pack_into("<Q", self.vvar, self._rng_off + RNG_GENERATION, self.generation)
        self.vvar[self._rng_off + RNG_IS_READY] = 1 if self.is_ready else 0

    def reseed(self) -> None:
        """crng_reseed(): bump the generation the vDSO compares against."""
        self.generation += 1
        if self.generation == 0:
            self.generation = 1
        self._write_rng()

    def set_ready(self, ready: bool) -> None:
        self.is_ready = ready
        self._write_rng()

    # --- snapshots -------------------------------------------------------------
    def save_state(self) -> dict:
        """The kernel's mutable state (for Machine.snapshot): rng data, the
        entropy stream position and allocation-failure injection."""
        return {"generation": self.generation, "is_ready": self.is_ready,
                "entropy": self._entropy.getstate(), "fail": self.phys.fail_state()}

    def restore_state(self, st: dict) -> None:
        self.generation = st["generation"]
        self.is_ready = st["is_ready"]
        self._entropy.setstate(st["entropy"])
        self.phys.set_fail_state(st["fail"])
        self._write_rng()

    # --- entropy ---------------------------------------------------------------
    def entropy_bytes(self, n: int) -> bytes:
        return self._entropy.randbytes(n) if n else b""

    def special_mappings(self) -> list[tuple[str, int, bytearray, str]]:
        """(name, start, backing, perms 'r'/'rx') for every kernel-provided mapping."""
        return [
            ("[vvar]", self.vvar_start, self.vvar, "r"),
            ("[vdso]", self.image.base, self.text, "rx"),
            ("[faultpath-ret]", SENTINEL_PAGE, self.sentinel, "rx"),
        ]
