# faultpath: vDSO getrandom, 6.11+ ABI.
#
#   ssize_t __vdso_getrandom(void *buffer,        rdi
#                            size_t len,          rsi
#                            unsigned int flags,  edx
#                            void *opaque_state,  rcx
#                            size_t opaque_len);  r8
#
# Written from the algorithm in DESIGN.md ("vDSO getrandom (6.11+)"); the
# step numbers below are the ones used there.  Observable behaviour (output
# bytes, syscalls and their arguments, state bytes, return value) matches the
# kernel's: tests/test_asm_vgetrandom.py checks it against the host vDSO.
#
# struct vgetrandom_state (144 bytes, never straddles a page)
#   0x00 batch[96]   0x60 key[32]   0x80 generation u64   0x88 pos u8   0x89 in_use u8
# struct vdso_rng_data (the builder places vdso_rng_data)
#   0x00 generation u64   0x08 is_ready u8
#
# ChaCha20 runs with a u64 block counter that lives in this frame and starts
# at 0 on every call: every refill replaces state->key (fast key erasure), so
# a (key, counter) pair is never used twice.
#
# Frame, once the state is claimed (rbx, r12-r15 pushed, then 16 bytes):
#   [rsp + 0x0]  ChaCha20 block counter (u64)
#   [rsp + 0x8]  flags (u32)
#   [rsp + 0xc]  1 once the generation check has been retried (u8)
# Registers while the state is claimed (callee-saved, so they survive both the
# ChaCha20 calls and the syscalls):
#   rbx  state        r12  bytes still to produce    r13  where they go
#   r14  original len r15  original buffer
#
# Every return clears the caller-saved scratch registers rcx, rdx, rsi, rdi
# and r8-r11, as the kernel's vDSO does.
#
# A build that provides its own entry (vgetrandom_v14.s, assembled first)
# defines __vdso_getrandom already; then only the shared body below is used.
# Symbol types and sizes go into the image's ELF symbol table; the exported
# __vdso_getrandom is a function of the same size when it is this label.

.type   __vgetrandom_opaque, @function
.ifndef __vdso_getrandom
__vdso_getrandom:
.endif
__vgetrandom_opaque:
    # 2. Params query: opaque_len == ~0 with buffer, len and flags all 0.
    cmp     r8, -0x1
    je      .Lmaybe_params

.Lcheck_state:
    # 3. The state must not straddle a page.
    mov     eax, ecx
    and     eax, 0xfff
    cmp     eax, 0xf70                      # 0x1000 - 144
    ja      .Lefault
    # 4. Fallbacks for the whole request: unknown flags (valid: GRND_NONBLOCK,
    #    GRND_RANDOM, GRND_INSECURE), a foreign state size, an unready RNG.
    cmp     edx, 0x7
    ja      .Lfallback
    cmp     r8, 0x90
    jne     .Lfallback
    cmp     byte ptr [rip + vdso_rng_data + 0x8], 0x0
    je      .Lfallback
    # 5. Nothing asked for.
    test    rsi, rsi
    jz      .Lreturn_zero
    # 6. Reentered (a signal handler interrupted a call on this state).
    cmp     byte ptr [rcx + 0x89], 0x0
    jne     .Lfallback
    mov     byte ptr [rcx + 0x89], 0x1

    push    rbx
    push    r12
    push    r13
    push    r14
    push    r15
    sub     rsp, 0x10
    mov     rbx, rcx
    mov     r14, rsi
    mov     r15, rdi
    mov     qword ptr [rsp], 0x0            # counter = 0
    mov     dword ptr [rsp + 0x8], edx
    mov     byte ptr [rsp + 0xc], 0x0

.Lretry_generation:
    # 7. A kernel reseed bumps the generation: take a fresh key.
    mov     rax, qword ptr [rip + vdso_rng_data]
    cmp     rax, qword ptr [rbx + 0x80]
    jne     .Lreseed
    movzx   eax, byte ptr [rbx + 0x88]      # pos

.Lstart:                                    # eax = pos
    mov     r12d, 0x7ffff000                # 1. len = min(len, MAX_RW_COUNT)
    cmp     r14, r12
    cmovb   r12, r14
    mov     r13, r15                        # buffer = original buffer

.Lmore_batch:                               # eax = pos
    # 8. Hand out what is left of the batch, zeroing it behind us.
    mov     ecx, 0x60
    sub     rcx, rax
    cmp     rcx, r12
    cmova   rcx, r12                        # n = min(96 - pos, len)
    test    rcx, rcx
    jz      .Lbatch_done
    lea     rsi, [rbx + rax]
    mov     rdi, r13
    mov     rdx, rcx
    cmp     rdx, 0x8
    jb      .Lcopy_4
.Lcopy_8:
    mov     rax, qword ptr [rsi]
    mov     qword ptr [rdi], rax
    mov     qword ptr [rsi], 0x0
    add     rsi, 0x8
    add     rdi, 0x8
    sub     rdx, 0x8
    cmp     rdx, 0x8
    jae     .Lcopy_8
.Lcopy_4:
    test    dl, 0x4
    jz      .Lcopy_2
    mov     eax, dword ptr [rsi]
    mov     dword ptr [rdi], eax
    mov     dword ptr [rsi], 0x0
    add     rsi, 0x4
    add     rdi, 0x4
