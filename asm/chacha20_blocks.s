# faultpath: ChaCha20 block generator for the vDSO getrandom.
#
#   void __arch_chacha20_blocks_nostack(u8 *dst,          rdi
#                                       const u32 *key,   rsi  (8 words)
#                                       u32 *counter,     rdx  (2 words: a u64)
#                                       size_t nblocks);  rcx  (must be > 0)
#
# Writes nblocks * 64 bytes of ChaCha20 keystream to dst, original DJB layout:
#   row 0  words 0-3    "expand 32-byte k"
#   row 1  words 4-7    key[0..3]
#   row 2  words 8-11   key[4..7]
#   row 3  words 12-15  counter low, counter high, 0, 0
# The 64-bit counter advances by one per block (the low word carries into the
# high word) and is written back.  The key and counter are read completely
# before the first store, so dst may overlap the key (the vDSO refills
# batch_key in place from state->key).
#
# SSE2 only (Unicorn 2.1 runs no AVX; no SSSE3 either, so the 16- and 8-bit
# rotations are done without pshufb).  No stack: only the call's own return
# address.  Numbers are written in hex on purpose (keystone's radix is
# unreliable, see vdso/asm_build.py).
#
# Clobbers rax, rcx, rdi and the flags; preserves everything else except the
# SSE registers below, which are zeroed before returning so no key material
# or keystream lingers in them.
#
#   xmm8   row 0 input (constants)      xmm0-xmm3  the working rows
#   xmm9   row 1 input (key)            xmm4       rotation scratch
#   xmm10  row 2 input (key)
#   xmm11  row 3 input (counter, nonce)
#   xmm12  {1, 0}: the per-block counter increment (paddq)

.type   __arch_chacha20_blocks_nostack, @function
__arch_chacha20_blocks_nostack:
    movdqu  xmm9, xmmword ptr [rsi]
    movdqu  xmm10, xmmword ptr [rsi + 0x10]
    movq    xmm11, qword ptr [rdx]          # upper 64 bits (nonce) become 0
    mov     rax, 0x3320646e61707865         # "expand 3"
    movq    xmm8, rax
    mov     rax, 0x6b20657479622d32         # "2-byte k"
    movq    xmm4, rax
    punpcklqdq xmm8, xmm4
    mov     eax, 0x1
    movq    xmm12, rax

.Lnext_block:
    movdqa  xmm0, xmm8
    movdqa  xmm1, xmm9
    movdqa  xmm2, xmm10
    movdqa  xmm3, xmm11
    mov     eax, 0xa                        # 10 double rounds = 20 rounds

.Ldouble_round:
    # Column round: the quarter round on the four columns at once
    # (a, b, c, d) = (xmm0, xmm1, xmm2, xmm3).
    paddd   xmm0, xmm1                      # a += b; d ^= a; d <<<= 16
    pxor    xmm3, xmm0
    pshuflw xmm3, xmm3, 0xb1                # swap the 16-bit halves of
    pshufhw xmm3, xmm3, 0xb1                # every word: rotate by 16
    paddd   xmm2, xmm3                      # c += d; b ^= c; b <<<= 12
    pxor    xmm1, xmm2
    movdqa  xmm4, xmm1
    pslld   xmm4, 0xc
    psrld   xmm1, 0x14
    por     xmm1, xmm4
    paddd   xmm0, xmm1                      # a += b; d ^= a; d <<<= 8
    pxor    xmm3, xmm0
    movdqa  xmm4, xmm3
    pslld   xmm4, 0x8
    psrld   xmm3, 0x18
    por     xmm3, xmm4
    paddd   xmm2, xmm3                      # c += d; b ^= c; b <<<= 7
    pxor    xmm1, xmm2
    movdqa  xmm4, xmm1
    pslld   xmm4, 0x7
    psrld   xmm1, 0x19
    por     xmm1, xmm4

    # Rotate rows 1-3 left by 1, 2, 3 words: the diagonals become columns.
    pshufd  xmm1, xmm1, 0x39
    pshufd  xmm2, xmm2, 0x4e
    pshufd  xmm3, xmm3, 0x93

    # Diagonal round: the same quarter round on the realigned rows.
    paddd   xmm0, xmm1
    pxor    xmm3, xmm0
    pshuflw xmm3, xmm3, 0xb1
    pshufhw xmm3, xmm3, 0xb1
    paddd   xmm2, xmm3
    pxor    xmm1, xmm2
    movdqa  xmm4, xmm1
    pslld   xmm4, 0xc
    psrld   xmm1, 0x14
    por     xmm1, xmm4
    paddd   xmm0, xmm1
    pxor    xmm3, xmm0
    movdqa  xmm4, xmm3
    pslld   xmm4, 0x8
    psrld   xmm3, 0x18
    por     xmm3, xmm4
    paddd   xmm2, xmm3
    pxor    xmm1, xmm2
    movdqa  xmm4, xmm1
    pslld   xmm4, 0x7
    psrld   xmm1, 0x19
    por     xmm1, xmm4

    # And back to columns.
    pshufd  xmm1, xmm1, 0x93
    pshufd  xmm2, xmm2, 0x4e
    pshufd  xmm3, xmm3, 0x39

    dec     eax
    jnz     .Ldouble_round

    # Feed-forward: add the input rows, store the 64-byte block.
    paddd   xmm0, xmm8
    paddd   xmm1, xmm9
    paddd   xmm2, xmm10
    paddd   xmm3, xmm11
    movdqu  xmmword ptr [rdi], xmm0
    movdqu  xmmword ptr [rdi + 0x10], xmm1
    movdqu  xmmword ptr [rdi + 0x20], xmm2
    movdqu  xmmword ptr [rdi + 0x30], xmm3

    paddq   xmm11, xmm12                    # 64-bit counter += 1
    add     rdi, 0x40
    dec     rcx
    jnz     .Lnext_block

    movq    qword ptr [rdx], xmm11          # write the counter back

    pxor    xmm0, xmm0
    pxor    xmm1, xmm1
    pxor    xmm2, xmm2
    pxor    xmm3, xmm3
    pxor    xmm4, xmm4
    pxor    xmm8, xmm8
    pxor    xmm9, xmm9
    pxor    xmm10, xmm10
    pxor    xmm11, xmm11
    pxor    xmm12, xmm12
    ret
.size   __arch_chacha20_blocks_nostack, .-__arch_chacha20_blocks_nostack
