/* A target for the final-dump tests: every kind of memory a dump must handle.
 *
 *   dump_mix PRIVATE_FILE SHARED_FILE
 *
 * - 32 pages of private anonymous memory with a pattern
 * - 2 pages with data, the second made PROT_NONE afterwards (its own VMA)
 * - 16 pages of MAP_SHARED|MAP_ANONYMOUS memory: pages 2, 5 and 12 written, then the first
 *   4 pages unmapped, so the remaining VMA starts at byte offset 4 * 4096 of the object
 * - PRIVATE_FILE mapped MAP_PRIVATE (page 1 written: a COW copy), SHARED_FILE mapped
 *   MAP_SHARED read-write (page 0 written)
 * - one extra thread parked in pause()
 * Prints "ready anon=.. none=.. shared=.. priv=.. shmap=..", then waits on stdin ("quit").
 */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

#define PG 4096UL

static void fill(char *p, size_t pages, uint64_t seed)
{
	for (size_t i = 0; i < pages; i++) {
		uint64_t *w = (uint64_t *)(p + i * PG);
		for (size_t j = 0; j < PG / 8; j++)
			w[j] = ((uint64_t)(uintptr_t)&w[j] * 0x9E3779B97F4A7C15ULL) ^ seed;
	}
}

static void *map(size_t len, int prot, int flags, int fd)
{
	void *p = mmap(NULL, len, prot, flags, fd, 0);
	if (p == MAP_FAILED) { perror("mmap"); exit(1); }
	return p;
}

static void *sleeper(void *arg)
{
	(void)arg;
	for (;;)
		pause();
	return NULL;
}

int main(int argc, char **argv)
{
	char line[64];
	pthread_t th;
	if (argc < 3) { fprintf(stderr, "usage: dump_mix PRIVATE_FILE SHARED_FILE\n"); return 2; }

	char *anon = map(32 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	fill(anon, 32, 0xA);
	char *none = map(2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1);
	fill(none, 2, 0xB);
	mprotect(none + PG, PG, PROT_NONE);

	char *shared = map(16 * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1);
	fill(shared + 2 * PG, 1, 0xC2);
	fill(shared + 5 * PG, 1, 0xC5);
	fill(shared + 12 * PG, 1, 0xCC);
	munmap(shared, 4 * PG);

	int pf = open(argv[1], O_RDONLY);
	int sf = open(argv[2], O_RDWR);
	if (pf < 0 || sf < 0) { perror("open"); return 1; }
	char *priv = map(2 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, pf);
	char *shmap = map(PG, PROT_READ | PROT_WRITE, MAP_SHARED, sf);
	close(pf);
	close(sf);
	memset(priv + PG, 0x5A, PG);
	memcpy(shmap, "written through a shared mapping", 32);

	pthread_create(&th, NULL, sleeper, NULL);
	setvbuf(stdout, 0, _IOLBF, 0);
	printf("ready anon=%#lx none=%#lx shared=%#lx priv=%#lx shmap=%#lx\n", (unsigned long)anon,
	       (unsigned long)none, (unsigned long)(shared + 4 * PG), (unsigned long)priv,
	       (unsigned long)shmap);
	while (fgets(line, sizeof line, stdin)) {
		if (!strncmp(line, "quit", 4))
			return 0;
		printf("?\n");
	}
	return 0;
}
