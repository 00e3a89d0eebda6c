/* Shared anonymous memory changed behind write tracking's back (tests/tracking/test_blind_spots.py).
 *
 * blind_shared PAGES: maps PAGES shared anonymous pages (and 64 private ones), fills them
 * with generation 1, makes a writer that maps the same object outside the target's tree (a
 * grandchild whose parent exits at once: a tree dump leaves it out; the test, a subreaper,
 * adopts it), then both wait for signals
 * (stdout is a log file; SIGUSR1/SIGUSR2 are blocked and taken with sigwaitinfo):
 *
 *   target SIGUSR1  print "sum S zero Z" of the shared region (Z: pages reading all zero)
 *   target SIGUSR2  MADV_REMOVE the first PAGES/2 shared pages; print "removed N"
 *   child  SIGUSR1  write generation G+1 into every shared page; print "child wrote G sum S"
 *
 * Word j of the region at generation g is (j * GOLDEN) ^ g; S = sum of word[j] * (2j + 1)
 * mod 2^64, printed as 16 hex digits. The test kills and reaps the writer.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <sys/wait.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define PG 4096UL
#define GOLDEN 0x9E3779B97F4A7C15ULL

static uint64_t *shm;
static size_t pages, words;

static void fill(uint64_t gen)
{
	for (size_t j = 0; j < words; j++)
		shm[j] = ((uint64_t)j * GOLDEN) ^ gen;
}

static uint64_t sum(size_t *zero)
{
	uint64_t s = 0;
	*zero = 0;
	for (size_t p = 0; p < pages; p++) {
		int nonzero = 0;
		for (size_t k = 0; k < PG / 8; k++) {
			size_t j = p * (PG / 8) + k;
			s += shm[j] * (2 * (uint64_t)j + 1);
			nonzero |= shm[j] != 0;
		}
		*zero += !nonzero;
	}
	return s;
}

static int next_signal(const sigset_t *set)
{
	for (;;) {
		int sig = sigwaitinfo(set, NULL);
		if (sig > 0)
			return sig;
	}
}

int main(int argc, char **argv)
{
	pages = argc > 1 ? strtoul(argv[1], NULL, 0) : 256;
	words = pages * PG / 8;
	setvbuf(stdout, NULL, _IOLBF, 0);
	char *priv = mmap(NULL, 64 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
	shm = mmap(NULL, pages * PG, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
	if (priv == MAP_FAILED || shm == MAP_FAILED) {
		perror("FAIL mmap");
		return 1;
	}
	memset(priv, 0x33, 64 * PG);
	fill(1);
	sigset_t set;
	sigemptyset(&set);
	sigaddset(&set, SIGUSR1);
	sigaddset(&set, SIGUSR2);
	sigprocmask(SIG_BLOCK, &set, NULL);
	size_t zero;
	int report[2];
	if (pipe(report) < 0) {
		perror("FAIL pipe");
		return 1;
	}
	/* the writer is a grandchild whose parent exits at once: outside the target's tree */
	pid_t middle = fork(), child = -1;
	if (middle == 0) {
		child = fork();
		if (child != 0) {
			if (write(report[1], &child, sizeof child) != sizeof child)
				_exit(1);
			_exit(child < 0);
		}
		close(report[0]);
		close(report[1]);
		uint64_t gen = 1;
		for (;;) {
			if (next_signal(&set) == SIGUSR1) {
				fill(++gen);
				uint64_t s = sum(&zero);
				printf("child wrote %llu sum %016llx\n", (unsigned long long)gen,
				       (unsigned long long)s);
			}
		}
	}
	close(report[1]);
	if (middle < 0 || read(report[0], &child, sizeof child) != sizeof child || child < 0) {
		perror("FAIL fork");
		return 1;
	}
	close(report[0]);
	waitpid(middle, NULL, 0);
	uint64_t s = sum(&zero);
	printf("ready shm=%p pages=%zu child=%d sum=%016llx\n", (void *)shm, pages, (int)child,
	       (unsigned long long)s);
	for (;;) {
		if (next_signal(&set) == SIGUSR1) {
			s = sum(&zero);
			printf("sum %016llx zero %zu\n", (unsigned long long)s, zero);
		} else {
			if (madvise(shm, pages / 2 * PG, MADV_REMOVE))
				perror("FAIL madvise");
			printf("removed %zu\n", pages / 2);
		}
	}
}
