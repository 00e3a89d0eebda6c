/* Round-trip workload: 8 threads asleep in different blocking calls.
 *
 * Protocol: stdin /dev/null, stdout+stderr a log file opened O_APPEND; "ready", then every
 * 20 ms "tick N ok sum=S" from main (S = sum of the thread counters), "FAIL <reason>" on
 * a failed check. Everything goes out with write(2).
 *
 * Each worker has a struct with its counter, TID and pthread_t; after every wake-up it
 * checks that gettid(), pthread_self(), its __thread variables and its counter (against a
 * copy on its own stack) are what they were, then bumps the counter. Main checks that no
 * counter ever goes down. The workers sleep in:
 *   0 nanosleep            1 pthread_cond_timedwait (futex)
 *   2 read() on a pipe     3 feeder: nanosleep, then one byte into the pipe + eventfd
 *   4 epoll_wait (eventfd) 5 accept() on a loopback listening socket
 *   6 connector: nanosleep; connects once per SIGUSR1, prints "accept N" once accepted
 *     (the server side closes first, so the listening port has a TIME_WAIT neighbour)
 *   7 poll() on a pipe nobody writes
 * Worker 2 checks that the pipe bytes come in sequence (0, 1, 2, ... mod 256).
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <poll.h>
#include <pthread.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/epoll.h>
#include <sys/eventfd.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

#define NTHREADS 8
#define TICK_NS (20 * 1000000L)

#include "rst_log.h"

struct thr {
    int idx;
    pid_t tid;
    pthread_t self;
    unsigned long counter;        /* written only by its thread, read by main */
};

static struct thr thr[NTHREADS];
static __thread int tls_id = -1;
static __thread uint64_t tls_pat[8];
static pthread_barrier_t started;
static int feed_pipe[2], idle_pipe[2], efd, epfd, lsock;
static struct sockaddr_in laddr;
static pthread_mutex_t cmu = PTHREAD_MUTEX_INITIALIZER;
static pthread_cond_t cond = PTHREAD_COND_INITIALIZER;
static volatile sig_atomic_t usr1_requests;
static unsigned long accepted;   /* atomic */

static pid_t gettid_raw(void) { return (pid_t)syscall(SYS_gettid); }

static void on_usr1(int sig) { (void)sig; usr1_requests++; }

static void sleep_ms(long ms)
{
    struct timespec ts = { ms / 1000, (ms % 1000) * 1000000L };
    nanosleep(&ts, NULL);   /* EINTR: fine, we just wake early */
}

static void tls_init(int idx)
{
    tls_id = idx * 1000 + 7;
    for (int i = 0; i < 8; i++)
        tls_pat[i] = 0x5eed000000000000ULL + (uint64_t)idx * 64 + i;
}

static int tls_ok(int idx)
{
    if (tls_id != idx * 1000 + 7)
        return 0;
    for (int i = 0; i < 8; i++)
        if (tls_pat[i] != 0x5eed000000000000ULL + (uint64_t)idx * 64 + i)
            return 0;
    return 1;
}

/* after each wake-up: identity and counter checks, then one more count */
static void check_and_count(struct thr *t, unsigned long *mine)
{
    pid_t tid = gettid_raw();
    if (tid != t->tid)
        FAIL("thread %d: gettid %d, was %d\n", t->idx, tid, t->tid);
    if (!pthread_equal(pthread_self(), t->self))
        FAIL("thread %d: pthread_self changed\n", t->idx);
    if (!tls_ok(t->idx))
        FAIL("thread %d: TLS id %d\n", t->idx, tls_id);
    unsigned long c = __atomic_load_n(&t->counter, __ATOMIC_RELAXED);
    if (c != *mine)
        FAIL("thread %d: counter %lu, own copy %lu\n", t->idx, c, *mine);
    (*mine)++;
    __atomic_store_n(&t->counter, *mine, __ATOMIC_RELAXED);
}

