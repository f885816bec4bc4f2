/* sigrestart: a signal that interrupts a read blocked on an empty pipe.
 *
 * Usage: sigrestart restart|norestart
 *
 * The parent installs a SIGUSR1 handler (with or without SA_RESTART), forks
 * and reads the pipe; the child sends SIGUSR1 to the parent and exits, which
 * closes the pipe's last write end.  Prints one line:
 *   read=R errno=NAME handled=N
 * Where the read was blocked when the signal came: with SA_RESTART it runs
 * again and sees end of file (read=0 errno=0); without, it fails with
 * EINTR.  (Natively, whether the parent blocks first is timing.)
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

static volatile sig_atomic_t handled;

static void on_usr1(int sig)
{
	(void)sig;
	handled++;
}

int main(int argc, char **argv)
{
	int restart = argc > 1 && !strcmp(argv[1], "restart");
	struct sigaction sa;
	int fds[2];
	char c;

	memset(&sa, 0, sizeof(sa));
	sa.sa_handler = on_usr1;
	sa.sa_flags = restart ? SA_RESTART : 0;
	sigaction(SIGUSR1, &sa, NULL);
	if (pipe(fds) < 0)
		return 2;
	pid_t pid = fork();
	if (pid < 0)
		return 2;
	if (pid == 0) {
		close(fds[0]);
		kill(getppid(), SIGUSR1);
		_exit(0);
	}
	close(fds[1]);
	ssize_t r = read(fds[0], &c, 1);
	int e = errno;
	waitpid(pid, NULL, 0);
	printf("read=%zd errno=%s handled=%d\n", r, r < 0 ? strerrorname_np(e) : "0", (int)handled);
	return 0;
}
