/* getrandom_signal: a signal handler that calls getrandom, for re-entrancy.
 *
 * Usage: getrandom_signal MODE [N] [K]   (N defaults to 100, K to N/2)
 *
 * Every mode makes N calls of getrandom(buf, 64, 0) in main.  The handler
 * calls getrandom(hbuf, 64, 0) once per signal and tallies it separately.
 *
 *   raise      before call K, raise(SIGUSR1): the handler runs *between*
 *              two calls, so glibc's per-thread state is free.
 *   segv       call K writes into a PROT_NONE page, so the vDSO faults while
 *              glibc has the state reserved in the TCB; the SIGSEGV handler
 *              calls getrandom (the nested call), then makes the page
 *              writable and returns, and the interrupted call completes.
 *   segv-drop  as segv, and the handler first drops glibc's state page
 *              (MADV_DONTNEED, standing in for reclaim of the droppable
 *              page) before its own call.
 *   itimer     setitimer(ITIMER_REAL) every K microseconds during the N
 *              calls; where signals land is timing, so only the verdicts
 *              go to stdout and the number of handler calls to stderr.
 *
 * Output (never the random bytes), the same on every run for all modes but
 * itimer's stderr:
 *   mode=segv calls=N bytes=64N short=0 failed=0 zero_words=0
 *   handler: calls=1 bytes=64 short=0 failed=0 zero_words=0
 *   faults=1 droppable_mappings=1 droppable_bytes=4096      (segv modes)
 * droppable_* come from /proc/self/smaps (VmFlags "dp") after the first
 * call, i.e. the mapping glibc made for its states.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/random.h>
#include <sys/time.h>
#include <unistd.h>

#include "tally.h"

#define LEN 64

static struct tally handler_tally;
static unsigned char *trap_page;	/* PROT_NONE until the handler runs */
static long page_size;
static volatile sig_atomic_t faults;
static void *drop_addr;			/* glibc's droppable state mapping */
static size_t drop_len;

static void handler_call(void)
{
	unsigned char hbuf[LEN];

	memset(hbuf, POISON, sizeof(hbuf));
	tally_add(&handler_tally, getrandom(hbuf, LEN, 0), LEN, hbuf);
}

static void on_signal(int sig)
{
	(void)sig;
	handler_call();
}

static void on_segv(int sig, siginfo_t *si, void *uc)
{
	unsigned char *a = si->si_addr;

	(void)uc;
	if (!trap_page || a < trap_page || a >= trap_page + page_size) {
		/* Not ours: let the default action report the real fault. */
		signal(sig, SIG_DFL);
		return;
	}
	faults++;
	if (drop_addr)
		madvise(drop_addr, drop_len, MADV_DONTNEED);
	handler_call();
	mprotect(trap_page, (size_t)page_size, PROT_READ | PROT_WRITE);
}

/* Count the droppable mappings ("dp" in VmFlags) and remember the last. */
static int find_droppable(size_t *total)
{
	FILE *f = fopen("/proc/self/smaps", "r");
	char line[512];
	unsigned long start = 0, end = 0;
	int n = 0;

	*total = 0;
	if (!f)
		return -1;
	while (fgets(line, sizeof(line), f)) {
		unsigned long s, e;
		if (sscanf(line, "%lx-%lx ", &s, &e) == 2 && strchr(line, '-') &&
		    line[0] != 'V') {
			start = s;
			end = e;
			continue;
		}
		if (strncmp(line, "VmFlags:", 8) == 0 &&
		    (strstr(line, " dp ") || strstr(line, " dp\n"))) {
			n++;
			*total += end - start;
			drop_addr = (void *)start;
			drop_len = end - start;
		}
	}
	fclose(f);
	return n;
}

int main(int argc, char **argv)
{
	const char *mode = argc > 1 ? argv[1] : "raise";
	unsigned long n = argc > 2 ? strtoul(argv[2], NULL, 0) : 100;
	unsigned long k = argc > 3 ? strtoul(argv[3], NULL, 0) : n / 2;
	int segv = !strcmp(mode, "segv") || !strcmp(mode, "segv-drop");
	int drop = !strcmp(mode, "segv-drop");
	int itimer = !strcmp(mode, "itimer");
	struct tally t = { 0 };
	unsigned char buf[LEN];
	struct sigaction sa;
	int ndrop = -1;
	size_t drop_total = 0;

	if (!segv && !itimer && strcmp(mode, "raise")) {
		fprintf(stderr, "usage: %s raise|segv|segv-drop|itimer [N] [K]\n",
			argv[0]);
		return 2;
	}
	if (segv && (k == 0 || k >= n)) {
		fprintf(stderr, "segv modes need 0 < K < N (the state must exist)\n");
		return 2;
	}
	page_size = sysconf(_SC_PAGESIZE);
	memset(&sa, 0, sizeof(sa));
	sigemptyset(&sa.sa_mask);
	if (segv) {
		sa.sa_sigaction = on_segv;
		sa.sa_flags = SA_SIGINFO;
		sigaction(SIGSEGV, &sa, NULL);
		trap_page = mmap(NULL, (size_t)page_size, PROT_NONE,
				 MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
		if (trap_page == MAP_FAILED)
			return 2;
	} else {
		sa.sa_handler = on_signal;
		sigaction(itimer ? SIGALRM : SIGUSR1, &sa, NULL);
	}
	if (itimer) {
		struct itimerval it = { { 0, (long)k }, { 0, (long)k } };
		setitimer(ITIMER_REAL, &it, NULL);
	}

	for (unsigned long i = 0; i < n; i++) {
		unsigned char *p = buf;
		if (segv && i == k) {
			ndrop = find_droppable(&drop_total);
			if (!drop)
				drop_addr = NULL;
			p = trap_page;
		} else {
			memset(buf, POISON, sizeof(buf));
		}
		if (!segv && !itimer && i == k)
			raise(SIGUSR1);
		tally_add(&t, getrandom(p, LEN, 0), LEN, p);
	}
	if (itimer) {
		struct itimerval off = { { 0, 0 }, { 0, 0 } };
		setitimer(ITIMER_REAL, &off, NULL);
		fprintf(stderr, "handler_calls=%lu\n", handler_tally.calls);
		printf("mode=itimer failed=%lu short=%lu zero_words=%lu\n",
		       t.failed, t.short_reads, t.zero_words);
		printf("handler: failed=%lu short=%lu zero_words=%lu\n",
		       handler_tally.failed, handler_tally.short_reads,
		       handler_tally.zero_words);
		return tally_ok(&t) && tally_ok(&handler_tally) ? 0 : 1;
	}
	printf("mode=%s ", mode);
	tally_print(NULL, &t);
	tally_print("handler", &handler_tally);
	if (segv)
		printf("faults=%d droppable_mappings=%d droppable_bytes=%zu\n",
		       (int)faults, ndrop, drop_total);
	return tally_ok(&t) && tally_ok(&handler_tally) &&
	       handler_tally.calls == 1 && (!segv || faults == 1) ? 0 : 1;
}
