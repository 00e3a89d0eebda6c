/* A target with a known memory pattern, driven by commands on stdin.
 *
 *   mem_pattern FILLER_PAGES VICTIM_PAGES
 *
 * Maps a filler region at FILLER (drained first: lowest address) and four victim regions
 * A..D above it, fills every page with a pattern derived from its address and a generation
 * number, prints "ready", then obeys one command per line:
 *   race      at once: munmap A, mprotect B to PROT_NONE, mremap C elsewhere, shrink D to
 *             its first half; print "done"
 *   hide      mprotect B to PROT_NONE (not one byte written); print "hidden"
 *   unhide    make B readable and writable again (still not written); print "shown"
 *   write N G rewrite N pages of the filler (every FILLER_PAGES/N-th page) with generation G
 *   gen       print the generation of every filler page's first word, as a count
 *   exit      exit at once with status 3
 *   quit      exit 0
 */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define FILLER ((char *)0x100000000000UL)
#define VICTIM ((char *)0x200000000000UL)
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

int main(int argc, char **argv)
{
	size_t filler = strtoul(argv[1], 0, 0), victim = strtoul(argv[2], 0, 0);
	char line[256];
	char *f = map_at(FILLER, filler * PG);
	/* victims are separated by one unmapped page so they stay distinct VMAs */
	char *v[4];
	for (int i = 0; i < 4; i++)
		v[i] = map_at(VICTIM + i * (victim + 1) * PG, victim * PG);
	fill(f, filler, 1);
	for (int i = 0; i < 4; i++)
		fill(v[i], victim, 1);
	setvbuf(stdout, 0, _IOLBF, 0);
	printf("ready %p %p\n", (void *)f, (void *)v[0]);
	while (fgets(line, sizeof line, stdin)) {
		if (!strncmp(line, "race", 4)) {
			munmap(v[0], victim * PG);
			mprotect(v[1], victim * PG, PROT_NONE);
			if (mremap(v[2], victim * PG, victim * PG, MREMAP_MAYMOVE | MREMAP_FIXED,
				   (char *)0x300000000000UL) == MAP_FAILED) { perror("mremap"); exit(1); }
			munmap(v[3] + victim / 2 * PG, (victim - victim / 2) * PG);
			printf("done\n");
		} else if (!strncmp(line, "hide", 4)) {
			mprotect(v[1], victim * PG, PROT_NONE);
			printf("hidden\n");
		} else if (!strncmp(line, "unhide", 6)) {
			mprotect(v[1], victim * PG, PROT_READ | PROT_WRITE);
			printf("shown\n");
		} else if (!strncmp(line, "write", 5)) {
			size_t n; uint64_t g;
			sscanf(line + 5, "%zu %lu", &n, &g);
			size_t step = n ? filler / n : 1;
			for (size_t i = 0; i < n; i++)
				fill(f + i * step * PG, 1, g);
			printf("wrote %zu\n", n);
		} else if (!strncmp(line, "exit", 4)) {
			_exit(3);
		} else if (!strncmp(line, "quit", 4)) {
			return 0;
		}
	}
	return 0;
}
