/* Map a vDSO image file the way the kernel maps [vdso] and call its
 * __vdso_getrandom natively: the image page-aligned, read+exec, with the
 * 4-page vvar area right below its ELF header and struct vdso_rng_data
 * (generation u64, is_ready u8) at the start of that area (the 6.15+ layout
 * faultpath's images are built for).
 *
 *   vdso_harness IMAGE OFFSET LEN     OFFSET: of __vdso_getrandom, hex
 *
 * prints "ret=N" and the first 8 output bytes.  The global `image_base` and
 * the empty function image_ready() are for a debugger: break on
 * image_ready, then `add-symbol-file-from-memory image_base`, which reads
 * the ELF image from memory as gdb does for a process's own vDSO. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>

#define PAGE 4096
#define VVAR_PAGES 4
#define STATE_SIZE 144

typedef long (*vgetrandom_t)(void *buf, size_t len, unsigned int flags, void *state, size_t state_len);

volatile uintptr_t image_base;

__attribute__((noinline)) void image_ready(void)
{
	__asm__ volatile("" ::: "memory");
}

static void die(const char *what)
{
	perror(what);
	exit(2);
}

int main(int argc, char **argv)
{
	if (argc != 4) {
		fprintf(stderr, "usage: %s IMAGE OFFSET LEN\n", argv[0]);
		return 2;
	}
	int fd = open(argv[1], O_RDONLY);
	struct stat st;
	if (fd < 0 || fstat(fd, &st) < 0)
		die(argv[1]);
	size_t size = ((size_t)st.st_size + PAGE - 1) / PAGE * PAGE;
	uint8_t *area = mmap(NULL, VVAR_PAGES * PAGE + size, PROT_READ | PROT_WRITE,
			     MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	if (area == MAP_FAILED)
		die("mmap");
	uint8_t *image = area + VVAR_PAGES * PAGE;
	if (read(fd, image, st.st_size) != st.st_size)
		die("read");
	close(fd);
	uint64_t generation = 1;
	memcpy(area, &generation, sizeof(generation));
	area[8] = 1;                                    /* is_ready */
	if (mprotect(image, size, PROT_READ | PROT_EXEC) || mprotect(area, VVAR_PAGES * PAGE, PROT_READ))
		die("mprotect");
	image_base = (uintptr_t)image;
	image_ready();

	void *state = mmap(NULL, PAGE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	size_t len = strtoul(argv[3], NULL, 0);
	unsigned char *buf = calloc(1, len + 8);
	vgetrandom_t fn = (vgetrandom_t)(image + strtoul(argv[2], NULL, 16));
	long ret = fn(buf, len, 0, state, STATE_SIZE);
	printf("ret=%ld", ret);
	for (size_t i = 0; i < 8 && i < len; i++)
		printf(" %02x", buf[i]);
	printf("\n");
	return 0;
}
