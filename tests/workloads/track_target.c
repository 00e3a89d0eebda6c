/* A target for write-tracking tests, driven by commands on stdin (one reply line each).
 *
 *   track_target FILLER_PAGES
 *
 * Maps a filler region at FILLER, fills every page with a pattern derived from its address
 * and a generation number, prints "ready FILLER", then obeys:
 *   write N G   rewrite N pages of the filler (every FILLER_PAGES/N-th page) with generation G
 *   fill I N G  rewrite filler pages I..I+N-1 with generation G
 *   prot I N P  mprotect filler pages I..I+N-1 to PROT bits P (0: none, 3: read+write)
 *   map N G     mmap N new private anonymous pages (the next free slot above NEWMAP), fill
 *               them with generation G; print "mapped ADDR"
 *   sparse N    mmap N pages at SPARSE, write one word in every 64th page only; "sparse ADDR"
 *   uffd N      map N pages at UREGION, register them with a userfaultfd of its own
 *               (MISSING mode, served by a thread of its own that copies in generation 9
 *               pages), touch the first N/2 of them through it; print "uffd FD"
 *   uwrite N G  rewrite the first N pages of UREGION with generation G
 *   utouch I    read page I of UREGION (a missing page is served by the thread); print
 *               "word HEX" of its first word
 *   uring       create an io_uring instance; print "uring FD"
 *   move I N    mremap filler pages I..I+N-1 to MOVED (contents travel along); "moved ADDR"
 *   mwrite N G  rewrite the first N pages at MOVED with generation G
 *   unmap I N   munmap filler pages I..I+N-1; print "unmapped N"
 *   quit        exit 0
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <linux/io_uring.h>
#include <linux/userfaultfd.h>
#include <poll.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define FILLER ((char *)0x100000000000UL)
#define NEWMAP ((char *)0x400000000000UL)
#define UREGION ((char *)0x500000000000UL)
#define SPARSE ((char *)0x600000000000UL)
#define MOVED ((char *)0x700000000000UL)
#define PG 4096UL

static void fill(char *p, size_t pages, uint64_t gen)
{
	for (size_t i = 0; i < pages; i++) {
		uint64_t *w = (uint64_t *)(p + i * PG);
		for (size_t j = 0; j < PG / 8; j++)
			w[j] = ((uint64_t)(uintptr_t)&w[j] * 0x9E3779B97F4A7C15ULL) ^ gen;
	}
}

static char *map_at(char *addr, size_t len)
{
	char *p = mmap(addr, len, PROT_READ | PROT_WRITE,
		       MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
	if (p == MAP_FAILED) { perror("mmap"); exit(1); }
	return p;
}

static int ufd = -1;
static char *copy_src;

static void *serve(void *arg)
{
	(void)arg;
	for (;;) {
		struct uffd_msg msg;
		ssize_t n = read(ufd, &msg, sizeof msg);
		if (n != sizeof msg) { perror("uffd read"); exit(1); }
		if (msg.event != UFFD_EVENT_PAGEFAULT)
			continue;
		uint64_t addr = msg.arg.pagefault.address & ~(PG - 1);
		/* the pattern of the destination address, generation 9 */
		uint64_t *w = (uint64_t *)copy_src;
		for (size_t j = 0; j < PG / 8; j++)
			w[j] = ((addr + j * 8) * 0x9E3779B97F4A7C15ULL) ^ 9;
		struct uffdio_copy c = { .dst = addr, .src = (uintptr_t)copy_src, .len = PG };
		if (ioctl(ufd, UFFDIO_COPY, &c) < 0) { perror("UFFDIO_COPY"); exit(1); }
	}
	return 0;
}

