"""Assembly kernels of the validation set, each with one known bottleneck.

Every kernel is `u64 kernel(u64 n, u8 *buf)`: a loop run n times (n > 0)
over a 4 KiB buffer, using only caller-saved registers.  The comment on each
says what should bind it on a Zen 4 class core; the model is never told.
"""
from __future__ import annotations

_LOOP_END = "dec rdi\njnz .Ltop\nret\n"


def _loop(body: str, init: str = "") -> str:
    return init + ".Ltop:\n" + body + _LOOP_END


KERNELS: dict[str, str] = {
    # A read-modify-write of one qword in the buffer: each add waits for the
    # previous one's store, through store-to-load forwarding.
    "mem_rmw_chain": _loop("add qword ptr [rsi], 0x1\n"),
    # The same on a stack slot (the red zone below rsp): the addressing gcc -O0 uses.
    "stack_rmw_chain": _loop("add qword ptr [rsp - 0x8], 0x1\n", "mov qword ptr [rsp - 0x8], 0x0\n"),
    # A value stored and loaded back every iteration, with an ALU op between.
    "store_reload_chain": _loop("mov qword ptr [rsi + 0x40], rax\nmov rax, qword ptr [rsi + 0x40]\n"
                                "add rax, 0x3\n", "xor eax, eax\n"),
    # An -O0 style counter: load from a frame slot, add, store back (rbp frame).
    "frame_counter": _loop("mov rax, qword ptr [rsp - 0x10]\nadd rax, rdi\nmov qword ptr [rsp - 0x10], rax\n"
                           "mov rcx, qword ptr [rsp - 0x18]\nxor rcx, rax\nmov qword ptr [rsp - 0x18], rcx\n",
                           "mov qword ptr [rsp - 0x10], 0x0\nmov qword ptr [rsp - 0x18], 0x0\n"),
    # Pointer chasing through a qword that points at itself: the load-to-use latency.
    "load_chain": _loop("mov rax, qword ptr [rax]\n", "mov qword ptr [rsi], rsi\nmov rax, rsi\n"),
    # Six independent loads an iteration: the load pipes.
    "load_ports": _loop("".join(f"mov {r}, qword ptr [rsi + {8 * i:#x}]\n"
                                for i, r in enumerate(("rax", "rcx", "rdx", "r8", "r9", "r10")))),
    # Four independent stores an iteration: the store pipes.
    "store_ports": _loop("".join(f"mov qword ptr [rsi + {0x100 + 8 * i:#x}], rdi\n" for i in range(4))),
    # Eight independent adds: the ALU pipes (and the loop's own dec/jnz).
    "alu_ports": _loop("".join(f"add {r}, 0x1\n" for r in ("rax", "rcx", "rdx", "r8", "r9", "r10", "r11",
                                                           "rsi"))),
    # Six independent shifts: only two pipes shift.
    "shift_ports": _loop("".join(f"shl {r}, 0x1\n" for r in ("rax", "rcx", "rdx", "r8", "r9", "r10"))),
    # A multiply chain: four imul latencies an iteration.
    "imul_chain": _loop("imul rax, rcx\n" * 4, "mov eax, 0x3\nmov ecx, 0x5\n"),
    # cmov in a chain with its flags: cmp, cmovb and an add per step.
    "cmov_chain": _loop("cmp rax, rdx\ncmovb rax, rcx\nadd rax, 0x1\n" * 3,
                        "xor eax, eax\nmov ecx, 0x7\nmov edx, 0x1000\n"),
    # setcc feeding the next compare: test, setne, movzx, add per step.
    "setcc_chain": _loop("test rax, rcx\nsetne al\nmovzx eax, al\nadd rax, rdx\n" * 3,
                         "mov eax, 0x1\nmov ecx, 0x3\nmov edx, 0x2\n"),
    # Four taken jumps an iteration besides the loop branch.
    "taken_jumps": _loop("jmp .La\n.La:\nadd rax, 0x1\njmp .Lb\n.Lb:\nadd rcx, 0x1\njmp .Lc\n.Lc:\n"
                         "add rdx, 0x1\njmp .Ld\n.Ld:\n"),
    # An inner loop of three iterations inside the outer one.
    "nested_short": _loop("mov ecx, 0x3\n.Linner:\nadd rax, rcx\ndec ecx\njnz .Linner\n"),
    # SSE2 chain of the shape ChaCha20 uses: add, xor, rotate by shifts.
    "sse_rotate_chain": _loop("paddd xmm0, xmm1\npxor xmm0, xmm2\nmovdqa xmm3, xmm0\npslld xmm3, 0x7\n"
                              "psrld xmm0, 0x19\npor xmm0, xmm3\n",
                              "pxor xmm0, xmm0\npcmpeqd xmm1, xmm1\npxor xmm2, xmm2\n"),
    # Stream: load, multiply, store to another line: ports and latency overlap.
    "load_mul_store": _loop("mov ecx, edi\nand ecx, 0xff\nmov rax, qword ptr [rsi + rcx * 8]\nimul rax, rax\n"
                            "mov qword ptr [rsi + rcx * 8 + 0x800], rax\n"),
}