.Lcopy_2:
    test    dl, 0x2
    jz      .Lcopy_1
    movzx   eax, word ptr [rsi]
    mov     word ptr [rdi], ax
    mov     word ptr [rsi], 0x0
    add     rsi, 0x2
    add     rdi, 0x2
.Lcopy_1:
    test    dl, 0x1
    jz      .Lcopied
    movzx   eax, byte ptr [rsi]
    mov     byte ptr [rdi], al
    mov     byte ptr [rsi], 0x0
.Lcopied:
    add     byte ptr [rbx + 0x88], cl       # pos += n
    add     r13, rcx
    sub     r12, rcx

.Lbatch_done:
    test    r12, r12
    jnz     .Lbulk
    # 9. Filled.  If the kernel reseeded meanwhile, the bytes came from a
    #    stale key: redo the request once from the start, then give up.
    mov     rax, qword ptr [rip + vdso_rng_data]
    cmp     rax, qword ptr [rbx + 0x80]
    jne     .Lgeneration_moved
    mov     byte ptr [rbx + 0x89], 0x0      # in_use = 0
    mov     eax, 0x7ffff000
    cmp     r14, rax
    cmovb   rax, r14                        # return min(len, MAX_RW_COUNT)

.Lrelease_frame:
    add     rsp, 0x10
    pop     r15
    pop     r14
    pop     r13
    pop     r12
    pop     rbx
.Lreturn:
    xor     ecx, ecx
    xor     edx, edx
    xor     esi, esi
    xor     edi, edi
    xor     r8d, r8d
    xor     r9d, r9d
    xor     r10d, r10d
    xor     r11d, r11d
    ret

.Lbulk:
    # 10. Whole blocks go straight into the buffer ...
    mov     rcx, r12
    shr     rcx, 0x6                        # nblocks = len / 64
    jz      .Lrefill
    mov     rdi, r13
    lea     rsi, [rbx + 0x60]
    mov     rdx, rsp
    call    __arch_chacha20_blocks_nostack
    mov     rax, r12
    and     rax, -0x40
    add     r13, rax                        # buffer += nblocks * 64
    and     r12, 0x3f                       # len -= nblocks * 64
.Lrefill:
    # ... then refill batch_key (96-byte batch + the next 32-byte key: fast
    # key erasure) with the continued counter, and hand out from the batch.
    mov     rdi, rbx
    lea     rsi, [rbx + 0x60]
    mov     rdx, rsp
    mov     ecx, 0x2
    call    __arch_chacha20_blocks_nostack
    mov     byte ptr [rbx + 0x88], 0x0      # pos = 0
    xor     eax, eax
    jmp     .Lmore_batch

.Lgeneration_moved:
    cmp     byte ptr [rsp + 0xc], 0x0
    jne     .Lfallback_release
    mov     byte ptr [rsp + 0xc], 0x1
    jmp     .Lretry_generation

.Lreseed:                                   # rax = the kernel's generation
    mov     qword ptr [rbx + 0x80], rax     # record it before reseeding
    lea     rdi, [rbx + 0x60]               # getrandom(&state->key, 32, 0)
    mov     esi, 0x20
    xor     edx, edx
    mov     eax, 0x13e
    syscall
    cmp     rax, 0x20
    jne     .Lreseed_failed
    mov     byte ptr [rbx + 0x88], 0x60     # pos = 96: the batch is empty
    mov     eax, 0x60
    jmp     .Lstart
.Lreseed_failed:
    mov     qword ptr [rbx + 0x80], 0x0     # generation = 0: reseed next time
.Lfallback_release:
    mov     byte ptr [rbx + 0x89], 0x0      # in_use = 0
    mov     rdi, r15
    mov     rsi, r14
    mov     edx, dword ptr [rsp + 0x8]
    add     rsp, 0x10
    pop     r15
    pop     r14
    pop     r13
    pop     r12
    pop     rbx
.Lfallback:
    # The getrandom syscall (318) for the whole, unclamped request.
    mov     eax, 0x13e
    syscall
    jmp     .Lreturn

.Lreturn_zero:
    xor     eax, eax
    jmp     .Lreturn

.Lefault:
    mov     rax, -0xe                       # -EFAULT
    jmp     .Lreturn

.Lmaybe_params:
    test    rdi, rdi
    jnz     .Lcheck_state
    test    rsi, rsi
    jnz     .Lcheck_state
    test    edx, edx
    jnz     .Lcheck_state
    # struct vgetrandom_opaque_params (64 bytes): size_of_opaque_state = 144,
    # mmap_prot = PROT_READ|PROT_WRITE, mmap_flags = MAP_DROPPABLE|MAP_ANONYMOUS,
    # reserved[13] = 0.
    mov     rax, 0x300000090
    mov     qword ptr [rcx], rax
    mov     dword ptr [rcx + 0x8], 0x28
    xor     eax, eax
    mov     dword ptr [rcx + 0xc], eax
    mov     qword ptr [rcx + 0x10], rax
    mov     qword ptr [rcx + 0x18], rax
    mov     qword ptr [rcx + 0x20], rax
    mov     qword ptr [rcx + 0x28], rax
    mov     qword ptr [rcx + 0x30], rax
    mov     qword ptr [rcx + 0x38], rax
    jmp     .Lreturn
.size   __vgetrandom_opaque, .-__vgetrandom_opaque
