"""Instructions a user-mode x86-64 CPU refuses, or that Linux answers with a
signal: what this CPU and kernel really do with each is measured by the
native side, never assumed here.

Each item is one instruction (with the register values it needs), run after
a random flag producer so that the state at the signal is compared too,
with every data page present: the only fault is the instruction's own.
"""
from __future__ import annotations

import random
from dataclasses import dataclass, field

from emulator.diffcheck.build import SequenceBuilder, value
from emulator.diffcheck.flags import emit_free, producer
from emulator.diffcheck.layout import GPRS, data_page
from emulator.diffcheck.placement import STACK_HOME

ADDR = data_page(0) + 0x400          # a 64-byte aligned address in a present page


@dataclass(frozen=True)
class Item:
    text: str
    group: str                       # what kind of refusal (for the report and the tests)
    regs: dict = field(default_factory=dict)
    offset: int = 0                  # added to ADDR for rdi (misalignment)


def _i(text, group, offset=0, **regs) -> Item:
    return Item(text, group, regs, offset)


ITEMS = (
    # CPL 0 only: #GP
    _i("hlt", "privileged"), _i("rdmsr", "privileged", rcx=0x10), _i("wrmsr", "privileged", rcx=0x10),
    _i("lgdt [rdi]", "privileged"), _i("lidt [rdi]", "privileged"), _i("lldt ax", "privileged"),
    _i("ltr ax", "privileged"), _i("lmsw ax", "privileged"), _i("mov cr0, rax", "privileged"),
    _i("mov rax, cr3", "privileged"), _i("mov cr4, rax", "privileged"), _i("mov rax, cr8", "privileged"),
    _i("mov rax, dr7", "privileged"), _i("mov dr0, rax", "privileged"), _i("invlpg [rdi]", "privileged"),
    _i("wbinvd", "privileged"), _i("invd", "privileged"), _i("clts", "privileged"), _i("swapgs", "privileged"),
    _i("sysret", "privileged"), _i("sysexit", "privileged"), _i("xsetbv", "privileged", rcx=0),
    _i("invpcid rax, [rdi]", "privileged", rax=0), _i("rdpmc", "privileged", rcx=0),
    # IOPL 0: #GP
    _i("cli", "io"), _i("sti", "io"), _i("in al, dx", "io", rdx=0x80), _i("in eax, 0x60", "io"),
    _i("out dx, al", "io", rdx=0x80), _i("out 0x80, al", "io"), _i("insb", "io", rdx=0x80),
    _i("insd", "io", rdx=0x80), _i("outsb", "io", rdx=0x80), _i("outsw", "io", rdx=0x80),
    # invalid in 64-bit mode, or at CPL 3: #UD
    _i("sysenter", "invalid"), _i("ud2", "invalid"), _i("into", "invalid"), _i(".byte 0x06", "invalid"),
    _i(".byte 0xf0, 0x90", "invalid"), _i("clac", "invalid"), _i("stac", "invalid"),
    _i("monitor", "invalid", rax=ADDR, rcx=0, rdx=0), _i("mwait", "invalid", rax=0, rcx=0),
    # software interrupts and breakpoints
    _i("int3", "trap"), _i(".byte 0xcd, 0x03", "trap"), _i("int 0x41", "trap"), _i("int 1", "trap"),
    _i("int 4", "trap"), _i(".byte 0xf1", "trap"),
    # divide errors: #DE
    _i("div rcx", "divide", rcx=0), _i("idiv rcx", "divide", rax=1 << 63, rdx=(1 << 64) - 1, rcx=(1 << 64) - 1),
    _i("div cl", "divide", rax=0xFFFF, rcx=1), _i("idiv ecx", "divide", rcx=0),
    # UMIP: the kernel may emulate these for user space
    _i("sgdt [rdi]", "umip"), _i("sidt [rdi]", "umip"), _i("sldt ax", "umip"), _i("str ax", "umip"),
    _i("smsw eax", "umip"), _i("smsw word ptr [rdi]", "umip"),
    # alignment-checked memory operands: #GP when misaligned
    _i("xsave [rdi]", "alignment", 8, rax=3, rdx=0), _i("xsave64 [rdi]", "alignment", 32, rax=3, rdx=0),
    _i("xrstor [rdi]", "alignment", 16, rax=3, rdx=0), _i("xsaveopt [rdi]", "alignment", 8, rax=3, rdx=0),
    _i("fxsave [rdi]", "alignment", 8), _i("fxrstor [rdi]", "alignment", 4),
    _i("fxsave64 [rdi]", "alignment", 1),
    _i("movaps xmm0, xmmword ptr [rdi]", "alignment", 8), _i("movaps xmmword ptr [rdi], xmm1", "alignment", 4),
    _i("movdqa xmm2, xmmword ptr [rdi]", "alignment", 1), _i("movapd xmmword ptr [rdi], xmm3", "alignment", 8),
    _i("movntdq xmmword ptr [rdi], xmm4", "alignment", 8), _i("movntps xmmword ptr [rdi], xmm5", "alignment", 2),
    _i("movntdqa xmm6, xmmword ptr [rdi]", "alignment", 8),
    _i("addps xmm0, xmmword ptr [rdi]", "alignment", 8), _i("pxor xmm1, xmmword ptr [rdi]", "alignment", 4),
    _i("paddd xmm2, xmmword ptr [rdi]", "alignment", 12), _i("pshufd xmm3, xmmword ptr [rdi], 0x1b", "alignment", 8),
    _i("ptest xmm4, xmmword ptr [rdi]", "alignment", 1), _i("cmpxchg16b xmmword ptr [rdi]", "alignment", 8),
    _i("lock cmpxchg16b xmmword ptr [rdi]", "alignment", 8),
    # the same, aligned: no fault, a store or load the emulator must get right
    _i("fxsave [rdi]", "aligned"), _i("xsave [rdi]", "aligned", rax=3, rdx=0),
    _i("movaps xmm0, xmmword ptr [rdi]", "aligned"), _i("cmpxchg16b xmmword ptr [rdi]", "aligned"),
    # system flags as user code sees them
    _i("pushfq\npop rax", "flags-image"),
)
GROUPS = tuple(dict.fromkeys(i.group for i in ITEMS))


def privileged_sequence(seed: int, index: int):
    item = ITEMS[index % len(ITEMS)]
    rng = random.Random(f"{seed}:privileged:{index}")
    b = SequenceBuilder("privileged", index, seed, rng)
    b.regs["rflags"] = 0x202 | (rng.getrandbits(12) & 0x8D5 & ~0x400)
    reserved = set(item.regs) | {"rsp", "rdi", "rax", "rdx", "rcx", "rsi"}
    emit_free(b, producer, [r for r in GPRS if r not in reserved], reserved)
    at = b.here
    for line in item.text.split("\n"):
        b.emit(line)
    b.regs.update(item.regs)
    b.regs.setdefault("rdi", ADDR + item.offset)
    b.regs.setdefault("rsi", data_page(2) + 0x100)
    b.regs["rsp"] = STACK_HOME
    for r in GPRS:
        b.regs.setdefault(r, value(rng))
    b.note = f"{item.text.replace(chr(10), '; ')} [{item.group}]"
    b.tags = {"access": item.text.replace("\n", "; "), "group": item.group, "at": hex(at),
              "end": hex(b.here)}
    return b.finish()
