/* Migration workload: MIB MiB of private memory rewritten at RATE MB/s, checked whole.
 *
 *   mig_writer MIB RATE_MB_PER_S
 *
 * Every page holds its index and a generation in every word (pattern of both); gen[] (also
 * in this process's memory) says which generation each page must hold. Each 20 ms tick
 * rewrites the next RATE*20ms worth of pages (round robin, generation + 1) and checks 64
 * random pages; "tick N ok" or "FAIL ..." lines on stdout (the rst_* log protocol). SIGUSR1
 * asks for a check of every page: "full check ok N" or FAIL lines.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <sys/mman.h>

#define TICK_NS (20 * 1000000L)
#include "rst_log.h"

#define PG 4096UL
static volatile sig_atomic_t full_check;

static void on_usr1(int sig) { (void)sig; full_check = 1; }

static inline uint64_t word(uint64_t page, uint64_t gen, uint64_t i)
{
    uint64_t x = page * 0x9e3779b97f4a7c15ULL ^ (gen << 32) ^ i;
    return x * 0xbf58476d1ce4e5b9ULL;
}

static void write_page(uint64_t *p, uint64_t page, uint64_t gen)
{
    for (uint64_t i = 0; i < PG / 8; i++)
        p[i] = word(page, gen, i);
}

static int page_ok(const uint64_t *p, uint64_t page, uint64_t gen)
{
    for (uint64_t i = 0; i < PG / 8; i += 61)      /* a sample of words: checks stay cheap */
        if (p[i] != word(page, gen, i))
            return 0;
    return p[PG / 8 - 1] == word(page, gen, PG / 8 - 1);
}

int main(int argc, char **argv)
{
    uint64_t pages = (argc > 1 ? strtoull(argv[1], 0, 0) : 64) << 20 >> 12;
    uint64_t rate = argc > 2 ? strtoull(argv[2], 0, 0) : 50;
    uint64_t per_tick = rate * 1000000 / 50 / PG;
    char *mem = mmap(0, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    uint32_t *gen = calloc(pages, sizeof *gen);
    if (mem == MAP_FAILED || !gen)
        return 1;
    signal(SIGUSR1, on_usr1);
    for (uint64_t i = 0; i < pages; i++)
        write_page((uint64_t *)(mem + i * PG), i, 0);
    say("ready\n");
    uint64_t next = 0, tick = 0, seed = 88172645463325252ULL;
    for (;;) {
        for (uint64_t k = 0; k < per_tick; k++, next = (next + 1) % pages)
            write_page((uint64_t *)(mem + next * PG), next, ++gen[next]);
        int bad = 0;
        for (int k = 0; k < 64; k++) {
            seed ^= seed << 13; seed ^= seed >> 7; seed ^= seed << 17;
            uint64_t i = seed % pages;
            if (!page_ok((uint64_t *)(mem + i * PG), i, gen[i])) {
                FAIL("page %lu does not hold generation %u\n", (unsigned long)i, gen[i]);
                bad = 1;
                break;
            }
        }
        if (full_check) {
            full_check = 0;
            uint64_t wrong = 0;
            for (uint64_t i = 0; i < pages; i++)
                wrong += !page_ok((uint64_t *)(mem + i * PG), i, gen[i]);
            if (wrong)
                FAIL("full check: %lu of %lu pages wrong\n", (unsigned long)wrong, (unsigned long)pages);
            else
                say("full check ok %lu\n", (unsigned long)pages);
        }
        if (!bad)
            say("tick %lu ok\n", (unsigned long)++tick);
        tick_sleep();
    }
}
