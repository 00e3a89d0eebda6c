/* A small process tree for the tree-model tests. The main process (2 extra threads) makes:
 *   A   fork(), then setsid(): a session and group of its own
 *   A1  A's fork() child, then setpgid(0, 0): a group of its own in A's session
 *   B   clone(CLONE_FILES | CLONE_FS): shares the fd table and fs of main, not its mm
 *   C   clone(CLONE_VM): shares the mm of main, nothing else (its own fd table)
 * prints "ready MAIN A A1 B C" once everyone is in place, and on EOF of stdin kills them
 * all and exits. Every child dies with main (PR_SET_PDEATHSIG). */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

static char stack_b[65536], stack_c[65536];
static int to_main[2];            /* children report their pids here */

static void *idle(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static int shared_child(void *arg)
{
    (void)arg;
    /* raw system calls only: C shares main's memory (and its libc state) */
    syscall(SYS_prctl, PR_SET_PDEATHSIG, SIGKILL, 0, 0, 0);
    for (;;)
        syscall(SYS_pause);
    return 0;
}

static int report(int pid)
{
    return write(to_main[1], &pid, sizeof pid) == sizeof pid ? 0 : -1;
}

int main(void)
{
    pthread_t t1, t2;
    int pids[4], i;
    if (pipe(to_main) < 0)
        return 1;
    pthread_create(&t1, NULL, idle, NULL);
    pthread_create(&t2, NULL, idle, NULL);
    int a = fork();
    if (a == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        setsid();
        int a1 = fork();
        if (a1 == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            setpgid(0, 0);
            report(getpid());
            idle(NULL);
        }
        idle(NULL);
    }
    int b = clone(shared_child, stack_b + sizeof stack_b, CLONE_FILES | CLONE_FS | SIGCHLD, NULL);
    int c = clone(shared_child, stack_c + sizeof stack_c, CLONE_VM | SIGCHLD, NULL);
    if (b < 0 || c < 0 || read(to_main[0], &pids[1], sizeof(int)) != sizeof(int))
        return 1;
    /* A has called setsid() before forking A1, and A1 setpgid() before reporting */
    pids[0] = a;
    pids[2] = b;
    pids[3] = c;
    printf("ready %d %d %d %d %d\n", getpid(), pids[0], pids[1], pids[2], pids[3]);
    fflush(stdout);
    char ch;
    while (read(0, &ch, 1) > 0)
        ;
    for (i = 0; i < 4; i++)
        kill(pids[i], SIGKILL);
    waitpid(a, NULL, 0);
    waitpid(b, NULL, __WALL);
    waitpid(c, NULL, __WALL);
    return 0;
}
