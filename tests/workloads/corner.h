/* Shared by the corner_* workloads (tests/restore/test_corners*.py): set some kernel state up,
 * say "ready", wait for SIGUSR1 (blocked from the start, taken with sigwaitinfo: none is
 * lost), check that the state is still what it was, say "FAIL ..." for each difference and
 * "checked N" after round N. stdout is an O_APPEND log file; everything goes through write(2). */
#ifndef CORNER_H
#define CORNER_H
#define TICK_NS (20 * 1000000L)
#include <signal.h>
#include <string.h>
#include "rst_log.h"

static sigset_t corner_usr1;

/* Call first: SIGUSR1 stays blocked so that it waits for wait_usr1. */
static void corner_init(void)
{
    sigemptyset(&corner_usr1);
    sigaddset(&corner_usr1, SIGUSR1);
    sigprocmask(SIG_BLOCK, &corner_usr1, NULL);
}

static void wait_usr1(void)
{
    while (sigwaitinfo(&corner_usr1, NULL) < 0)
        ;
}

#define CHECK(cond, ...) do { if (!(cond)) FAIL(__VA_ARGS__); } while (0)

/* ready, then check() once per SIGUSR1, forever */
#define CORNER_LOOP(check) do {                  \
        say("ready\n");                          \
        for (unsigned round = 1;; round++) {     \
            wait_usr1();                         \
            check();                             \
            say("checked %u\n", round);          \
        }                                        \
    } while (0)

#endif
