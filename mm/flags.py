"""Constants of the Linux memory-management ABI, with Linux's values (x86-64).

Sources: include/uapi/asm-generic/mman-common.h and mman.h (PROT_*, MAP_*, MADV_*,
MCL_*), include/linux/mm.h (VM_*, FAULT_FLAG_*), include/linux/mm_types.h
(VM_FAULT_*), include/uapi/asm-generic/errno-base.h.
"""

PAGE_SHIFT = 12
PAGE_SIZE = 1 << PAGE_SHIFT
PAGE_MASK = ~(PAGE_SIZE - 1)

# x86-64 with 4-level paging: TASK_SIZE_MAX = (1 << 47) - PAGE_SIZE.
TASK_SIZE = (1 << 47) - PAGE_SIZE
# Default of /proc/sys/vm/mmap_min_addr on distro kernels.
MMAP_MIN_ADDR = 0x10000

# --- errno -----------------------------------------------------------------
EPERM = 1
ENOENT = 2
EBADF = 9
EAGAIN = 11
ENOMEM = 12
EACCES = 13
EFAULT = 14
EEXIST = 17
ENODEV = 19
EINVAL = 22
EOVERFLOW = 75
EOPNOTSUPP = 95

# --- PROT_* ----------------------------------------------------------------
PROT_NONE = 0x0
PROT_READ = 0x1
PROT_WRITE = 0x2
PROT_EXEC = 0x4
PROT_SEM = 0x8
PROT_GROWSDOWN = 0x01000000
PROT_GROWSUP = 0x02000000

# --- MAP_* -----------------------------------------------------------------
MAP_SHARED = 0x01
MAP_PRIVATE = 0x02
MAP_SHARED_VALIDATE = 0x03
MAP_DROPPABLE = 0x08          # 6.11: a mapping *type* inside MAP_TYPE, not an OR-able flag
MAP_TYPE = 0x0F
MAP_FIXED = 0x10
MAP_ANONYMOUS = 0x20
MAP_GROWSDOWN = 0x0100
MAP_DENYWRITE = 0x0800
MAP_EXECUTABLE = 0x1000
MAP_LOCKED = 0x2000
MAP_NORESERVE = 0x4000
MAP_POPULATE = 0x8000
MAP_NONBLOCK = 0x10000
MAP_STACK = 0x20000
MAP_HUGETLB = 0x40000
MAP_SYNC = 0x80000
MAP_FIXED_NOREPLACE = 0x100000
MAP_UNINITIALIZED = 0x4000000

# --- MADV_* ----------------------------------------------------------------
MADV_NORMAL = 0
MADV_RANDOM = 1
MADV_SEQUENTIAL = 2
MADV_WILLNEED = 3
MADV_DONTNEED = 4
MADV_FREE = 8
MADV_REMOVE = 9
MADV_DONTFORK = 10
MADV_DOFORK = 11
MADV_MERGEABLE = 12
MADV_UNMERGEABLE = 13
MADV_HUGEPAGE = 14
MADV_NOHUGEPAGE = 15
MADV_DONTDUMP = 16
MADV_DODUMP = 17
MADV_WIPEONFORK = 18
MADV_KEEPONFORK = 19
MADV_COLD = 20
MADV_PAGEOUT = 21
MADV_POPULATE_READ = 22
MADV_POPULATE_WRITE = 23
MADV_DONTNEED_LOCKED = 24
MADV_COLLAPSE = 25
MADV_HWPOISON = 100
MADV_SOFT_OFFLINE = 101
MADV_GUARD_INSTALL = 102      # 6.13: guard regions (PTE markers that fault with SIGSEGV)
MADV_GUARD_REMOVE = 103

# --- mremap ----------------------------------------------------------------
MREMAP_MAYMOVE = 1
MREMAP_FIXED = 2
MREMAP_DONTUNMAP = 4          # 5.7 (any private or shared-anonymous mapping since 5.13)

# --- mlock -----------------------------------------------------------------
MCL_CURRENT = 1
MCL_FUTURE = 2
MCL_ONFAULT = 4
MLOCK_ONFAULT = 0x01          # mlock2() flag

