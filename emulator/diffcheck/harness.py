"""The native harness: a few assembled routines that run one sequence on
this CPU and record where it ends.

  dc_entry    called from Python (ctypes): saves the callee-saved registers
              and the FPU state, loads the sequence's registers (GPRs, RFLAGS,
              xmm, mm, MXCSR, fs/gs base) from the in-block and jumps to it;
  dc_exit     where the sequence jumps at its end: stores every register in
              the out-block, then returns to Python (dc_epilogue);
  dc_handler  the SIGSEGV/SIGBUS/SIGILL/SIGFPE/SIGTRAP handler (SA_SIGINFO,
              on its own stack).  It logs signal, si_code, si_addr, rip, the
              page-fault error code and the trap number.  A page fault
              (trap 14, SEGV_ACCERR) on a data page the sequence marks
              resolvable is resolved: mprotect(PROT_READ) for a read,
              PROT_READ|PROT_WRITE for a write, and return, so the kernel
              restarts the instruction exactly as after a resolved page
              fault.  Anything else escapes: the registers of the interrupted
              context (the ucontext) go to the out-block and the context is
              redirected to dc_epilogue, so the sigreturn lands back in Python.

Python signal handlers cannot do this: they run long after the fault, on the
interpreter's own schedule.  The handler is plain code with no libc call: it
may run while the sequence has moved the fs base.

Layout of the data block (HARNESS_DATA) is the OFF_* table below; native.py
reads and writes it through ctypes.
"""
from __future__ import annotations

from emulator.diffcheck.layout import DATA_PAGES, GPRS, HARNESS_ADDR, HARNESS_DATA, PAGE

# Offsets in the data block.
OFF_IN_GPR = 0x000          # 16 x u64, GPRS order
OFF_IN_RFLAGS = 0x080
OFF_IN_RIP = 0x088
OFF_IN_FS = 0x090
OFF_IN_GS = 0x098
OFF_IN_MXCSR = 0x0A0        # u32
OFF_USE_FSGS = 0x0A8        # u64: 1 = load fs/gs bases (needs FSGSBASE)
OFF_IN_XMM = 0x100          # 16 x 16 bytes
OFF_IN_MM = 0x200           # 8 x u64
OFF_OUT_GPR = 0x300
OFF_OUT_RFLAGS = 0x380
OFF_OUT_RIP = 0x388
OFF_OUT_KIND = 0x390        # 0 reached dc_exit, 1 escaped on a signal, 2 too many faults
OFF_OUT_SIG = 0x398
OFF_OUT_CODE = 0x3A0
OFF_OUT_ADDR = 0x3A8
OFF_OUT_ERR = 0x3B0
OFF_OUT_TRAPNO = 0x3B8
OFF_OUT_MXCSR = 0x3C0       # u32
OFF_OUT_XMM = 0x400         # 16 x 16 bytes
OFF_SAVED_RSP = 0x500
OFF_SAVED_FS = 0x508
OFF_SAVED_GS = 0x510
OFF_DATA_LO = 0x518
OFF_FCOUNT = 0x520          # u32: entries in the fault log
OFF_RESOLVE = 0x540         # DATA_PAGES bytes: 1 = a page fault there is resolved
OFF_FXSAVE = 0x600          # 512 bytes, 16-aligned: Python's FPU state
OFF_FLOG = 0x800            # MAX_FAULTS x 48 bytes: sig, si_code, si_addr, rip, err, trapno
FLOG_ENTRY = 48
MAX_FAULTS = 64
OFF_STACK_TOP = 0x2000      # a small private stack for dc_exit and the epilogue
DATA_BLOCK_SIZE = 2 * PAGE

# struct ucontext (x86-64): uc_mcontext.gregs at 40, fpregs pointer after 23 gregs;
# gregs indices (REG_R8 ... REG_CR2, sys/ucontext.h) and the fxsave layout of
# struct _fpstate (mxcsr at 24, xmm at 160).
_UC_GREGS = 40
_GREG = {"r8": 0, "r9": 1, "r10": 2, "r11": 3, "r12": 4, "r13": 5, "r14": 6, "r15": 7, "rdi": 8,
         "rsi": 9, "rbp": 10, "rbx": 11, "rdx": 12, "rax": 13, "rcx": 14, "rsp": 15}
_REG_RIP, _REG_EFL, _REG_ERR, _REG_TRAPNO = 16, 17, 19, 20
_UC_FPREGS = _UC_GREGS + 23 * 8
_FP_MXCSR, _FP_XMM = 24, 160

SIGSEGV, SEGV_ACCERR, TRAP_PF = 11, 2, 14
SYS_MPROTECT = 10