static void *worker(void *arg)
{
    struct thr *t = arg;
    unsigned long mine = 0;
    unsigned char expect = 0, byte;
    struct epoll_event ev;
    uint64_t val;
    unsigned long done = 0;

    t->tid = gettid_raw();
    t->self = pthread_self();
    tls_init(t->idx);
    pthread_barrier_wait(&started);
    for (;;) {
        switch (t->idx) {
        case 0:
            sleep_ms(10);
            break;
        case 1: {
            struct timespec dl;
            clock_gettime(CLOCK_REALTIME, &dl);
            dl.tv_nsec += 15 * 1000000L;
            if (dl.tv_nsec >= 1000000000L) {
                dl.tv_sec++;
                dl.tv_nsec -= 1000000000L;
            }
            pthread_mutex_lock(&cmu);
            int rc = pthread_cond_timedwait(&cond, &cmu, &dl);
            pthread_mutex_unlock(&cmu);
            if (rc != 0 && rc != ETIMEDOUT)
                FAIL("cond_timedwait: %s\n", strerror(rc));
            break;
        }
        case 2: {
            ssize_t n = read(feed_pipe[0], &byte, 1);
            if (n < 0 && errno == EINTR)
                continue;
            if (n != 1) {
                FAIL("pipe read: %zd %s\n", n, strerror(errno));
                sleep_ms(10);
                break;
            }
            if (byte != expect)
                FAIL("pipe byte %u, want %u\n", byte, expect);
            expect = byte + 1;
            break;
        }
        case 3:
            sleep_ms(10);
            byte = (unsigned char)mine;
            if (write(feed_pipe[1], &byte, 1) != 1)
                FAIL("pipe write: %s\n", strerror(errno));
            val = 1;
            if (write(efd, &val, 8) != 8)
                FAIL("eventfd write: %s\n", strerror(errno));
            break;
        case 4: {
            int n = epoll_wait(epfd, &ev, 1, 50);
            if (n < 0 && errno == EINTR)
                continue;
            if (n < 0)
                FAIL("epoll_wait: %s\n", strerror(errno));
            if (n == 1 && read(efd, &val, 8) != 8)
                FAIL("eventfd read: %s\n", strerror(errno));
            break;
        }
        case 5: {
            int c = accept(lsock, NULL, NULL);
            if (c < 0 && errno == EINTR)
                continue;
            if (c < 0) {
                FAIL("accept: %s\n", strerror(errno));
                sleep_ms(10);
                break;
            }
            close(c);
            __atomic_add_fetch(&accepted, 1, __ATOMIC_SEQ_CST);
            break;
        }
        case 6:
            sleep_ms(10);
            if ((unsigned long)usr1_requests > done) {
                done++;
                int s = socket(AF_INET, SOCK_STREAM, 0);
                if (s < 0 || connect(s, (struct sockaddr *)&laddr, sizeof laddr) != 0) {
                    FAIL("connect: %s\n", strerror(errno));
                    if (s >= 0)
                        close(s);
                    break;
                }
                /* close only once the server side has closed: its end of the connection
                 * (on the listening port) then sits in TIME_WAIT, as on any busy server,
                 * and a restore must still be able to bind the port */
                for (int i = 0; i < 500 && __atomic_load_n(&accepted, __ATOMIC_SEQ_CST) < done; i++)
                    sleep_ms(2);
                sleep_ms(2);
                close(s);
                unsigned long a = __atomic_load_n(&accepted, __ATOMIC_SEQ_CST);
                if (a != done)
                    FAIL("accepted %lu connections, made %lu\n", a, done);
                else
                    say("accept %lu\n", a);
            }
            break;
        case 7: {
            struct pollfd p = { idle_pipe[0], POLLIN, 0 };
            int n = poll(&p, 1, 10);
            if (n < 0 && errno == EINTR)
                continue;
            if (n != 0)
                FAIL("poll on idle pipe: %d %s\n", n, strerror(errno));
            break;
        }
        }
        check_and_count(t, &mine);
    }
    return NULL;
}

int main(void)
{
    pthread_t pt[NTHREADS];
    unsigned long seen[NTHREADS] = { 0 };
    unsigned long tick = 0;
    pid_t pid = getpid();

    tls_init(NTHREADS);
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_RESTART;
    sigaction(SIGUSR1, &sa, NULL);

    if (pipe(feed_pipe) || pipe(idle_pipe)) {
        say("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
    efd = eventfd(0, 0);
    epfd = epoll_create1(0);
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = 42 };
    if (efd < 0 || epfd < 0 || epoll_ctl(epfd, EPOLL_CTL_ADD, efd, &ev)) {
        say("FAIL eventfd/epoll: %s\n", strerror(errno));
        return 1;
    }
    lsock = socket(AF_INET, SOCK_STREAM, 0);
    laddr.sin_family = AF_INET;
    laddr.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    laddr.sin_port = 0;
    socklen_t alen = sizeof laddr;
    /* as servers do: without it, the listener's own connections left in TIME_WAIT keep its
     * port from being bound again, by a restart or by a restore (coldsnap then refuses) */
    int one = 1;
    setsockopt(lsock, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (lsock < 0 || bind(lsock, (struct sockaddr *)&laddr, sizeof laddr) ||
        listen(lsock, 16) || getsockname(lsock, (struct sockaddr *)&laddr, &alen)) {
        say("FAIL listen: %s\n", strerror(errno));
        return 1;
    }

    pthread_barrier_init(&started, NULL, NTHREADS + 1);
    for (int i = 0; i < NTHREADS; i++) {
        thr[i].idx = i;
        if (pthread_create(&pt[i], NULL, worker, &thr[i])) {
            say("FAIL pthread_create\n");
            return 1;
        }
    }
    pthread_barrier_wait(&started);
    say("ready port=%d\n", ntohs(laddr.sin_port));

    for (;;) {
        tick_sleep();
        tick++;
        if (gettid_raw() != pid || getpid() != pid)
            FAIL("main: gettid %d getpid %d, was %d\n", gettid_raw(), getpid(), pid);
        if (!tls_ok(NTHREADS))
            FAIL("main: TLS id %d\n", tls_id);
        unsigned long sum = 0;
        for (int i = 0; i < NTHREADS; i++) {
            unsigned long c = __atomic_load_n(&thr[i].counter, __ATOMIC_RELAXED);
            if (c < seen[i])
                FAIL("thread %d counter went down: %lu < %lu\n", i, c, seen[i]);
            seen[i] = c;
            sum += c;
        }
        say("tick %lu ok sum=%lu\n", tick, sum);
    }
}