# --- VM_* (vm_flags), include/linux/mm.h as of 6.11, 64-bit ------------------
VM_NONE = 0x00000000
VM_READ = 0x00000001
VM_WRITE = 0x00000002
VM_EXEC = 0x00000004
VM_SHARED = 0x00000008
VM_MAYREAD = 0x00000010
VM_MAYWRITE = 0x00000020
VM_MAYEXEC = 0x00000040
VM_MAYSHARE = 0x00000080
VM_GROWSDOWN = 0x00000100
VM_UFFD_MISSING = 0x00000200
VM_PFNMAP = 0x00000400
# 6.18: "a guard region may exist in this VMA". Set by MADV_GUARD_INSTALL on the
# whole VMA (no split), never cleared by MADV_GUARD_REMOVE, sticky across merges,
# and it makes fork copy the page tables. smaps shows "gu". (0x800 was VM_DENYWRITE
# until 5.15.)
VM_MAYBE_GUARD = 0x00000800
VM_UFFD_WP = 0x00001000
VM_LOCKED = 0x00002000
VM_IO = 0x00004000
VM_SEQ_READ = 0x00008000
VM_RAND_READ = 0x00010000
VM_DONTCOPY = 0x00020000
VM_DONTEXPAND = 0x00040000
VM_LOCKONFAULT = 0x00080000
VM_ACCOUNT = 0x00100000
VM_NORESERVE = 0x00200000
VM_HUGETLB = 0x00400000
VM_SYNC = 0x00800000
VM_ARCH_1 = 0x01000000
VM_WIPEONFORK = 0x02000000
VM_DONTDUMP = 0x04000000
# The kernel defines VM_SOFTDIRTY as 0 without CONFIG_MEM_SOFT_DIRTY; whether an mm
# sets it is a KernelConfig switch (mm/kconfig.py), the bit's value stays.
VM_SOFTDIRTY = 0x08000000
VM_MIXEDMAP = 0x10000000
VM_HUGEPAGE = 0x20000000
VM_NOHUGEPAGE = 0x40000000
VM_MERGEABLE = 0x80000000
VM_HIGH_ARCH_BIT_0 = 32
VM_PKEY_BIT0 = 1 << 32
VM_PKEY_BIT1 = 1 << 33
VM_PKEY_BIT2 = 1 << 34
VM_PKEY_BIT3 = 1 << 35
VM_SHADOW_STACK = 1 << 37     # x86: VM_HIGH_ARCH_5
VM_UFFD_MINOR = 1 << 38       # VM_HIGH_ARCH_6 (CONFIG_HAVE_ARCH_USERFAULTFD_MINOR)
VM_DROPPABLE = 1 << 40        # 6.11: VM_HIGH_ARCH_8 under CONFIG_64BIT
VM_SEALED = 1 << 63           # 6.10+: mseal()

VM_ACCESS_FLAGS = VM_READ | VM_WRITE | VM_EXEC
VM_LOCKED_MASK = VM_LOCKED | VM_LOCKONFAULT
VM_SPECIAL = VM_IO | VM_DONTEXPAND | VM_PFNMAP | VM_MIXEDMAP
VM_STACK = VM_GROWSDOWN       # x86: stacks grow down
# Only these survive into a child's mm->def_flags (kernel/fork.c mm_init).
VM_INIT_DEF_MASK = VM_NOHUGEPAGE
# Flags that do not prevent a merge and that the merged VMA keeps if either side
# had them (include/linux/mm.h VM_STICKY, 6.18).
VM_STICKY = VM_SOFTDIRTY | VM_MAYBE_GUARD
# Flags that make fork copy a VMA's page tables even without an anon_vma.
VM_COPY_ON_FORK = VM_MAYBE_GUARD

# --- VM_FAULT_* (enum vm_fault_reason, include/linux/mm_types.h) -------------
VM_FAULT_OOM = 0x000001
VM_FAULT_SIGBUS = 0x000002
VM_FAULT_MAJOR = 0x000004
VM_FAULT_HWPOISON = 0x000010
VM_FAULT_HWPOISON_LARGE = 0x000020
VM_FAULT_SIGSEGV = 0x000040
VM_FAULT_NOPAGE = 0x000100
VM_FAULT_LOCKED = 0x000200
VM_FAULT_RETRY = 0x000400
VM_FAULT_FALLBACK = 0x000800
VM_FAULT_DONE_COW = 0x001000
VM_FAULT_NEEDDSYNC = 0x002000
VM_FAULT_COMPLETED = 0x004000
# Not in mainline: the value the v13/v14 series ("x86: mm: Skip faulting
# instruction for VM_DROPPABLE faults", Dec 2022) gave it, the first free bit
# after VM_FAULT_COMPLETED and below VM_FAULT_HINDEX_MASK.
VM_FAULT_SKIP_INSN = 0x008000
VM_FAULT_HINDEX_MASK = 0x0F0000
VM_FAULT_ERROR = (VM_FAULT_OOM | VM_FAULT_SIGBUS | VM_FAULT_SIGSEGV | VM_FAULT_HWPOISON
                  | VM_FAULT_HWPOISON_LARGE | VM_FAULT_FALLBACK)

VM_FAULT_NAMES = {
    VM_FAULT_OOM: "OOM", VM_FAULT_SIGBUS: "SIGBUS", VM_FAULT_MAJOR: "MAJOR",
    VM_FAULT_HWPOISON: "HWPOISON", VM_FAULT_HWPOISON_LARGE: "HWPOISON_LARGE",
    VM_FAULT_SIGSEGV: "SIGSEGV", VM_FAULT_NOPAGE: "NOPAGE", VM_FAULT_LOCKED: "LOCKED",
    VM_FAULT_RETRY: "RETRY", VM_FAULT_FALLBACK: "FALLBACK", VM_FAULT_DONE_COW: "DONE_COW",
    VM_FAULT_NEEDDSYNC: "NEEDDSYNC", VM_FAULT_COMPLETED: "COMPLETED",
    VM_FAULT_SKIP_INSN: "SKIP_INSN",
}


