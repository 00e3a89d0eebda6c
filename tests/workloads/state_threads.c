/* State workload for the final-dump task-state tests.
 *
 * 4 threads (main + 3 workers named stw1..stw3), a SIGUSR1 handler with
 * SA_RESTART|SA_ONSTACK|SA_SIGINFO and a mask, alternate signal stacks (main, stw1),
 * SIGUSR2 + SIGRTMIN+1 blocked everywhere, one SIGUSR2 pending for main only,
 * one SIGRTMIN+1 pending process-wide, an ITIMER_REAL with a long interval, a
 * robust mutex held by main, umask 027, RLIMIT_NOFILE soft 777, child subreaper,
 * comm "stmain"; stw3 parks with a known pattern in the upper half of ymm15.
 *
 * Prints one line of key=value pairs about itself, then serves stdin:
 *   ping -> pong
 *   usr1 -> "usr1 <count> <onstack>" after raising SIGUSR1 in main
 */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/auxv.h>
#include <sys/personality.h>
#include <sys/prctl.h>
#include <sys/resource.h>
#include <sys/rseq.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/time.h>
#include <unistd.h>

#define NWORKERS 3
#define ALTSZ (64 * 1024)

static volatile sig_atomic_t usr1_count, usr1_onstack;
static char *main_alt, *w1_alt;
static pthread_barrier_t barrier;
static pthread_mutex_t robust;

struct tinfo { pid_t tid; unsigned long self; };
static struct tinfo winfo[NWORKERS];
static volatile int ymm_ready;
static int have_avx;

/* stw3 parks with a known pattern in the upper half of ymm15 (checked in ymmh_space) */
__attribute__((target("avx"))) static void park_with_ymm(void)
{
    static const uint32_t pat[8] = { 0x11111111, 0x22222222, 0x33333333, 0x44444444,
                                     0xa5a5a5a5, 0xdeadbeef, 0x01234567, 0xcafef00d };
    __asm__ volatile("vmovdqu %0, %%ymm15" : : "m"(pat) : "xmm15");
    __atomic_store_n(&ymm_ready, 1, __ATOMIC_SEQ_CST);
    for (;;)
        syscall(SYS_pause);
}

static void on_usr1(int sig, siginfo_t *si, void *uc)
{
    char here;
    (void)sig; (void)si; (void)uc;
    usr1_count++;
    usr1_onstack = (&here >= main_alt && &here < main_alt + ALTSZ);
}

static void *worker(void *arg)
{
    int i = (int)(intptr_t)arg;
    char name[16];
    snprintf(name, sizeof name, "stw%d", i + 1);
    pthread_setname_np(pthread_self(), name);
    if (i == 0) {
        stack_t ss = { .ss_sp = w1_alt, .ss_size = ALTSZ, .ss_flags = 0 };
        sigaltstack(&ss, NULL);
    }
    if (i == 1) {  /* one thread with an extra blocked signal */
        sigset_t s;
        sigemptyset(&s);
        sigaddset(&s, SIGPWR);
        pthread_sigmask(SIG_BLOCK, &s, NULL);
    }
    winfo[i].tid = (pid_t)syscall(SYS_gettid);
    winfo[i].self = (unsigned long)pthread_self();
    pthread_barrier_wait(&barrier);
    if (i == 2 && have_avx)
        park_with_ymm();
    for (;;)
        pause();
    return NULL;
}

