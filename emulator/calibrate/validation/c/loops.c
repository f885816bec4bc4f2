/*
 * Loops of the validation set: everyday kernels of C code whose bottlenecks
 * differ (bandwidth, ALU latency, multiply latency, load-to-use latency,
 * loop-carried values in memory, register pressure).  Each is an exported
 * function of at most five integer arguments that faultpath calls natively
 * (rdtsc around a loop of calls) and in the emulator.
 *
 * Freestanding: the build passes -fno-builtin and
 * -fno-tree-loop-distribute-patterns so that gcc keeps these loops rather
 * than turning them into calls to memcpy/memset (there is no libc).
 */
typedef unsigned long u64;
typedef unsigned int u32;
typedef unsigned short u16;
typedef unsigned char u8;

/* memcpy, byte at a time. */
u64 copy_bytes(u8 *dst, const u8 *src, u64 n)
{
	u64 i;

	for (i = 0; i < n; i++)
		dst[i] = src[i];
	return n;
}

/* memcpy of 8-byte words (n bytes, a multiple of 8). */
u64 copy_words(u64 *dst, const u64 *src, u64 n)
{
	u64 i;

	for (i = 0; i < n / 8; i++)
		dst[i] = src[i];
	return n;
}

/* memset, byte at a time. */
u64 fill_bytes(u8 *dst, u64 c, u64 n)
{
	u64 i;

	for (i = 0; i < n; i++)
		dst[i] = (u8)c;
	return n;
}

/* CRC-32 (IEEE 802.3, reflected, polynomial 0xEDB88320), one bit at a time. */
u64 crc32_bitwise(const u8 *p, u64 n)
{
	u32 crc = 0xffffffffu;
	u64 i;
	int k;

	for (i = 0; i < n; i++) {
		crc ^= p[i];
		for (k = 0; k < 8; k++)
			crc = (crc >> 1) ^ (0xedb88320u & (0u - (crc & 1u)));
	}
	return ~crc;
}

/* The same CRC-32 from a 256-entry table (the caller fills it). */
u64 crc32_table(const u8 *p, u64 n, const u32 *table)
{
	u32 crc = 0xffffffffu;
	u64 i;

	for (i = 0; i < n; i++)
		crc = table[(crc ^ p[i]) & 0xff] ^ (crc >> 8);
	return ~crc;
}

/* FNV-1a, 64-bit: a multiply in every step's chain. */
u64 fnv1a(const u8 *p, u64 n)
{
	u64 h = 0xcbf29ce484222325ul;
	u64 i;

	for (i = 0; i < n; i++) {
		h ^= p[i];
		h *= 0x100000001b3ul;
	}
	return h;
}

/* Follow a chain of 32-bit indices: every load waits for the previous one. */
u64 chase(const u32 *next, u64 steps, u64 start)
{
	u64 i = start, k;

	for (k = 0; k < steps; k++)
		i = next[i];
	return i;
}

/* Sum of 32-bit words (a reduction gcc vectorises at -O3 with SSE2). */
u64 sum_words(const u32 *p, u64 n)
{
	u64 s = 0, i;

	for (i = 0; i < n / 4; i++)
		s += p[i];
	return s;
}

/*
 * Sixteen running values mixed with every 8-byte word: more live values than
 * the registers gcc may use, so some live in stack slots across iterations.
 */
u64 spill_mix(const u64 *p, u64 n)
{
	u64 a = 1, b = 2, c = 3, d = 4, e = 5, f = 6, g = 7, h = 8;
	u64 i2 = 9, j = 10, k = 11, l = 12, m = 13, o = 14, q = 15, r = 16;
	u64 i;

	for (i = 0; i < n / 8; i++) {
		u64 w = p[i];

		a += w ^ r; b ^= a + w; c += b >> 3; d ^= c << 5;
		e += d ^ w; f ^= e + a; g += f >> 7; h ^= g << 2;
		i2 += h ^ b; j ^= i2 + c; k += j >> 11; l ^= k << 13;
		m += l ^ d; o ^= m + e; q += o >> 17; r ^= q << 1;
	}
	return a ^ b ^ c ^ d ^ e ^ f ^ g ^ h ^ i2 ^ j ^ k ^ l ^ m ^ o ^ q ^ r;
}

/* Count the bytes below a threshold: a data-dependent branch per byte. */
u64 count_below(const u8 *p, u64 n, u64 limit)
{
	u64 c = 0, i;

	for (i = 0; i < n; i++)
		if (p[i] < limit)
			c++;
	return c;
}

/* Insertion step of a sort over 16-bit keys (n bytes): compare, move, branch. */
u64 insert_sorted(u16 *a, u64 n)
{
	u64 count = n / 2, i;

	for (i = 1; i < count; i++) {
		u16 v = a[i];
		u64 j = i;

		while (j > 0 && a[j - 1] > v) {
			a[j] = a[j - 1];
			j--;
		}
		a[j] = v;
	}
	return count;
}
