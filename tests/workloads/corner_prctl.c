/* Per-process and per-thread prctl state and a seccomp filter through a restore. The
 * process started forks a child and waits; the child (below the root of the dump, where a
 * parent-death signal means something after a restore) says "child PID" and holds:
 * THP disabled, no-new-privs, child subreaper, name "corner-main"; in the main thread
 * pdeathsig SIGUSR2 (blocked) and timer slack 123456 ns; in a worker thread pdeathsig
 * SIGTERM (blocked), timer slack 777 ns, name "corner-worker"; a seccomp filter (TSYNC, so
 * both threads have it) that makes mkdir fail with ENOTSUP and lets everything else pass.
 * Checks after SIGUSR1 (corner.h): each value, in each thread, and the filter at work. */
#define _GNU_SOURCE
#include <errno.h>
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <pthread.h>
#include <semaphore.h>
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>
#include "corner.h"

static sem_t go, done;

static void check_thread(const char *who, int pdeath, unsigned long slack, const char *name)
{
    int sig = -1;
    char comm[32] = "";
    prctl(PR_GET_PDEATHSIG, &sig);
    CHECK(sig == pdeath, "%s: pdeathsig %d, want %d\n", who, sig, pdeath);
    long got = prctl(PR_GET_TIMERSLACK, 0, 0, 0, 0);
    CHECK(got == (long)slack, "%s: timer slack %ld, want %lu\n", who, got, slack);
    prctl(PR_GET_NAME, comm);
    CHECK(strcmp(comm, name) == 0, "%s: name %s\n", who, comm);
    CHECK(prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0) == 1, "%s: no_new_privs lost\n", who);
    CHECK(prctl(PR_GET_SECCOMP, 0, 0, 0, 0) == 2, "%s: seccomp mode %d\n", who, prctl(PR_GET_SECCOMP, 0, 0, 0, 0));
    CHECK(mkdir("/nonexistent-dir/x", 0700) < 0 && errno == ENOTSUP, "%s: mkdir not filtered (%s)\n", who,
          strerror(errno));
    CHECK(getpid() > 0, "%s: getpid\n", who);
}

static void *worker(void *arg)
{
    (void)arg;
    prctl(PR_SET_PDEATHSIG, SIGTERM);
    prctl(PR_SET_TIMERSLACK, 777);
    prctl(PR_SET_NAME, "corner-worker");
    sem_post(&done);
    for (;;) {
        while (sem_wait(&go) && errno == EINTR)
            ;
        check_thread("worker", SIGTERM, 777, "corner-worker");
        sem_post(&done);
    }
    return NULL;
}

static void check(void)
{
    check_thread("main", SIGUSR2, 123456, "corner-main");
    CHECK(prctl(PR_GET_THP_DISABLE, 0, 0, 0, 0) == 1, "THP not disabled\n");
    int reaper = 0;
    prctl(PR_GET_CHILD_SUBREAPER, &reaper);
    CHECK(reaper == 1, "not a subreaper\n");
    sem_post(&go);
    while (sem_wait(&done) && errno == EINTR)
        ;
}

int main(void)
{
    corner_init();
    pid_t kid = fork();
    if (kid > 0) {
        say("child %d\n", kid);
        for (;;)
            pause();
    }
    sigset_t s;
    sigemptyset(&s);
    sigaddset(&s, SIGUSR2);
    sigaddset(&s, SIGTERM);
    sigprocmask(SIG_BLOCK, &s, NULL);
    sem_init(&go, 0, 0);
    sem_init(&done, 0, 0);
    prctl(PR_SET_THP_DISABLE, 1, 0, 0, 0);
    prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0);
    prctl(PR_SET_CHILD_SUBREAPER, 1);
    prctl(PR_SET_PDEATHSIG, SIGUSR2);
    prctl(PR_SET_TIMERSLACK, 123456);
    prctl(PR_SET_NAME, "corner-main");
    pthread_t th;
    pthread_create(&th, NULL, worker, NULL);
    while (sem_wait(&done) && errno == EINTR)
        ;
    struct sock_filter prog[] = {
        BPF_STMT(BPF_LD | BPF_W | BPF_ABS, offsetof(struct seccomp_data, nr)),
        BPF_JUMP(BPF_JMP | BPF_JEQ | BPF_K, SYS_mkdir, 0, 1),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ERRNO | ENOTSUP),
        BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW),
    };
    struct sock_fprog fp = { .len = 4, .filter = prog };
    if (syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, SECCOMP_FILTER_FLAG_TSYNC, &fp))
        FAIL("seccomp: %s\n", strerror(errno));
    CORNER_LOOP(check);
}
