/* VMA flags and advice: one 4-page private anonymous area per advice or flag (madvise
 * SEQUENTIAL, RANDOM, DONTFORK, WIPEONFORK, DONTDUMP, HUGEPAGE, NOHUGEPAGE; MAP_LOCKED, mlock,
 * MAP_GROWSDOWN, MAP_NORESERVE), each page holding data (argv[1]: pages per area, default 4). Says "area NAME ADDR" for each, then "ready"
 * (corner.h); each SIGUSR1 checks the data, then forks: the child must not have the
 * DONTFORK area and must read zeros in the WIPEONFORK one. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/wait.h>
#include <unistd.h>
#include "corner.h"

#define PG 4096
static int PAGES = 4;         /* argv[1]: pages per area (64 and more: lazy areas) */

enum { SEQ, RAND, DONTFORK, WIPE, DONTDUMP, HUGE, NOHUGE, LOCKED, MLOCKED, GROWSDOWN, NORESERVE, N };
static const char *names[N] = { "seq", "rand", "dontfork", "wipeonfork", "dontdump", "huge", "nohuge",
                                "locked", "mlocked", "growsdown", "noreserve" };
static const int advice[N] = { MADV_SEQUENTIAL, MADV_RANDOM, MADV_DONTFORK, MADV_WIPEONFORK,
                               MADV_DONTDUMP, MADV_HUGEPAGE, MADV_NOHUGEPAGE, -1, -1, -1, -1 };
static unsigned char *area[N];

static void check(void)
{
    for (int a = 0; a < N; a++)
        for (int p = 0; p < PAGES; p++)
            CHECK(area[a][p * PG] == (unsigned char)(a * 16 + p + 1), "%s page %d lost its data\n", names[a], p);
    pid_t child = fork();
    if (child == 0) {
        unsigned char vec;
        int gone = mincore(area[DONTFORK], PG, &vec) < 0 && errno == ENOMEM;
        _exit((gone ? 0 : 1) | (area[WIPE][0] == 0 ? 0 : 2) | (area[SEQ][0] == 1 ? 0 : 4));
    }
    int status = 0;
    waitpid(child, &status, 0);
    CHECK(WIFEXITED(status) && WEXITSTATUS(status) == 0, "fork child: status %#x\n", status);
}

int main(int argc, char **argv)
{
    if (argc > 1)
        PAGES = atoi(argv[1]);
    corner_init();
    for (int a = 0; a < N; a++) {
        int flags = MAP_PRIVATE | MAP_ANONYMOUS | (a == LOCKED ? MAP_LOCKED : 0) |
                    (a == GROWSDOWN ? MAP_GROWSDOWN : 0) | (a == NORESERVE ? MAP_NORESERVE : 0);
        area[a] = mmap(NULL, PAGES * PG, PROT_READ | PROT_WRITE, flags, -1, 0);
        if (area[a] == MAP_FAILED)
            FAIL("mmap %s: %s\n", names[a], strerror(errno));
        for (int p = 0; p < PAGES; p++)
            area[a][p * PG] = (unsigned char)(a * 16 + p + 1);
        if (advice[a] >= 0 && madvise(area[a], PAGES * PG, advice[a]))
            FAIL("madvise %s: %s\n", names[a], strerror(errno));
        if (a == MLOCKED && mlock(area[a], PAGES * PG))
            FAIL("mlock: %s\n", strerror(errno));
        say("area %s %lx\n", names[a], (unsigned long)area[a]);
    }
    CORNER_LOOP(check);
}
