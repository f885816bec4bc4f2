/* Let glibc's own dynamic loader resolve symbols in a vDSO image file.
 *
 *   vdso_dlopen IMAGE NAME[@VERSION]... [params]
 *
 * dlopen()s the image (a prelinked vDSO maps like any shared object: one
 * PT_LOAD, a read-only PT_DYNAMIC, no relocations) and looks every NAME up
 * through dlvsym (with VERSION) or dlsym, which run the loader's real lookup:
 * .gnu.hash (or .hash), .dynsym, .gnu.version and .gnu.version_d.  Prints one
 * line per name, "NAME[@VERSION] +0xOFFSET" from the load base or
 * "NAME[@VERSION] -".  The word `params` calls __vdso_getrandom@LINUX_2.6's
 * params query instead (6.11 ABI: buffer, len and flags 0, opaque_len ~0),
 * which touches no vvar data, and prints "params ret=R size=S prot=P flags=F". */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <link.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>

struct vgetrandom_opaque_params {
	uint32_t size_of_opaque_state;
	uint32_t mmap_prot;
	uint32_t mmap_flags;
	uint32_t reserved[13];
};

typedef long (*vgetrandom_t)(void *buf, size_t len, unsigned int flags, void *state, size_t state_len);

static void params_query(void *h)
{
	vgetrandom_t fn = (vgetrandom_t)dlvsym(h, "__vdso_getrandom", "LINUX_2.6");
	struct vgetrandom_opaque_params params;
	memset(&params, 0xff, sizeof(params));
	if (!fn) {
		printf("params -\n");
		return;
	}
	long ret = fn(NULL, 0, 0, &params, ~0UL);
	printf("params ret=%ld size=%u prot=%#x flags=%#x\n", ret, params.size_of_opaque_state,
	       params.mmap_prot, params.mmap_flags);
}

int main(int argc, char **argv)
{
	if (argc < 2) {
		fprintf(stderr, "usage: %s IMAGE NAME[@VERSION]...\n", argv[0]);
		return 2;
	}
	void *h = dlopen(argv[1], RTLD_NOW | RTLD_LOCAL);
	if (!h) {
		printf("dlopen: %s\n", dlerror());
		return 1;
	}
	struct link_map *map;
	if (dlinfo(h, RTLD_DI_LINKMAP, &map)) {
		printf("dlinfo: %s\n", dlerror());
		return 1;
	}
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "params")) {
			params_query(h);
			continue;
		}
		char name[256];
		snprintf(name, sizeof(name), "%s", argv[i]);
		char *version = strchr(name, '@');
		if (version)
			*version++ = '\0';
		void *p = version ? dlvsym(h, name, version) : dlsym(h, name);
		if (p)
			printf("%s +%#lx\n", argv[i], (unsigned long)((uintptr_t)p - map->l_addr));
		else
			printf("%s -\n", argv[i]);
	}
	return 0;
}