int main(void)
{
    sigset_t block;
    struct sigaction sa;
    pthread_t th[NWORKERS];
    pthread_mutexattr_t ma;
    struct rlimit rl;
    struct itimerval it = { .it_interval = { 1000, 250000 }, .it_value = { 500, 0 } };
    char line[64];

    setvbuf(stdout, NULL, _IOLBF, 0);
    have_avx = !!__builtin_cpu_supports("avx");
    prctl(PR_SET_NAME, "stmain", 0, 0, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1, 0, 0, 0);
    umask(027);
    getrlimit(RLIMIT_NOFILE, &rl);
    rl.rlim_cur = 777;
    setrlimit(RLIMIT_NOFILE, &rl);

    main_alt = malloc(ALTSZ);
    w1_alt = malloc(ALTSZ);
    stack_t ss = { .ss_sp = main_alt, .ss_size = ALTSZ, .ss_flags = 0 };
    sigaltstack(&ss, NULL);

    memset(&sa, 0, sizeof sa);
    sa.sa_sigaction = on_usr1;
    sa.sa_flags = SA_RESTART | SA_ONSTACK | SA_SIGINFO;
    sigemptyset(&sa.sa_mask);
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaddset(&sa.sa_mask, SIGUSR2);
    sigaction(SIGUSR1, &sa, NULL);
    signal(SIGHUP, SIG_IGN);

    sigemptyset(&block);
    sigaddset(&block, SIGUSR2);
    sigaddset(&block, SIGRTMIN + 1);
    pthread_sigmask(SIG_BLOCK, &block, NULL);   /* inherited by every worker */

    pthread_mutexattr_init(&ma);
    pthread_mutexattr_setrobust(&ma, PTHREAD_MUTEX_ROBUST);
    pthread_mutex_init(&robust, &ma);
    pthread_mutex_lock(&robust);

    setitimer(ITIMER_REAL, &it, NULL);
    signal(SIGALRM, SIG_IGN);
    /* SIG_DFL with flags that still matter (SIGCHLD), and with flags that never do (SIGWINCH) */
    struct sigaction chld = {0}, winch = {0};
    chld.sa_handler = SIG_DFL;
    chld.sa_flags = SA_NOCLDSTOP;
    sigaction(SIGCHLD, &chld, NULL);
    winch.sa_handler = SIG_DFL;
    winch.sa_flags = SA_RESTART;
    sigaction(SIGWINCH, &winch, NULL);

    pthread_barrier_init(&barrier, NULL, NWORKERS + 1);
    for (int i = 0; i < NWORKERS; i++)
        pthread_create(&th[i], NULL, worker, (void *)(intptr_t)i);
    pthread_barrier_wait(&barrier);
    while (have_avx && !__atomic_load_n(&ymm_ready, __ATOMIC_SEQ_CST))
        usleep(1000);

    raise(SIGUSR2);                                      /* private to main */
    union sigval v = { .sival_int = 4242 };
    sigqueue(getpid(), SIGRTMIN + 1, v);                 /* shared */

    printf("pid=%d tid=%d self=%#lx", getpid(), (int)syscall(SYS_gettid), (unsigned long)pthread_self());
    for (int i = 0; i < NWORKERS; i++)
        printf(" w%d_tid=%d w%d_self=%#lx", i + 1, winfo[i].tid, i + 1, winfo[i].self);
    printf(" handler=%#lx mask=%#lx main_alt=%#lx w1_alt=%#lx altsz=%d mutex=%#lx"
           " brk=%#lx entry=%#lx phdr=%#lx pagesz=%lu personality=%#x dumpable=%d"
           " nofile_max=%lu rseq_offset=%ld sigrtmin=%d avx=%d\n",
           (unsigned long)on_usr1, (1UL << (SIGTERM - 1)) | (1UL << (SIGUSR2 - 1)),
           (unsigned long)main_alt, (unsigned long)w1_alt, ALTSZ, (unsigned long)&robust,
           (unsigned long)sbrk(0), getauxval(AT_ENTRY), getauxval(AT_PHDR), getauxval(AT_PAGESZ),
           personality(0xffffffff), prctl(PR_GET_DUMPABLE, 0, 0, 0, 0),
           (unsigned long)rl.rlim_max, (long)__rseq_offset, SIGRTMIN, have_avx);

    while (fgets(line, sizeof line, stdin)) {
        if (!strncmp(line, "ping", 4)) {
            printf("pong\n");
        } else if (!strncmp(line, "usr1", 4)) {
            raise(SIGUSR1);
            printf("usr1 %d %d\n", (int)usr1_count, (int)usr1_onstack);
        } else {
            printf("?\n");
        }
    }
    return 0;
}
