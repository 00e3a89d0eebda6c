/* Interop workload: a process of 5 threads whose memory and registers are checked every tick.
 *
 * Protocol (as the rst_* workloads): stdin /dev/null, stdout+stderr a log file opened
 * O_APPEND; "ready", then every 20 ms "tick N ok sum=S" from main (S: the sum of the worker
 * counters), "FAIL <reason>" on a failed check. Everything goes out with write(2).
 *
 * Each of 4 workers owns 64 KiB of heap filled with a pattern of its counter; after every
 * sleep it checks the pattern, that gettid() and its __thread copy still agree, and that a
 * double it carries in an SSE register across the sleep (and a 256-bit vector, when the CPU
 * has AVX) equals its counter; then it bumps the counter and rewrites the pattern. Workers
 * sleep in nanosleep (0, 1), a futex (2: pthread_cond_timedwait) and read() on a pipe fed
 * by main (3). Main checks that no counter goes down.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS (20 * 1000000L)
#include "rst_log.h"

#define WORKERS 4
#define WORDS (64 * 1024 / 8)

struct worker {
    int idx;
    volatile uint64_t counter;
    uint64_t *mem;
    pid_t tid;
};

static struct worker workers[WORKERS];
static __thread pid_t my_tid;
static pthread_mutex_t mu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cv = PTHREAD_COND_INITIALIZER;
static int feed[2];

static uint64_t pat(int idx, uint64_t n, size_t i)
{
    uint64_t x = (uint64_t)idx * 0x9e3779b97f4a7c15ULL + n * 0xbf58476d1ce4e5b9ULL + i;
    return x ^ (x >> 29);
}

static void sleep_in(struct worker *w)
{
    struct timespec ts = { 0, TICK_NS / 2 };
    char b;
    switch (w->idx) {
    case 2:
        clock_gettime(CLOCK_REALTIME, &ts);
        ts.tv_nsec += TICK_NS / 2;
        if (ts.tv_nsec >= 1000000000L) {
            ts.tv_sec++;
            ts.tv_nsec -= 1000000000L;
        }
        pthread_mutex_lock(&mu);
        pthread_cond_timedwait(&cv, &mu, &ts);
        pthread_mutex_unlock(&mu);
        break;
    case 3:
        while (read(feed[0], &b, 1) < 0 && errno == EINTR)
            ;
        break;
    default:
        while (nanosleep(&ts, &ts) != 0 && errno == EINTR)
            ;
    }
}

static void *work(void *arg)
{
    struct worker *w = arg;
    my_tid = w->tid = syscall(SYS_gettid);
    for (;;) {
        uint64_t n = w->counter;
        double carried = (double)n * 0.5;           /* lives in an xmm register over the sleep */
#ifdef __AVX__
        typedef double v4 __attribute__((vector_size(32)));
        v4 vec = { carried, carried + 1, carried + 2, carried + 3 };
#endif
        __asm__ volatile("" : "+x"(carried));
        sleep_in(w);
        __asm__ volatile("" : "+x"(carried));
        if (carried != (double)n * 0.5)
            FAIL("worker %d: register double %f, expected %f\n", w->idx, carried, (double)n * 0.5);
#ifdef __AVX__
        __asm__ volatile("" : "+x"(vec));
        if (vec[3] != carried + 3)
            FAIL("worker %d: ymm lane 3 %f\n", w->idx, vec[3]);
#endif
        if (my_tid != syscall(SYS_gettid) || my_tid != w->tid)
            FAIL("worker %d: tid %d, __thread %d\n", w->idx, (int)syscall(SYS_gettid), my_tid);
        for (size_t i = 0; i < WORDS; i++)
            if (w->mem[i] != pat(w->idx, n, i)) {
                FAIL("worker %d: word %zu of its memory is wrong at count %lu\n", w->idx, i, n);
                break;
            }
        for (size_t i = 0; i < WORDS; i++)
            w->mem[i] = pat(w->idx, n + 1, i);
        w->counter = n + 1;
    }
    return NULL;
}

int main(void)
{
    if (pipe(feed))
        return 1;
    pthread_t th[WORKERS];
    for (int i = 0; i < WORKERS; i++) {
        workers[i].idx = i;
        workers[i].mem = malloc(WORDS * 8);
        for (size_t k = 0; k < WORDS; k++)
            workers[i].mem[k] = pat(i, 0, k);
        pthread_create(&th[i], NULL, work, &workers[i]);
    }
    say("ready\n");
    uint64_t last[WORKERS] = { 0 };
    for (unsigned long tick = 1;; tick++) {
        tick_sleep();
        if (write(feed[1], "x", 1) != 1)
            FAIL("feed write\n");
        uint64_t sum = 0;
        for (int i = 0; i < WORKERS; i++) {
            uint64_t c = workers[i].counter;
            if (c < last[i])
                FAIL("worker %d went back from %lu to %lu\n", i, last[i], c);
            last[i] = c;
            sum += c;
        }
        say("tick %lu ok sum=%lu\n", tick, sum);
    }
}
