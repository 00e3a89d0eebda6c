/* POSIX timers (timer_create) through a restore, ids and all:
 *  - t0: CLOCK_MONOTONIC, SIGEV_SIGNAL SIGUSR2 with value 0xfeed, 40 s left, 9 s interval;
 *  - t1: CLOCK_REALTIME, SIGEV_NONE, 25 s left, no interval;
 *  - t2 made and deleted (a gap in the ids), t3: CLOCK_BOOTTIME, SIGEV_THREAD_ID to a
 *    second thread, SIGRTMIN+2, disarmed;
 *  - t4: CLOCK_MONOTONIC, SIGRTMIN+3 (blocked), every 1 ms: overruns pile up.
 * Checks after SIGUSR1 (corner.h): the same ids answer timer_gettime with the same clocks'
 * values (time left at most what it was), intervals equal; t3 still signals the thread; a
 * timer id that did not exist (t2) still does not; a new timer gets a free id. */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>
#include "corner.h"

static timer_t t0, t1, t2, t3, t4;
static volatile int thread_got;
static pid_t thread_tid;

static void *waiter(void *arg)
{
    (void)arg;
    thread_tid = syscall(SYS_gettid);
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGRTMIN + 2);
    for (;;) {
        siginfo_t si;
        if (sigwaitinfo(&s, &si) == SIGRTMIN + 2 && si.si_code == SI_TIMER)
            thread_got++;
    }
    return NULL;
}

static timer_t make(clockid_t clk, int notify, int sig, long value, pid_t tid)
{
    struct sigevent sev = { 0 };
    sev.sigev_notify = notify;
    sev.sigev_signo = sig;
    sev.sigev_value.sival_ptr = (void *)value;
    sev._sigev_un._tid = tid;
    timer_t t;
    if (timer_create(clk, &sev, &t)) {
        FAIL("timer_create: %s\n", strerror(errno));
        exit(1);
    }
    return t;
}

static void arm(timer_t t, long left_s, long left_ns, long every_s, long every_ns)
{
    struct itimerspec it = { { every_s, every_ns }, { left_s, left_ns } };
    timer_settime(t, 0, &it, NULL);
}

static void check(void)
{
    struct itimerspec it;
    CHECK(timer_gettime(t0, &it) == 0, "t0: %s\n", strerror(errno));
    CHECK(it.it_value.tv_sec < 40 && it.it_value.tv_sec >= 30 && it.it_interval.tv_sec == 9,
          "t0: %ld s left, every %ld s\n", (long)it.it_value.tv_sec, (long)it.it_interval.tv_sec);
    CHECK(timer_gettime(t1, &it) == 0, "t1: %s\n", strerror(errno));
    CHECK(it.it_value.tv_sec < 25 && it.it_value.tv_sec >= 15 && !it.it_interval.tv_sec,
          "t1: %ld s left\n", (long)it.it_value.tv_sec);
    CHECK(timer_gettime(t2, &it) < 0 && errno == EINVAL, "t2: exists again\n");
    CHECK(timer_gettime(t3, &it) == 0 && !it.it_value.tv_sec && !it.it_value.tv_nsec, "t3: not there or armed\n");
    CHECK(timer_gettime(t4, &it) == 0 && it.it_interval.tv_nsec == 1000000, "t4: interval changed\n");
    int before = thread_got;
    arm(t3, 0, 1000, 0, 0);
    for (int i = 0; i < 1000 && thread_got == before; i++)
        usleep(1000);
    CHECK(thread_got > before, "t3: the thread got no signal\n");
    /* a new timer gets an id of its own */
    timer_t t5 = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
    CHECK(t5 != t0 && t5 != t1 && t5 != t3 && t5 != t4, "a new timer got id %ld, taken\n", (long)t5);
    timer_delete(t5);
}

int main(void)
{
    corner_init();
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    sigaddset(&s, SIGRTMIN + 2);
    sigaddset(&s, SIGRTMIN + 3);
    sigprocmask(SIG_BLOCK, &s, NULL);
    pthread_t th;
    pthread_create(&th, NULL, waiter, NULL);
    while (!thread_tid)
        usleep(100);
    t0 = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGUSR2, 0xfeed, 0);
    arm(t0, 40, 0, 9, 0);
    t1 = make(CLOCK_REALTIME, SIGEV_NONE, 0, 0, 0);
    arm(t1, 25, 0, 0, 0);
    t2 = make(CLOCK_MONOTONIC, SIGEV_NONE, 0, 0, 0);
    t3 = make(CLOCK_BOOTTIME, SIGEV_THREAD_ID, SIGRTMIN + 2, 0, thread_tid);
    t4 = make(CLOCK_MONOTONIC, SIGEV_SIGNAL, SIGRTMIN + 3, 0, 0);
    arm(t4, 0, 1000000, 0, 1000000);
    timer_delete(t2);
    CORNER_LOOP(check);
}
