/* Guard regions (madvise MADV_GUARD_INSTALL, Linux 6.13): pages 2 and 3 of an 8-page
 * private anonymous area are guards (touching one is SIGSEGV), the others hold data.
 * Says "area ADDR", then "ready" (corner.h); each SIGUSR1 checks the data pages. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>
#include "corner.h"

#ifndef MADV_GUARD_INSTALL
#define MADV_GUARD_INSTALL 102
#endif

static unsigned char *area;

static void check(void)
{
    for (int p = 0; p < 8; p++)
        if (p != 2 && p != 3)
            CHECK(area[p * 4096] == p + 1, "page %d lost its data\n", p);
}

int main(void)
{
    corner_init();
    area = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int p = 0; p < 8; p++)
        area[p * 4096] = p + 1;
    if (madvise(area + 2 * 4096, 2 * 4096, MADV_GUARD_INSTALL))
        FAIL("MADV_GUARD_INSTALL: %s\n", strerror(errno));
    say("area %lx\n", (unsigned long)area);
    CORNER_LOOP(check);
}
