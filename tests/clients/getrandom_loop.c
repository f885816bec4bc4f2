/* getrandom_loop: N calls of getrandom(buf, 64, 0), then one summary line.
 *
 * Usage: getrandom_loop [N]        (N defaults to 1000)
 *
 * Prints, the same on every run (never the random bytes):
 *   calls=N bytes=64N short=0 failed=0 zero_words=0
 * Exit status 0 when every call returned 64 bytes and no word was zero.
 * Built dynamically it is the vDSO's client through glibc 2.41's state
 * allocator; built with -static it is the same source through libc.a.
 */
#include <stdlib.h>
#include <sys/random.h>

#include "tally.h"

#define LEN 64

int main(int argc, char **argv)
{
	unsigned long n = argc > 1 ? strtoul(argv[1], NULL, 0) : 1000;
	struct tally t = { 0 };
	unsigned char buf[LEN];

	for (unsigned long i = 0; i < n; i++) {
		memset(buf, POISON, sizeof(buf));
		tally_add(&t, getrandom(buf, LEN, 0), LEN, buf);
	}
	tally_print(NULL, &t);
	return tally_ok(&t) ? 0 : 1;
}
