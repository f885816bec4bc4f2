/* tally.h: the summary every client prints instead of random bytes.
 *
 * A call is counted; its bytes are added; a negative return is a failure and
 * a return other than the request is a short read.  zero_words counts the
 * 8-byte words of the returned bytes that are all zero: a working generator
 * gives 0 (each word is zero with probability 2^-64), a generator that hands
 * out a wiped state's bytes gives many.  Callers poison their buffers first
 * (POISON), so a call that writes nothing does not pass as random either.
 */
#ifndef FP_TALLY_H
#define FP_TALLY_H

#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/types.h>

#define POISON 0xa5

struct tally {
	unsigned long calls, bytes, short_reads, failed, zero_words;
};

static inline unsigned long count_zero_words(const unsigned char *p, size_t n)
{
	unsigned long z = 0;
	for (size_t i = 0; i + 8 <= n; i += 8) {
		uint64_t v;
		memcpy(&v, p + i, 8);
		z += v == 0;
	}
	return z;
}

static inline void tally_add(struct tally *t, ssize_t r, size_t want,
			     const unsigned char *buf)
{
	t->calls++;
	if (r < 0) {
		t->failed++;
		return;
	}
	t->bytes += (unsigned long)r;
	if ((size_t)r != want)
		t->short_reads++;
	t->zero_words += count_zero_words(buf, (size_t)r);
}

static inline int tally_ok(const struct tally *t)
{
	return !t->failed && !t->short_reads && !t->zero_words;
}

static inline void tally_print(const char *who, const struct tally *t)
{
	printf("%s%scalls=%lu bytes=%lu short=%lu failed=%lu zero_words=%lu\n",
	       who ? who : "", who ? ": " : "", t->calls, t->bytes,
	       t->short_reads, t->failed, t->zero_words);
}

#endif
