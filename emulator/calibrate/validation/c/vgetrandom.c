/*
 * A vDSO getrandom of the validation set, written for faultpath from the
 * behaviour described in its docs (6.11+ ABI: buffer, len, flags, opaque
 * state, opaque_len) and ChaCha20 as RFC 8439 / DJB define it (64-bit block
 * counter in words 12-13, zero nonce).  Built with gcc at several levels so
 * the cycle model meets machine code nobody tuned it on.
 *
 * Freestanding: no libc; the one system call (getrandom, 318) is inline asm.
 * vdso_rng_data is reached RIP-relative, 4 pages below the text (the 6.15+
 * layout), as the linker script image.lds places it.
 */
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned char u8;

#define PAGE_SIZE 4096UL
#define BLOCK 64UL
#define BATCH 96UL
#define MAX_RW 0x7ffff000UL
#define GRND_NONBLOCK 1U
#define GRND_RANDOM 2U
#define GRND_INSECURE 4U
#define EFAULT 14
#define NR_getrandom 318

struct rng_data {
	u64 generation;
	u8 is_ready;
};

struct state {
	union {
		struct {
			u8 batch[BATCH];
			u32 key[8];
		};
		u8 batch_key[2 * BLOCK];
	};
	u64 generation;
	u8 pos;
	u8 in_use;
	u8 pad[6];
};

struct params {
	u32 size_of_opaque_state;
	u32 mmap_prot;
	u32 mmap_flags;
	u32 reserved[13];
};

extern const volatile struct rng_data vdso_rng_data __attribute__((visibility("hidden")));

/* Keep the compiler from moving memory accesses across a point. */
#define barrier() __asm__ __volatile__("" ::: "memory")

static long sys_getrandom(void *buf, u64 len, u32 flags)
{
	long ret;

	__asm__ __volatile__("syscall"
			     : "=a"(ret)
			     : "a"((long)NR_getrandom), "D"(buf), "S"(len), "d"((u64)flags)
			     : "rcx", "r11", "memory");
	return ret;
}

static inline u32 rotl(u32 v, int n)
{
	return (v << n) | (v >> (32 - n));
}

#define QR(a, b, c, d)                          \
	do {                                    \
		a += b; d = rotl(d ^ a, 16);    \
		c += d; b = rotl(b ^ c, 12);    \
		a += b; d = rotl(d ^ a, 8);     \
		c += d; b = rotl(b ^ c, 7);     \
	} while (0)

/*
 * nblocks (> 0) ChaCha20 blocks of key and the 64-bit *counter into dst, the
 * counter advanced and written back.  dst may overlap key: the key is read
 * into the input block before any output is written.
 */
__attribute__((noinline))
void chacha20_blocks(u8 *dst, const u32 *key, u64 *counter, u64 nblocks)
{
	u32 in[16], x[16];
	u64 ctr = *counter;
	int i;

	in[0] = 0x61707865; in[1] = 0x3320646e; in[2] = 0x79622d32; in[3] = 0x6b206574;
	for (i = 0; i < 8; i++)
		in[4 + i] = key[i];
	in[14] = 0;
	in[15] = 0;
	while (nblocks--) {
		in[12] = (u32)ctr;
		in[13] = (u32)(ctr >> 32);
		for (i = 0; i < 16; i++)
			x[i] = in[i];
		for (i = 0; i < 10; i++) {
			QR(x[0], x[4], x[8], x[12]);
			QR(x[1], x[5], x[9], x[13]);
			QR(x[2], x[6], x[10], x[14]);
			QR(x[3], x[7], x[11], x[15]);
			QR(x[0], x[5], x[10], x[15]);
			QR(x[1], x[6], x[11], x[12]);
			QR(x[2], x[7], x[8], x[13]);
			QR(x[3], x[4], x[9], x[14]);
		}
		for (i = 0; i < 16; i++) {
			u32 v = x[i] + in[i];
			dst[4 * i + 0] = (u8)v;
			dst[4 * i + 1] = (u8)(v >> 8);
			dst[4 * i + 2] = (u8)(v >> 16);
			dst[4 * i + 3] = (u8)(v >> 24);
		}
		dst += BLOCK;
		ctr++;
	}
	*counter = ctr;
}

/* Copy n bytes and wipe the source behind them: batch bytes are handed out once. */
static void copy_and_wipe(u8 *dst, u8 *src, u64 n)
{
	while (n >= sizeof(u64)) {
		*(u64 *)dst = *(const u64 *)src;
		*(volatile u64 *)src = 0;
		dst += sizeof(u64);
		src += sizeof(u64);
		n -= sizeof(u64);
	}
	while (n--) {
		*dst++ = *src;
		*(volatile u8 *)src++ = 0;
	}
}

long __vdso_getrandom(void *buffer, u64 len, u32 flags, void *opaque_state, u64 opaque_len)
{
	struct state *st = opaque_state;
	u8 *out = buffer;
	u64 ret = len < MAX_RW ? len : MAX_RW;
	u64 left = ret, gen, counter = 0;
	int retried = 0;

	if (opaque_len == ~0UL && !buffer && !len && !flags) {
		struct params *p = opaque_state;
		int i;

		p->size_of_opaque_state = sizeof(struct state);
		p->mmap_prot = 3;               /* PROT_READ | PROT_WRITE */
		p->mmap_flags = 0x28;           /* MAP_DROPPABLE | MAP_ANONYMOUS */
		for (i = 0; i < 13; i++)
			p->reserved[i] = 0;
		return 0;
	}
	if (((u64)opaque_state & (PAGE_SIZE - 1)) + sizeof(struct state) > PAGE_SIZE)
		return -EFAULT;
	if ((flags & ~(GRND_NONBLOCK | GRND_RANDOM | GRND_INSECURE)) || opaque_len != sizeof(struct state) ||
	    !vdso_rng_data.is_ready)
		goto fallback;
	if (!len)
		return 0;
	if (st->in_use)
		goto fallback;
	st->in_use = 1;
	barrier();

check_generation:
	gen = vdso_rng_data.generation;
	if (st->generation != gen) {
		/* The generation goes in first: a reseed racing with us is seen next time. */
		st->generation = gen;
		barrier();
		if (sys_getrandom(st->key, sizeof(st->key), 0) != (long)sizeof(st->key)) {
			st->generation = 0;
			barrier();
			st->in_use = 0;
			goto fallback;
		}
		st->pos = BATCH;
	}
	for (;;) {
		u64 avail = BATCH - st->pos, n = left < avail ? left : avail, blocks;

		if (n) {
			copy_and_wipe(out, st->batch + st->pos, n);
			st->pos += n;
			out += n;
			left -= n;
		}
		if (!left) {
			barrier();
			if (st->generation != vdso_rng_data.generation) {
				if (!retried) {
					retried = 1;
					out = buffer;
					left = ret;
					goto check_generation;
				}
				st->in_use = 0;
				goto fallback;
			}
			barrier();
			st->in_use = 0;
			return ret;
		}
		blocks = left / BLOCK;
		if (blocks) {
			chacha20_blocks(out, st->key, &counter, blocks);
			out += blocks * BLOCK;
			left -= blocks * BLOCK;
		}
		/* Refill the batch and replace the key in one go (fast key erasure). */
		chacha20_blocks(st->batch_key, st->key, &counter, 2);
		st->pos = 0;
	}

fallback:
	return sys_getrandom(buffer, ret, flags);
}
