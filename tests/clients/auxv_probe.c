/* auxv_probe: what exec left on the stack, printed without any libc.
 *
 * Built with -nostdlib -static (host gcc, no glibc needed), so it runs the
 * same natively and under `faultpath exec`.  Prints, one per line:
 *   sp_mod16 N           rsp % 16 at _start
 *   argc N, argv[i] S, env[i] S
 *   aux TYPE VALUE       every auxv entry, in order (AT_NULL last)
 *   random HEX           the 16 bytes at AT_RANDOM
 *   execfn S, platform S the strings AT_EXECFN and AT_PLATFORM point at
 *   vdso_magic HEX       the first 4 bytes at AT_SYSINFO_EHDR
 *   enosys N             what syscall 140 (getpriority) returns... unless the
 *                        kernel implements it (natively it does: >= 0)
 * and exits with status 7.
 */
typedef unsigned long u64;

static long sys3(long n, long a, long b, long c)
{
	long r;
	__asm__ volatile ("syscall" : "=a"(r) : "a"(n), "D"(a), "S"(b), "d"(c) : "rcx", "r11", "memory");
	return r;
}

static u64 slen(const char *s)
{
	u64 n = 0;
	while (s[n])
		n++;
	return n;
}

static void put(const char *s)
{
	sys3(1, 1, (long)s, (long)slen(s));
}

static void putnum(long v)
{
	char b[24];
	int i = 23;
	int neg = v < 0;
	u64 u = neg ? -(u64)v : (u64)v;
	b[i] = 0;
	do {
		b[--i] = '0' + u % 10;
		u /= 10;
	} while (u);
	if (neg)
		b[--i] = '-';
	put(b + i);
}

static void puthex(const unsigned char *p, int n)
{
	static const char d[] = "0123456789abcdef";
	char b[2];
	for (int i = 0; i < n; i++) {
		b[0] = d[p[i] >> 4];
		b[1] = d[p[i] & 15];
		sys3(1, 1, (long)b, 2);
	}
}

void probe(long *sp, long entry_sp)
{
	long argc = sp[0];
	char **argv = (char **)(sp + 1);
	char **envp = argv + argc + 1;
	u64 *aux;
	int n = 0;

	put("sp_mod16 "); putnum(entry_sp & 15); put("\n");
	put("argc "); putnum(argc); put("\n");
	for (long i = 0; i < argc; i++) {
		put("argv "); put(argv[i]); put("\n");
	}
	while (envp[n]) {
		put("env "); put(envp[n]); put("\n");
		n++;
	}
	aux = (u64 *)(envp + n + 1);
	for (int i = 0;; i += 2) {
		put("aux "); putnum((long)aux[i]); put(" "); putnum((long)aux[i + 1]); put("\n");
		if (aux[i] == 25) {
			put("random "); puthex((const unsigned char *)aux[i + 1], 16); put("\n");
		} else if (aux[i] == 31) {
			put("execfn "); put((const char *)aux[i + 1]); put("\n");
		} else if (aux[i] == 15) {
			put("platform "); put((const char *)aux[i + 1]); put("\n");
		} else if (aux[i] == 33) {
			put("vdso_magic "); puthex((const unsigned char *)aux[i + 1], 4); put("\n");
		}
		if (aux[i] == 0)
			break;
	}
	put("enosys "); putnum(sys3(140, 0, 0, 0)); put("\n");
	sys3(231, 7, 0, 0);
}

__asm__(".globl _start\n"
	"_start:\n"
	"	mov %rsp, %rdi\n"
	"	mov %rsp, %rsi\n"
	"	and $-16, %rsp\n"
	"	call probe\n"
	"	hlt\n");
