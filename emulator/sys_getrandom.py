"""getrandom(2) (drivers/char/random.c) and the v14 series' vgetrandom_alloc."""
from __future__ import annotations

import struct
from typing import TYPE_CHECKING

from emulator.records import CallContext, SyscallRecord
from emulator.syscall_abi import EFAULT, EINVAL
from emulator.usercopy import CopyResult, copy_from_user, copy_to_user
from mm import flags as F
from mm.flags import PAGE_SIZE
from vdso.abi import GRND_INSECURE, GRND_RANDOM, GRND_VALID, MAX_RW_COUNT, STATE_SIZE

if TYPE_CHECKING:
    from emulator.task import Task


GETRANDOM_CHUNK = 1 << 16


def sys_getrandom(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    buf, count, flags = rec.args[0], rec.args[1], rec.args[2] & 0xFFFFFFFF
    # drivers/char/random.c: unknown flags, or RANDOM together with INSECURE -> -EINVAL
    if flags & ~GRND_VALID or (flags & (GRND_RANDOM | GRND_INSECURE)) == (GRND_RANDOM | GRND_INSECURE):
        return -EINVAL
    count = min(count, MAX_RW_COUNT)
    if count == 0:
        return 0
    # A not-ready crng would block (or give -EAGAIN with GRND_NONBLOCK); ours is
    # always seeded, `not-ready` only clears the vDSO's is_ready flag.
    # get_random_bytes_user() generates and copies block by block and stops at
    # the first fault: a huge count costs what is copied, not what was asked.
    # (Chunks are whole 32-bit words, so the seeded stream is the same as one
    # draw of the whole count.)
    generated = bytearray()
    copied = 0
    res = None
    while copied < count:
        data = m.kernel.entropy_bytes(min(GETRANDOM_CHUNK, count - copied))
        generated += data
        res = copy_to_user(m, ctx, buf + copied, data, rec.rip, "getrandom:copy_to_user")
        copied += res.copied
        if res.copied < len(data) or res.livelock:
            break
    rec.generated = bytes(generated)
    rec.data_addr = buf
    rec.data = bytes(generated[:copied])
    res = CopyResult(copied, livelock=res.livelock)
    if res.livelock:
        rec.outcome = "livelock"
        m.finish(ctx, "livelock", f"kernel copy livelock: getrandom's copy_to_user into {buf + res.copied:#x} "
                                  f"refaulted more than {m.livelock_limit} times")
        return res.copied or -EFAULT
    if res.copied == 0:
        return -EFAULT
    return res.copied


def vgetrandom_state_size() -> int:
    """v14: each state is rounded up to a power of two so none straddles a page."""
    size = 1
    while size < STATE_SIZE:
        size <<= 1
    return size


def sys_vgetrandom_alloc(m: "Task", ctx: CallContext, rec: SyscallRecord) -> int:
    """v14: vgetrandom_alloc(unsigned *num, unsigned *size_per_each, unsigned long addr, unsigned flags)."""
    num_p, size_p, addr, flags = rec.args[0], rec.args[1], rec.args[2], rec.args[3] & 0xFFFFFFFF
    if addr or flags:
        return -EINVAL
    raw = copy_from_user(m, num_p, 4)
    raw_size = copy_from_user(m, size_p, 4)
    if len(raw) != 4 or len(raw_size) != 4:
        return -EFAULT
    if struct.unpack("<I", raw_size)[0] != 0:
        return -EINVAL
    hint = struct.unpack("<I", raw)[0]
    state_size = vgetrandom_state_size()
    per_page = PAGE_SIZE // state_size
    num = max(1, hint)
    if num > (1 << 20):
        return -EINVAL
    pages = (num + per_page - 1) // per_page
    length = pages * PAGE_SIZE
    got = length // state_size
    wb = copy_to_user(m, ctx, num_p, struct.pack("<I", got), rec.rip, "vgetrandom_alloc:put_user")
    wb2 = copy_to_user(m, ctx, size_p, struct.pack("<I", state_size), rec.rip, "vgetrandom_alloc:put_user")
    if wb.copied != 4 or wb2.copied != 4:
        return -EFAULT
    # v14: VM_DROPPABLE | VM_NORESERVE | VM_WIPEONFORK | VM_DONTDUMP, exactly the
    # flags MAP_DROPPABLE later came to imply.
    r = m.mm.mmap(0, length, F.PROT_READ | F.PROT_WRITE, F.MAP_DROPPABLE | F.MAP_ANONYMOUS, -1, 0)
    if r < 0:
        return r
    m.sync_range(r, length)
    return r
