/* A parent and a child cloned with CLONE_FILES | CLONE_FS (a process of its own, not a
 * thread: its own memory and signal handlers), for the restore of shared tables.
 *
 *     tree_clone_files LOG DIR
 *
 * Logs "ready MAIN CHILD". The child, on SIGUSR1, opens /dev/null and logs "fd N" (the fd
 * appears in the parent too); on SIGUSR2 it changes directory to DIR and logs "cd" (the
 * parent's cwd moves too). The parent waits for the child (waitpid) and logs "child
 * exited STATUS"; SIGTERM to the child ends it with status 0. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

static char stack[1 << 16];
static int log_fd;
static const char *dir;
static volatile sig_atomic_t ask_open, ask_cd, ask_end;

static void on_signal(int sig)
{
    if (sig == SIGUSR1) ask_open = 1;
    if (sig == SIGUSR2) ask_cd = 1;
    if (sig == SIGTERM) ask_end = 1;
}

static int child(void *arg)
{
    (void)arg;
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    signal(SIGUSR1, on_signal);
    signal(SIGUSR2, on_signal);
    signal(SIGTERM, on_signal);
    for (;;) {
        pause();
        if (ask_open) {
            ask_open = 0;
            dprintf(log_fd, "fd %d\n", open("/dev/null", O_RDONLY));
        }
        if (ask_cd) {
            ask_cd = 0;
            dprintf(log_fd, chdir(dir) == 0 ? "cd\n" : "cd failed\n");
        }
        if (ask_end)
            _exit(0);
    }
}

int main(int argc, char **argv)
{
    if (argc != 3)
        return 2;
    log_fd = open(argv[1], O_WRONLY | O_APPEND);
    dir = argv[2];
    if (log_fd < 0)
        return 1;
    int c = clone(child, stack + sizeof stack, CLONE_FILES | CLONE_FS | SIGCHLD, NULL);
    if (c < 0)
        return 1;
    dprintf(log_fd, "ready %d %d\n", getpid(), c);
    int status;
    while (waitpid(c, &status, 0) < 0)
        ;
    dprintf(log_fd, "child exited %d\n", status);
    return 0;
}
