/* thread_create: one pthread_create, whose thread makes one getrandom(64).
 *
 * Usage: thread_create
 *
 * Prints what pthread_create returned and, when the thread ran, its tally:
 *   pthread_create=0 (ok)
 *   thread: calls=1 bytes=64 short=0 failed=0 zero_words=0
 * Where threads cannot be created (faultpath refuses CLONE_THREAD) the
 * first line carries the error and there is no second line.  Exit status 0
 * either way: the program reports, it does not judge.
 */
#include <pthread.h>
#include <sys/random.h>

#include "tally.h"

static struct tally t;

static void *worker(void *arg)
{
	unsigned char buf[64];

	memset(buf, POISON, sizeof(buf));
	tally_add(&t, getrandom(buf, sizeof(buf), 0), sizeof(buf), buf);
	return arg;
}

int main(void)
{
	pthread_t th;
	int err = pthread_create(&th, NULL, worker, NULL);

	printf("pthread_create=%d (%s)\n", err, err ? strerror(err) : "ok");
	if (!err) {
		pthread_join(th, NULL);
		tally_print("thread", &t);
	}
	return 0;
}
