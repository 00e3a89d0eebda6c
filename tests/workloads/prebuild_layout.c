/* Memory built ahead on a migration's destination: areas whose layout changes between
 * pre-dump iterations, each checked whole after the move.
 *
 *   prebuild_layout [AT_HEX]
 *
 * Areas (private anonymous, every page holding its address and a generation): A written a
 * little every tick; B mprotected read-only, C mremapped elsewhere, D munmapped, E split by
 * an munmap of its middle, F new, G zapped with MADV_DONTNEED (it must come back empty),
 * each at SIGUSR2 ("layout changed"). AT_HEX: one more area X mapped at exactly that address
 * (MAP_FIXED_NOREPLACE), "at failed" when it cannot be. SIGUSR1: "full check ok" or FAIL.
 */
#define _GNU_SOURCE
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#define TICK_NS (20 * 1000000L)
#include "rst_log.h"

#define PG 4096UL
#define NP 256                      /* pages per area (1 MiB) */

struct area { char *p; size_t pages; unsigned gen; int zero; uint64_t tag; };   /* tag: its pattern, wherever it moves */
enum { A, B, C, D, E1, E2, F, G, X, N };
static struct area ar[N];
static volatile sig_atomic_t full_check, change;

static void on_usr1(int sig) { (void)sig; full_check = 1; }
static void on_usr2(int sig) { (void)sig; change = 1; }

static uint64_t word(uint64_t tag, size_t off, unsigned gen) { return ((tag + off) * 0x9e3779b97f4a7c15ULL) ^ gen; }

static void fill(struct area *a)
{
    for (size_t i = 0; i < a->pages * PG; i += 512)
        *(uint64_t *)(a->p + i) = word(a->tag, i, a->gen);
}

static long wrong(const struct area *a)
{
    long bad = 0;
    for (size_t i = 0; i < a->pages * PG; i += 512)
        bad += *(uint64_t *)(a->p + i) != (a->zero ? 0 : word(a->tag, i, a->gen));
    return bad;
}

static char *anon(size_t pages)
{
    char *p = mmap(0, pages * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    return p == MAP_FAILED ? 0 : p;
}

int main(int argc, char **argv)
{
    signal(SIGUSR1, on_usr1);
    signal(SIGUSR2, on_usr2);
    for (int i = A; i <= G; i++) {
        if (i == E2 || i == F)
            continue;
        ar[i].pages = i == E1 ? 3 * NP : NP;
        ar[i].tag = (uint64_t)i << 40;
        if (!(ar[i].p = anon(ar[i].pages)))
            return 1;
        fill(&ar[i]);
    }
    if (argc > 1) {
        char *want = (char *)strtoull(argv[1], 0, 16);
        char *p = mmap(want, NP * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED_NOREPLACE, -1, 0);
        if (p != want) {
            say("at failed\n");
            return 1;
        }
        ar[X] = (struct area){ p, NP, 7, 0, (uint64_t)X << 40 };
        fill(&ar[X]);
    }
    say("ready\n");
    uint64_t tick = 0;
    for (;;) {
        ar[A].gen++;
        fill(&ar[A]);
        if (change) {
            change = 0;
            mprotect(ar[B].p, ar[B].pages * PG, PROT_READ);
            char *to = anon(2 * NP);                         /* a free spot, then C moves there */
            munmap(to, 2 * NP * PG);
            ar[C].p = mremap(ar[C].p, NP * PG, NP * PG, MREMAP_MAYMOVE | MREMAP_FIXED, to + NP * PG);
            munmap(ar[D].p, NP * PG);
            ar[D].pages = 0;
            munmap(ar[E1].p + NP * PG, NP * PG);            /* E: two areas of NP pages now */
            ar[E2] = (struct area){ ar[E1].p + 2 * NP * PG, NP, ar[E1].gen, 0, ar[E1].tag + 2 * NP * PG };
            ar[E1].pages = NP;
            ar[F] = (struct area){ anon(NP), NP, 3, 0, (uint64_t)F << 40 };
            fill(&ar[F]);
            madvise(ar[G].p, NP * PG, MADV_DONTNEED);
            ar[G].zero = 1;
            say("layout changed\n");
        }
        if (full_check) {
            full_check = 0;
            long bad = 0;
            for (int i = 0; i < N; i++)
                if (ar[i].p && ar[i].pages)
                    bad += wrong(&ar[i]);
            if (bad)
                FAIL("full check: %ld words wrong\n", bad);
            else
                say("full check ok\n");
        }
        say("tick %lu ok\n", (unsigned long)++tick);
        tick_sleep();
    }
}
