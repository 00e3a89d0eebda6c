/* Round-trip workload: signal state.
 *
 * Protocol: stdin /dev/null, stdout+stderr a log file opened O_APPEND; "ready", then every
 * 20 ms "tick N ok alrm=A", "FAIL <reason>" on a failed check. Everything via write(2).
 *
 * - SIGUSR1: handler installed with SA_ONSTACK|SA_SIGINFO (sa_mask: SIGWINCH) on an
 *   alternate signal stack; it checks that it runs on that stack and counts. Main prints
 *   "usr1 N on altstack" (or a FAIL) for every new SIGUSR1.
 * - SIGUSR2 and SIGRTMIN+2 are blocked; every tick checks the mask with sigprocmask.
 *   A SIGUSR2 sent by the test stays pending: main prints "usr2 pending" the first time
 *   it sees it and fails if it ever stops being pending (or gets delivered).
 * - ITIMER_REAL every 10 ms, SIGALRM counted; a FAIL if the count has not moved during
 *   the last 5 ticks, or if the itimer's interval changed.
 * - sigaltstack() and sigaction(SIGUSR1) are checked every tick as well.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/time.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS (20 * 1000000L)
#define ALTSZ (64 * 1024)

#include "rst_log.h"

static char *altstack;
static volatile sig_atomic_t usr1_count, usr1_offstack, usr1_ssflag_bad, usr2_count;
static volatile unsigned long alrm_count;

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    char here;
    stack_t ss;
    (void)sig; (void)si; (void)uc;
    if (!(&here >= altstack && &here < altstack + ALTSZ))
        usr1_offstack++;
    if (sigaltstack(NULL, &ss) != 0 || !(ss.ss_flags & SS_ONSTACK))
        usr1_ssflag_bad++;
    usr1_count++;
}

static void on_usr2(int sig) { (void)sig; usr2_count++; }
static void on_alrm(int sig) { (void)sig; alrm_count++; }

int main(void)
{
    struct sigaction sa;
    sigset_t block, cur, pend;
    unsigned long tick = 0, alrm_seen = 0, alrm_tick = 0;
    int usr1_reported = 0, usr2_seen = 0;

    altstack = malloc(ALTSZ);
    stack_t ss = { .ss_sp = altstack, .ss_size = ALTSZ, .ss_flags = 0 };
    if (sigaltstack(&ss, NULL) != 0) {
        say("FAIL sigaltstack: %s\n", strerror(errno));
        return 1;
    }

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_ONSTACK | SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGWINCH);
    sigaction(SIGUSR1, &sa, NULL);

    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr2;
    sigaction(SIGUSR2, &sa, NULL);
    sa.sa_handler = on_alrm;
    sigaction(SIGALRM, &sa, NULL);

    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGRTMIN + 2);
    sigprocmask(SIG_BLOCK, &block, NULL);

    struct itimerval it = { { 0, 10000 }, { 0, 10000 } };
    if (setitimer(ITIMER_REAL, &it, NULL) != 0) {
        say("FAIL setitimer: %s\n", strerror(errno));
        return 1;
    }
    say("ready\n");

    for (;;) {
        tick_sleep();
        tick++;

        /* the blocked mask */
        sigprocmask(SIG_BLOCK, NULL, &cur);
        if (!sigismember(&cur, SIGUSR2) || !sigismember(&cur, SIGRTMIN + 2))
            FAIL("SIGUSR2/SIGRTMIN+2 no longer blocked\n");
        if (sigismember(&cur, SIGUSR1) || sigismember(&cur, SIGALRM))
            FAIL("SIGUSR1/SIGALRM blocked\n");
        if (usr2_count)
            FAIL("SIGUSR2 delivered %d times while blocked\n", (int)usr2_count);

        /* a pending SIGUSR2 stays pending */
        sigpending(&pend);
        if (sigismember(&pend, SIGUSR2)) {
            if (!usr2_seen)
                say("usr2 pending\n");
            usr2_seen = 1;
        } else if (usr2_seen) {
            FAIL("SIGUSR2 was pending, is not any more\n");
            usr2_seen = 0;
        }

        /* the alternate stack and the SIGUSR1 action */
        stack_t now;
        if (sigaltstack(NULL, &now) != 0 || now.ss_sp != altstack || now.ss_size != ALTSZ ||
            (now.ss_flags & (SS_DISABLE | SS_ONSTACK)))
            FAIL("sigaltstack sp=%p size=%zu flags=%d\n", now.ss_sp, now.ss_size, now.ss_flags);
        struct sigaction cura;
        sigaction(SIGUSR1, NULL, &cura);
        if (cura.sa_sigaction != on_usr1 || !(cura.sa_flags & SA_ONSTACK) ||
            !(cura.sa_flags & SA_SIGINFO) || !sigismember(&cura.sa_mask, SIGWINCH))
            FAIL("SIGUSR1 action changed: flags %#x\n", (unsigned)cura.sa_flags);

        /* SIGUSR1 deliveries */
        int n = usr1_count;
        while (usr1_reported < n) {
            usr1_reported++;
            if (usr1_offstack)
                FAIL("usr1 %d handler ran off the alternate stack\n", usr1_reported);
            else if (usr1_ssflag_bad)
                FAIL("usr1 %d: sigaltstack did not say SS_ONSTACK\n", usr1_reported);
            else
                say("usr1 %d on altstack\n", usr1_reported);
        }

        /* the interval timer */
        struct itimerval g;
        getitimer(ITIMER_REAL, &g);
        if (g.it_interval.tv_sec != 0 || g.it_interval.tv_usec != 10000)
            FAIL("itimer interval %ld.%06ld\n", (long)g.it_interval.tv_sec,
                 (long)g.it_interval.tv_usec);
        unsigned long a = alrm_count;
        if (a < alrm_seen)
            FAIL("SIGALRM count went down %lu < %lu\n", a, alrm_seen);
        if (a > alrm_seen) {
            alrm_seen = a;
            alrm_tick = tick;
        } else if (tick - alrm_tick >= 5) {
            struct sigaction alrm_act;
            sigaction(SIGALRM, NULL, &alrm_act);
            FAIL("no SIGALRM for %lu ticks (count %lu; itimer value %ld.%06ld, SIGALRM "
                 "pending %d blocked %d handler %s)\n", tick - alrm_tick, a,
                 (long)g.it_value.tv_sec, (long)g.it_value.tv_usec, sigismember(&pend, SIGALRM),
                 sigismember(&cur, SIGALRM),
                 alrm_act.sa_handler == on_alrm ? "ours" :
                 alrm_act.sa_handler == SIG_IGN ? "SIG_IGN" :
                 alrm_act.sa_handler == SIG_DFL ? "SIG_DFL" : "other");
            alrm_tick = tick;
        }
        say("tick %lu ok alrm=%lu\n", tick, a);
    }
}