def _g(name_or_idx) -> int:
    idx = _GREG[name_or_idx] if isinstance(name_or_idx, str) else name_or_idx
    return _UC_GREGS + 8 * idx


def harness_source() -> str:
    """The harness, Intel syntax for vdso.asm_build.assemble_snippet, at HARNESS_ADDR."""
    d = f"dc_start + {HARNESS_DATA - HARNESS_ADDR:#x}"
    L: list[str] = ["dc_start:"]
    a = L.append

    def at(off: int) -> str:
        return f"[rip + {d} + {off:#x}]"

    # ---- dc_entry ------------------------------------------------------------------
    a("dc_entry:")
    for r in ("rbx", "rbp", "r12", "r13", "r14", "r15"):
        a(f"push {r}")
    a(f"mov qword ptr {at(OFF_SAVED_RSP)}, rsp")
    a(f"fxsave {at(OFF_FXSAVE)}")
    a(f"cmp qword ptr {at(OFF_USE_FSGS)}, 0")
    a("je dc_entry_nofs")
    a("rdfsbase rax")
    a(f"mov qword ptr {at(OFF_SAVED_FS)}, rax")
    a("rdgsbase rax")
    a(f"mov qword ptr {at(OFF_SAVED_GS)}, rax")
    a(f"mov rax, qword ptr {at(OFF_IN_FS)}")
    a("wrfsbase rax")
    a(f"mov rax, qword ptr {at(OFF_IN_GS)}")
    a("wrgsbase rax")
    a("dc_entry_nofs:")
    # A clean x87 unit (as after exec), the sequence's mm values, then empty
    # tags again: the emulator starts from the same.
    a("fninit")
    for i in range(8):
        a(f"movq mm{i}, qword ptr {at(OFF_IN_MM + 8 * i)}")
    a("emms")
    a(f"ldmxcsr dword ptr {at(OFF_IN_MXCSR)}")
    for i in range(16):
        a(f"movdqu xmm{i}, xmmword ptr {at(OFF_IN_XMM + 16 * i)}")
    a(f"push qword ptr {at(OFF_IN_RFLAGS)}")
    a("popfq")
    for i, r in enumerate(GPRS):              # mov does not touch the flags
        if r != "rsp":
            a(f"mov {r}, qword ptr {at(OFF_IN_GPR + 8 * i)}")
    a(f"mov rsp, qword ptr {at(OFF_IN_GPR + 8 * GPRS.index('rsp'))}")
    a(f"jmp qword ptr {at(OFF_IN_RIP)}")

    # ---- dc_exit: the sequence's end -----------------------------------------------
    a("dc_exit:")
    for i, r in enumerate(GPRS):
        a(f"mov qword ptr {at(OFF_OUT_GPR + 8 * i)}, {r}")
    a(f"lea rsp, {at(OFF_STACK_TOP)}")      # the sequence's stack is data we compare
    a("pushfq")
    a(f"pop qword ptr {at(OFF_OUT_RFLAGS)}")
    for i in range(16):
        a(f"movdqu xmmword ptr {at(OFF_OUT_XMM + 16 * i)}, xmm{i}")
    a(f"stmxcsr dword ptr {at(OFF_OUT_MXCSR)}")
    a(f"mov qword ptr {at(OFF_OUT_KIND)}, 0")

    # ---- back to Python ----------------------------------------------------------------
    a("dc_epilogue:")
    a(f"mov rsp, qword ptr {at(OFF_SAVED_RSP)}")
    a(f"cmp qword ptr {at(OFF_USE_FSGS)}, 0")
    a("je dc_epi_nofs")
    a(f"mov rax, qword ptr {at(OFF_SAVED_FS)}")
    a("wrfsbase rax")
    a(f"mov rax, qword ptr {at(OFF_SAVED_GS)}")
    a("wrgsbase rax")
    a("dc_epi_nofs:")
    a(f"fxrstor {at(OFF_FXSAVE)}")
    a("cld")
    for r in ("r15", "r14", "r13", "r12", "rbp", "rbx"):
        a(f"pop {r}")
    a("ret")

    # ---- dc_handler(sig=rdi, info=rsi, uc=rdx) -----------------------------------------
    a("dc_handler:")
    a(f"mov eax, dword ptr {at(OFF_FCOUNT)}")
    a(f"cmp eax, {MAX_FAULTS}")
    a("jae dc_full")
    a(f"imul r9, rax, {FLOG_ENTRY}")
    a(f"lea r8, {at(OFF_FLOG)}")
    a("add r8, r9")
    a("mov qword ptr [r8], rdi")
    a("movsxd r9, dword ptr [rsi + 8]")
    a("mov qword ptr [r8 + 8], r9")
    a("mov r9, qword ptr [rsi + 16]")
    a("mov qword ptr [r8 + 16], r9")
    for k, g in enumerate((_REG_RIP, _REG_ERR, _REG_TRAPNO)):
        a(f"mov r9, qword ptr [rdx + {_g(g):#x}]")
        a(f"mov qword ptr [r8 + {24 + 8 * k}], r9")
    a(f"inc dword ptr {at(OFF_FCOUNT)}")
    # Resolvable: SIGSEGV, SEGV_ACCERR, a page fault, on a page marked resolvable.
    a(f"cmp edi, {SIGSEGV}")
    a("jne dc_escape")
    a(f"cmp dword ptr [rsi + 8], {SEGV_ACCERR}")
    a("jne dc_escape")
    a(f"cmp qword ptr [rdx + {_g(_REG_TRAPNO):#x}], {TRAP_PF}")
    a("jne dc_escape")
    a("mov r9, qword ptr [rsi + 16]")
    a(f"sub r9, qword ptr {at(OFF_DATA_LO)}")
    a("shr r9, 12")
    a(f"cmp r9, {DATA_PAGES}")
    a("jae dc_escape")
    a(f"lea r8, {at(OFF_RESOLVE)}")
    a("cmp byte ptr [r8 + r9], 0")
    a("je dc_escape")
    a("mov r12, rdi")                      # the syscall clobbers rcx, r11 and the argument registers
    a("mov r13, rsi")
    a("mov r14, rdx")
    a(f"mov edx, dword ptr [r14 + {_g(_REG_ERR):#x}]")
    a("and edx, 2")                        # X86_PF_WRITE -> PROT_READ|PROT_WRITE, else PROT_READ
    a("or edx, 1")
    a("mov rdi, qword ptr [rsi + 16]")
    a("and rdi, -4096")
    a(f"mov esi, {PAGE}")
    a(f"mov eax, {SYS_MPROTECT}")
    a("syscall")
    a("mov rdi, r12")
    a("mov rsi, r13")
    a("mov rdx, r14")
    a("test rax, rax")
    a("jne dc_escape")
    a("ret")                               # to the restorer: rt_sigreturn, the instruction restarts
    a("dc_full:")
    a("mov r10d, 2")
    a("jmp dc_escape_kind")
    a("dc_escape:")
    a("mov r10d, 1")
    a("dc_escape_kind:")
    a(f"mov qword ptr {at(OFF_OUT_KIND)}, r10")
    a(f"mov qword ptr {at(OFF_OUT_SIG)}, rdi")
    a("movsxd rax, dword ptr [rsi + 8]")
    a(f"mov qword ptr {at(OFF_OUT_CODE)}, rax")
    a("mov rax, qword ptr [rsi + 16]")
    a(f"mov qword ptr {at(OFF_OUT_ADDR)}, rax")
    for g, off in ((_REG_ERR, OFF_OUT_ERR), (_REG_TRAPNO, OFF_OUT_TRAPNO), (_REG_EFL, OFF_OUT_RFLAGS),
                   (_REG_RIP, OFF_OUT_RIP)):
        a(f"mov rax, qword ptr [rdx + {_g(g):#x}]")
        a(f"mov qword ptr {at(off)}, rax")
    for i, r in enumerate(GPRS):
        a(f"mov rax, qword ptr [rdx + {_g(r):#x}]")
        a(f"mov qword ptr {at(OFF_OUT_GPR + 8 * i)}, rax")
    a(f"mov rcx, qword ptr [rdx + {_UC_FPREGS:#x}]")
    a(f"mov eax, dword ptr [rcx + {_FP_MXCSR}]")
    a(f"mov dword ptr {at(OFF_OUT_MXCSR)}, eax")
    for i in range(16):
        a(f"movdqu xmm0, xmmword ptr [rcx + {_FP_XMM + 16 * i}]")
        a(f"movdqu xmmword ptr {at(OFF_OUT_XMM + 16 * i)}, xmm0")
    # Resume in dc_epilogue on the private stack, with TF, DF and AC clear.
    a("lea rax, [rip + dc_epilogue]")
    a(f"mov qword ptr [rdx + {_g(_REG_RIP):#x}], rax")
    a(f"lea rax, {at(OFF_STACK_TOP)}")
    a(f"mov qword ptr [rdx + {_g('rsp'):#x}], rax")
    a(f"and qword ptr [rdx + {_g(_REG_EFL):#x}], {~0x40500:#x}")
    a("ret")
    # Symbol offsets, read back by native.py (the same trick vdso.asm_build uses).
    for sym in SYMBOLS:
        a(f".quad {sym}")
    return "\n".join(L) + "\n"


SYMBOLS = ("dc_entry", "dc_exit", "dc_handler")
