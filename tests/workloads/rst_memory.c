/* Round-trip workload: memory of every kind, verified every tick.
 *
 * Protocol (shared by all rst_* workloads): stdin /dev/null, stdout+stderr a log file
 * opened O_APPEND. Prints "ready" once set up, then every 20 ms "tick N ok" (or
 * "FAIL <reason>" lines, and then keeps going). Everything goes out with write(2).
 *
 * Holds: 4 MiB of private anonymous memory with a seeded pattern (its first 256 KiB
 * rewritten every tick with a generation number), a .data array and a .bss array,
 * 256 small malloc blocks on the brk heap, an sbrk()'d area that grows now and then,
 * a list of malloc blocks that grows and shrinks, a PROT_READ page, and a
 * MAP_SHARED|MAP_ANONYMOUS region (also partly rewritten every tick). Every 5th tick
 * it recurses ~1 MiB deep and checks the result.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS (20 * 1000000L)
#define ANON_SIZE (4UL << 20)
#define ANON_HOT (256UL << 10)          /* rewritten every tick */
#define SHARED_SIZE (256UL << 10)
#define SHARED_HOT (32UL << 10)
#define DATA_WORDS 2048                 /* 16 KiB */
#define BSS_WORDS (64 * 1024)           /* 512 KiB */
#define SMALL_BLOCKS 256
#define SMALL_SIZE 1000
#define GROW_MAX 64
#define SBRK_STEP (64UL << 10)
#define SBRK_MAX 16

#include "rst_log.h"
#undef FAIL                             /* ours also counts the failures */

static unsigned long fails;
#define FAIL(...) do { fails++; say("FAIL " __VA_ARGS__); } while (0)

static inline uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

/* value of word i of an area with this seed at generation gen */
static inline uint64_t pat(uint64_t seed, uint64_t i, uint64_t gen)
{
    return mix(seed * 0x100000001b3ULL + i) + gen;
}

static void fill(uint64_t *p, size_t words, uint64_t seed, uint64_t gen)
{
    for (size_t i = 0; i < words; i++)
        p[i] = pat(seed, i, gen);
}

/* index of the first wrong word, or -1 */
static long check(const uint64_t *p, size_t words, uint64_t seed, uint64_t gen)
{
    for (size_t i = 0; i < words; i++)
        if (p[i] != pat(seed, i, gen))
            return (long)i;
    return -1;
}

/* .data: has an initializer, so it lives in the file-backed, COW'd data segment */
static uint64_t data_arr[DATA_WORDS] = { 1, 2, 3, 4, 5, 6, 7, 8 };
/* .bss */
static uint64_t bss_arr[BSS_WORDS];

static uint64_t *anon, *shared, *ro;
static uint64_t *small[SMALL_BLOCKS];
static struct { uint64_t *p; size_t words; uint64_t seed; } grow[GROW_MAX];
static int ngrow;
static char *sbrk_base[SBRK_MAX];
static int nsbrk;

static uint64_t gen;          /* generation of the hot parts */
static unsigned long tick;

enum { S_ANON = 11, S_SHARED, S_RO, S_DATA, S_BSS, S_SMALL = 1000, S_GROW = 5000, S_SBRK = 9000 };

/* ~1 MiB of stack: 2048 frames of 512 bytes */
static uint64_t __attribute__((noinline)) recurse(int depth, uint64_t acc)
{
    volatile uint64_t frame[62];
    for (int i = 0; i < 62; i++)
        frame[i] = mix(acc + i);
    uint64_t sum = 0;
    if (depth > 0)
        sum = recurse(depth - 1, frame[depth % 62]);
    for (int i = 0; i < 62; i++)
        sum += frame[i];
    return sum;
}

static uint64_t recurse_expected(int depth, uint64_t acc)
{
    uint64_t sums[2049], accs[2049];
    for (int d = depth; d >= 0; d--) {
        accs[d] = acc;
        if (d > 0)
            acc = mix(acc + (uint64_t)(d % 62));
    }
    uint64_t below = 0;
    for (int d = 0; d <= depth; d++) {
        uint64_t s = below;
        for (int i = 0; i < 62; i++)
            s += mix(accs[d] + i);
        sums[d] = s;
        below = s;
    }
    return sums[depth];
}