int main(int argc, char **argv)
{
	size_t filler = strtoul(argv[1], 0, 0);
	size_t newmaps = 0, upages = 0;
	char line[256];
	char *f = map_at(FILLER, filler * PG);
	fill(f, filler, 1);
	setvbuf(stdout, 0, _IOLBF, 0);
	printf("ready %p\n", (void *)f);
	while (fgets(line, sizeof line, stdin)) {
		if (!strncmp(line, "write", 5)) {
			size_t n; uint64_t g;
			sscanf(line + 5, "%zu %lu", &n, &g);
			size_t step = n ? filler / n : 1;
			for (size_t i = 0; i < n; i++)
				fill(f + i * step * PG, 1, g);
			printf("wrote %zu\n", n);
		} else if (!strncmp(line, "fill", 4)) {
			size_t i, n; uint64_t g;
			sscanf(line + 4, "%zu %zu %lu", &i, &n, &g);
			fill(f + i * PG, n, g);
			printf("filled %zu\n", n);
		} else if (!strncmp(line, "prot", 4)) {
			size_t i, n; int prot;
			sscanf(line + 4, "%zu %zu %d", &i, &n, &prot);
			if (mprotect(f + i * PG, n * PG, prot)) { perror("mprotect"); exit(1); }
			printf("prot %d\n", prot);
		} else if (!strncmp(line, "map", 3)) {
			size_t n; uint64_t g;
			sscanf(line + 3, "%zu %lu", &n, &g);
			char *p = map_at(NEWMAP + newmaps++ * (1UL << 30), n * PG);
			fill(p, n, g);
			printf("mapped %p\n", (void *)p);
		} else if (!strncmp(line, "sparse", 6)) {
			size_t n = strtoul(line + 6, 0, 0);
			char *p = map_at(SPARSE, n * PG);
			for (size_t i = 0; i < n; i += 64)
				*(volatile uint64_t *)(p + i * PG) = i + 1;
			printf("sparse %p\n", (void *)p);
		} else if (!strncmp(line, "uffd", 4)) {
			upages = strtoul(line + 4, 0, 0);
			char *u = map_at(UREGION, upages * PG);
			copy_src = mmap(0, PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
			ufd = syscall(SYS_userfaultfd, O_CLOEXEC);
			if (ufd < 0) { perror("userfaultfd"); exit(1); }
			struct uffdio_api api = { .api = UFFD_API };
			if (ioctl(ufd, UFFDIO_API, &api) < 0) { perror("UFFDIO_API"); exit(1); }
			struct uffdio_register reg = {
				.range = { (uintptr_t)u, upages * PG }, .mode = UFFDIO_REGISTER_MODE_MISSING };
			if (ioctl(ufd, UFFDIO_REGISTER, &reg) < 0) { perror("UFFDIO_REGISTER"); exit(1); }
			pthread_t t;
			pthread_create(&t, 0, serve, 0);
			volatile uint64_t sum = 0;
			for (size_t i = 0; i < upages / 2; i++)
				sum += *(volatile uint64_t *)(u + i * PG);
			printf("uffd %d\n", ufd);
		} else if (!strncmp(line, "uwrite", 6)) {
			size_t n; uint64_t g;
			sscanf(line + 6, "%zu %lu", &n, &g);
			fill(UREGION, n, g);
			printf("uwrote %zu\n", n);
		} else if (!strncmp(line, "utouch", 6)) {
			size_t i = strtoul(line + 6, 0, 0);
			printf("word %lx\n", (unsigned long)*(volatile uint64_t *)(UREGION + i * PG));
		} else if (!strncmp(line, "move", 4)) {
			size_t i, n;
			sscanf(line + 4, "%zu %zu", &i, &n);
			char *p = mremap(f + i * PG, n * PG, n * PG, MREMAP_MAYMOVE | MREMAP_FIXED, MOVED);
			if (p == MAP_FAILED) { perror("mremap"); exit(1); }
			printf("moved %p\n", (void *)p);
		} else if (!strncmp(line, "mwrite", 6)) {
			size_t n; uint64_t g;
			sscanf(line + 6, "%zu %lu", &n, &g);
			fill(MOVED, n, g);
			printf("mwrote %zu\n", n);
		} else if (!strncmp(line, "unmap", 5)) {
			size_t i, n;
			sscanf(line + 5, "%zu %zu", &i, &n);
			if (munmap(f + i * PG, n * PG)) { perror("munmap"); exit(1); }
			printf("unmapped %zu\n", n);
		} else if (!strncmp(line, "uring", 5)) {
			struct io_uring_params p;
			memset(&p, 0, sizeof p);
			int fd = syscall(__NR_io_uring_setup, 4, &p);
			printf("uring %d\n", fd);
		} else if (!strncmp(line, "quit", 4)) {
			return 0;
		}
	}
	return 0;
}
