/* Round-trip workload: clocks through the vDSO, rseq, and the process's identity.
 *
 * Protocol: stdin /dev/null, stdout+stderr a log file opened O_APPEND; "ready", then every
 * 20 ms "tick N ok cpu=C", "FAIL <reason>" on a failed check. Everything via write(2).
 *
 * Every tick:
 * - clock_gettime(CLOCK_MONOTONIC) (glibc: vDSO) lies between two raw clock_gettime
 *   syscalls around it (a stale or misplaced vDSO/vvar shows here), and never goes
 *   backwards by more than 1 s (forward jumps are fine: the task sat in images);
 * - the same bracketing for CLOCK_REALTIME, which also agrees with time(NULL) within 1 s;
 * - sched_getcpu() (glibc 2.36: read from the rseq area) and the cpu_id of the rseq area
 *   are valid CPUs; glibc's rseq registration is still in place (registering the same area
 *   again fails with EBUSY, as it does at start);
 * - getpid() and gettid() are the values from start.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <sched.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/rseq.h>
#include <sys/syscall.h>
#include <sys/sysinfo.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS (20 * 1000000L)
#define SLACK_NS 1000000LL          /* bracketing slack: 1 ms */

#include "rst_log.h"

static long long ns(const struct timespec *t) { return t->tv_sec * 1000000000LL + t->tv_nsec; }

static long long sys_clock(clockid_t id)
{
    struct timespec t;
    if (syscall(SYS_clock_gettime, id, &t) != 0)
        return -1;
    return ns(&t);
}

/* vDSO reading bracketed by two syscalls; returns the vDSO value */
static long long bracket(clockid_t id, const char *name)
{
    struct timespec t;
    long long a = sys_clock(id);
    if (clock_gettime(id, &t) != 0) {
        FAIL("clock_gettime(%s): %s\n", name, strerror(errno));
        return -1;
    }
    long long b = sys_clock(id), v = ns(&t);
    if (a < 0 || b < 0)
        FAIL("clock_gettime syscall(%s): %s\n", name, strerror(errno));
    else if (v < a - SLACK_NS || v > b + SLACK_NS)
        FAIL("%s: vDSO says %lld, syscalls %lld..%lld\n", name, v, a, b);
    return v;
}

static struct rseq *rseq_area(void)
{
    return (struct rseq *)((char *)__builtin_thread_pointer() + __rseq_offset);
}

/* 1: registered (EBUSY) with this length, 0: not registered (and now it is), -1: EINVAL */
static int rseq_probe(unsigned len)
{
    long r = syscall(SYS_rseq, rseq_area(), len, 0, RSEQ_SIG);
    if (r == 0)
        return 0;
    return errno == EBUSY ? 1 : -1;
}

int main(void)
{
    pid_t pid = getpid();
    pid_t tid = (pid_t)syscall(SYS_gettid);
    int ncpu = get_nprocs_conf();
    unsigned long tick = 0;
    unsigned rseq_len = 0;

    /* glibc 2.36 registers 32 bytes; later ones register __rseq_size rounded up */
    if (__rseq_size > 0) {
        unsigned lens[] = { 32, __rseq_size, (__rseq_size + 31) & ~31u };
        for (unsigned i = 0; i < sizeof lens / sizeof lens[0] && !rseq_len; i++)
            if (rseq_probe(lens[i]) == 1)
                rseq_len = lens[i];
    }
    long long last_mono = bracket(CLOCK_MONOTONIC, "CLOCK_MONOTONIC");
    say("ready rseq_len=%u ncpu=%d\n", rseq_len, ncpu);

    for (;;) {
        tick_sleep();
        tick++;

        long long mono = bracket(CLOCK_MONOTONIC, "CLOCK_MONOTONIC");
        if (mono < last_mono - 1000000000LL)
            FAIL("CLOCK_MONOTONIC went back from %lld to %lld\n", last_mono, mono);
        if (mono > last_mono)
            last_mono = mono;
        long long real = bracket(CLOCK_REALTIME, "CLOCK_REALTIME");
        time_t now = time(NULL);
        if (real / 1000000000LL < now - 1 || real / 1000000000LL > now + 1)
            FAIL("CLOCK_REALTIME %lld s, time() %lld\n", real / 1000000000LL, (long long)now);

        int cpu = sched_getcpu();
        if (cpu < 0 || cpu >= ncpu)
            FAIL("sched_getcpu() = %d (%s)\n", cpu, cpu < 0 ? strerror(errno) : "out of range");
        if (rseq_len) {
            int c = (int)__atomic_load_n(&rseq_area()->cpu_id, __ATOMIC_RELAXED);
            if (c < 0 || c >= ncpu)
                FAIL("rseq cpu_id = %d\n", c);
            int st = rseq_probe(rseq_len);
            if (st == 0)
                FAIL("rseq was not registered (registered it again)\n");
            else if (st < 0)
                FAIL("rseq registered with other arguments: %s\n", strerror(errno));
        }

        if (getpid() != pid)
            FAIL("getpid %d, was %d\n", getpid(), pid);
        if ((pid_t)syscall(SYS_gettid) != tid)
            FAIL("gettid %ld, was %d\n", syscall(SYS_gettid), tid);
        say("tick %lu ok cpu=%d\n", tick, cpu);
    }
}