def vm_fault_str(bits: int) -> str:
    """'OOM|MAJOR' style rendering of VM_FAULT_* bits ('0' for none)."""
    names = [n for b, n in VM_FAULT_NAMES.items() if bits & b]
    return "|".join(names) if names else "0"


# Two-letter /proc/PID/smaps VmFlags mnemonics (fs/proc/task_mmu.c), printed in
# bit order.
VM_FLAG_MNEMONICS: dict[int, str] = {
    VM_READ: "rd", VM_WRITE: "wr", VM_EXEC: "ex", VM_SHARED: "sh",
    VM_MAYREAD: "mr", VM_MAYWRITE: "mw", VM_MAYEXEC: "me", VM_MAYSHARE: "ms",
    VM_GROWSDOWN: "gd", VM_UFFD_MISSING: "um", VM_PFNMAP: "pf", VM_MAYBE_GUARD: "gu",
    VM_UFFD_WP: "uw", VM_LOCKED: "lo", VM_IO: "io", VM_SEQ_READ: "sr", VM_RAND_READ: "rr",
    VM_DONTCOPY: "dc", VM_DONTEXPAND: "de", VM_LOCKONFAULT: "lf", VM_ACCOUNT: "ac",
    VM_NORESERVE: "nr", VM_HUGETLB: "ht", VM_SYNC: "sf", VM_ARCH_1: "ar",
    VM_WIPEONFORK: "wf", VM_DONTDUMP: "dd", VM_SOFTDIRTY: "sd", VM_MIXEDMAP: "mm",
    VM_HUGEPAGE: "hg", VM_NOHUGEPAGE: "nh", VM_MERGEABLE: "mg",
    VM_SHADOW_STACK: "ss", VM_UFFD_MINOR: "ui", VM_DROPPABLE: "dp", VM_SEALED: "sl",
}
_MNEMONICS_BY_BIT = sorted(VM_FLAG_MNEMONICS.items())


def vm_flags_str(vm_flags: int) -> str:
    """'rd wr mr mw me ac' for vm_flags, as smaps prints them."""
    return " ".join(m for bit, m in _MNEMONICS_BY_BIT if vm_flags & bit)


# --- FAULT_FLAG_* (enum fault_flag, include/linux/mm_types.h) ----------------
FAULT_FLAG_WRITE = 1 << 0
FAULT_FLAG_MKWRITE = 1 << 1
FAULT_FLAG_ALLOW_RETRY = 1 << 2
FAULT_FLAG_RETRY_NOWAIT = 1 << 3
FAULT_FLAG_KILLABLE = 1 << 4
FAULT_FLAG_TRIED = 1 << 5
FAULT_FLAG_USER = 1 << 6
FAULT_FLAG_REMOTE = 1 << 7
FAULT_FLAG_INSTRUCTION = 1 << 8
FAULT_FLAG_INTERRUPTIBLE = 1 << 9
FAULT_FLAG_UNSHARE = 1 << 10
FAULT_FLAG_ORIG_PTE_VALID = 1 << 11
FAULT_FLAG_VMA_LOCK = 1 << 12

# --- overcommit (Documentation/mm/overcommit-accounting.rst) -----------------
OVERCOMMIT_GUESS = 0
OVERCOMMIT_ALWAYS = 1
OVERCOMMIT_NEVER = 2

# --- reclaim -----------------------------------------------------------------
SWAP_CLUSTER_MAX = 32         # pages reclaimed per shrink pass (include/linux/swap.h)

# Droppable-OOM policies (see DESIGN.md "OOM on a droppable VMA").
DROPPABLE_OOM_SKIP = "skip"   # v13/v14: VM_FAULT_OOM -> VM_FAULT_SKIP_INSN
DROPPABLE_OOM_RETRY = "retry"  # 6.11: ret &= ~VM_FAULT_OOM, the access re-executes
DROPPABLE_OOM_POLICIES = (DROPPABLE_OOM_SKIP, DROPPABLE_OOM_RETRY)


def page_align(n: int) -> int:
    """PAGE_ALIGN(): round up to a page boundary."""
    return (n + PAGE_SIZE - 1) & PAGE_MASK


def calc_vm_prot_bits(prot: int) -> int:
    """PROT_* -> VM_READ/VM_WRITE/VM_EXEC (include/linux/mman.h)."""
    return ((VM_READ if prot & PROT_READ else 0) | (VM_WRITE if prot & PROT_WRITE else 0)
            | (VM_EXEC if prot & PROT_EXEC else 0))


def calc_vm_flag_bits(flags: int) -> int:
    """MAP_* -> VM_* (include/linux/mman.h; MAP_STACK -> VM_NOHUGEPAGE since 6.7)."""
    return ((VM_GROWSDOWN if flags & MAP_GROWSDOWN else 0)
            | (VM_LOCKED if flags & MAP_LOCKED else 0)
            | (VM_SYNC if flags & MAP_SYNC else 0)
            | (VM_NOHUGEPAGE if flags & MAP_STACK else 0))
