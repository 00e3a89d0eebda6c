/* Lazy-restore proof workload: fills SIZE MiB with a pattern, says "ready", waits until the
 * file GO exists (the test makes it once the lazy restore returned), then, while the pages
 * are still coming in: forks a child that checks everything, munmaps one chunk, discards
 * another (madvise DONTNEED: zeros), mremaps a third elsewhere, makes a fourth read-only
 * (the area split in three VMAs), checks a quarter from a
 * second thread and the rest itself. Prints "ok ..." or "FAIL ..." lines. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static uint64_t *mem;
static size_t words;
static volatile int sink;

static uint64_t pat(size_t i) { return (i * 0x9E3779B97F4A7C15ull) ^ 0x5eed5eed12345678ull; }

static long check(const uint64_t *p, size_t from, size_t to, size_t base)
{
    long bad = 0;
    for (size_t i = from; i < to; i++)
        if (p[i - base] != pat(i)) bad++;
    return bad;
}

struct part { size_t from, to; long bad; };

static void *checker(void *arg)
{
    struct part *pt = arg;
    pt->bad = check(mem, pt->from, pt->to, 0);
    return NULL;
}

static double now(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec + ts.tv_nsec / 1e9;
}

int main(int argc, char **argv)
{
    size_t size = (size_t)atol(argv[1]) << 20;
    const char *go = argv[2];
    words = size / 8;
    mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) { perror("mmap"); return 1; }
    for (size_t i = 0; i < words; i++) mem[i] = pat(i);
    char *small = malloc(4096);
    strcpy(small, "small heap data");
    printf("ready %p\n", (void *)mem);
    fflush(stdout);
    struct stat st;
    while (stat(go, &st) != 0) usleep(1000);
    double t0 = now();

    size_t chunk = words / 16;               /* 1/16 of the area, in words */
    /* a child checks all of it while it still comes in */
    pid_t child = fork();
    if (child == 0) {
        long bad = check(mem, 0, words, 0);
        if (bad) { printf("FAIL child: %ld bad words\n", bad); fflush(stdout); _exit(1); }
        _exit(0);
    }
    /* chunk 2: unmapped; chunk 5: discarded (zeros now); chunk 9: moved elsewhere */
    if (munmap(mem + 2 * chunk, chunk * 8)) { printf("FAIL munmap\n"); return 1; }
    if (madvise(mem + 5 * chunk, chunk * 8, MADV_DONTNEED)) { printf("FAIL madvise\n"); return 1; }
    /* to a fresh place (MREMAP_FIXED): the kernel really moves it, and says so (REMAP) */
    void *spot = mmap(NULL, chunk * 8, PROT_NONE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint64_t *moved = mremap(mem + 9 * chunk, chunk * 8, chunk * 8, MREMAP_MAYMOVE | MREMAP_FIXED, spot);
    if (moved == MAP_FAILED || (void *)moved == (void *)(mem + 9 * chunk)) { printf("FAIL mremap\n"); return 1; }
    /* most of chunk 13 read-only: the area is split in three VMAs at addresses no copy of
     * the server is aligned to (3 pages in), still lazy */
    if (mprotect(mem + 13 * chunk + 3 * 512, chunk * 8 - 3 * 4096, PROT_READ)) { printf("FAIL mprotect\n"); return 1; }
    struct part pt = {12 * chunk, words, 0};
    pthread_t th;
    pthread_create(&th, NULL, checker, &pt);
    long bad = check(mem, 0, 2 * chunk, 0) + check(mem, 3 * chunk, 5 * chunk, 0)
             + check(mem, 6 * chunk, 9 * chunk, 0) + check(mem, 10 * chunk, 12 * chunk, 0)
             + check(moved, 9 * chunk, 10 * chunk, 9 * chunk);
    long zeros = 0;
    for (size_t i = 5 * chunk; i < 6 * chunk; i++) zeros += mem[i] != 0;
    pthread_join(th, NULL);
    int status = 0;
    waitpid(child, &status, 0);
    double t1 = now();
    if (bad || pt.bad) printf("FAIL %ld bad words, %ld in the thread's part\n", bad, pt.bad);
    if (zeros) printf("FAIL %ld words not zero after MADV_DONTNEED\n", zeros);
    if (!WIFEXITED(status) || WEXITSTATUS(status)) printf("FAIL child status %#x\n", status);
    if (strcmp(small, "small heap data")) printf("FAIL small heap data\n");
    /* written again: the area is whole and the moved chunk works */
    for (size_t i = 0; i < chunk; i++) moved[i] = ~moved[i];
    printf("ok checked %zu MiB in %.1f ms\n", size >> 20, (t1 - t0) * 1e3);
    fflush(stdout);
    for (;;) pause();
}