static void verify_all(void)
{
    long bad;
    if ((bad = check(anon, ANON_HOT / 8, S_ANON, gen)) >= 0)
        FAIL("anon hot word %ld gen %llu\n", bad, (unsigned long long)gen);
    if ((bad = check(anon + ANON_HOT / 8, (ANON_SIZE - ANON_HOT) / 8, S_ANON + 100, 0)) >= 0)
        FAIL("anon cold word %ld\n", bad);
    if ((bad = check(shared, SHARED_HOT / 8, S_SHARED, gen)) >= 0)
        FAIL("shared hot word %ld\n", bad);
    if ((bad = check(shared + SHARED_HOT / 8, (SHARED_SIZE - SHARED_HOT) / 8, S_SHARED + 100, 0)) >= 0)
        FAIL("shared cold word %ld\n", bad);
    if ((bad = check(ro, 4096 / 8, S_RO, 0)) >= 0)
        FAIL("read-only page word %ld\n", bad);
    if ((bad = check(data_arr, DATA_WORDS, S_DATA, gen)) >= 0)
        FAIL(".data word %ld\n", bad);
    if ((bad = check(bss_arr, BSS_WORDS / 2, S_BSS, gen)) >= 0)
        FAIL(".bss hot word %ld\n", bad);
    if ((bad = check(bss_arr + BSS_WORDS / 2, BSS_WORDS / 2, S_BSS + 100, 0)) >= 0)
        FAIL(".bss cold word %ld\n", bad);
    for (int b = 0; b < SMALL_BLOCKS; b++)
        if ((bad = check(small[b], SMALL_SIZE / 8, S_SMALL + b, 0)) >= 0)
            FAIL("heap block %d word %ld\n", b, bad);
    for (int g = 0; g < ngrow; g++)
        if ((bad = check(grow[g].p, grow[g].words, grow[g].seed, 0)) >= 0)
            FAIL("grown block %d word %ld\n", g, bad);
    for (int s = 0; s < nsbrk; s++)
        if ((bad = check((uint64_t *)sbrk_base[s], SBRK_STEP / 8, S_SBRK + s, 0)) >= 0)
            FAIL("sbrk area %d word %ld\n", s, bad);
}

static void mutate(void)
{
    gen++;
    fill(anon, ANON_HOT / 8, S_ANON, gen);
    fill(shared, SHARED_HOT / 8, S_SHARED, gen);
    fill(data_arr, DATA_WORDS, S_DATA, gen);
    fill(bss_arr, BSS_WORDS / 2, S_BSS, gen);
}

static void heap_churn(void)
{
    /* grow a list of malloc blocks; drop the oldest half when it is full */
    if (ngrow == GROW_MAX) {
        for (int g = 0; g < GROW_MAX / 2; g++)
            free(grow[g].p);
        memmove(grow, grow + GROW_MAX / 2, sizeof grow[0] * (GROW_MAX / 2));
        ngrow = GROW_MAX / 2;
    }
    size_t words = 64 + (tick * 37) % 2000;
    uint64_t *p = malloc(words * 8);
    if (!p) {
        FAIL("malloc %zu words\n", words);
        return;
    }
    grow[ngrow].p = p;
    grow[ngrow].words = words;
    grow[ngrow].seed = S_GROW + tick;
    fill(p, words, S_GROW + tick, 0);
    ngrow++;
}

static void brk_grow(void)
{
    if (nsbrk == SBRK_MAX)
        return;
    void *cur = sbrk(0);
    char *p = sbrk(SBRK_STEP);
    if (p == (void *)-1) {
        FAIL("sbrk: %s\n", strerror(errno));
        return;
    }
    if (p != cur)
        FAIL("sbrk returned %p, break was %p\n", (void *)p, cur);
    if (sbrk(0) != p + SBRK_STEP)
        FAIL("break %p after growing from %p\n", sbrk(0), (void *)p);
    sbrk_base[nsbrk] = p;
    fill((uint64_t *)p, SBRK_STEP / 8, S_SBRK + nsbrk, 0);
    nsbrk++;
}

int main(void)
{
    anon = mmap(NULL, ANON_SIZE, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    shared = mmap(NULL, SHARED_SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0);
    ro = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (anon == MAP_FAILED || shared == MAP_FAILED || ro == MAP_FAILED) {
        say("FAIL mmap: %s\n", strerror(errno));
        return 1;
    }
    fill(anon, ANON_HOT / 8, S_ANON, 0);
    fill(anon + ANON_HOT / 8, (ANON_SIZE - ANON_HOT) / 8, S_ANON + 100, 0);
    fill(shared, SHARED_HOT / 8, S_SHARED, 0);
    fill(shared + SHARED_HOT / 8, (SHARED_SIZE - SHARED_HOT) / 8, S_SHARED + 100, 0);
    fill(ro, 4096 / 8, S_RO, 0);
    if (mprotect(ro, 4096, PROT_READ) != 0) {
        say("FAIL mprotect: %s\n", strerror(errno));
        return 1;
    }
    fill(data_arr, DATA_WORDS, S_DATA, 0);
    fill(bss_arr, BSS_WORDS / 2, S_BSS, 0);
    fill(bss_arr + BSS_WORDS / 2, BSS_WORDS / 2, S_BSS + 100, 0);
    for (int b = 0; b < SMALL_BLOCKS; b++) {
        small[b] = malloc(SMALL_SIZE);
        fill(small[b], SMALL_SIZE / 8, S_SMALL + b, 0);
    }
    brk_grow();
    verify_all();
    say("ready\n");

    for (;;) {
        tick_sleep();
        tick++;
        verify_all();
        if (tick % 5 == 0) {
            uint64_t want = recurse_expected(2000, tick), got = recurse(2000, tick);
            if (got != want)
                FAIL("recursion sum %llx, want %llx\n", (unsigned long long)got,
                     (unsigned long long)want);
        }
        if (tick % 3 == 0)
            heap_churn();
        if (tick % 7 == 0)
            brk_grow();
        mutate();
        verify_all();
        say("tick %lu ok\n", tick);
    }
}
