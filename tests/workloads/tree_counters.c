/* A tree of four processes, each with private memory of its own and a counter:
 *   m   the main process (stays in the session and group it was started in)
 *   a   m's child, setpgid(0, 0): a process group of its own
 *   a1  a's child, setsid(): a session (and group) of its own
 *   b   m's child, in m's group, with a second thread (idle in pause())
 * Usage: tree_counters LOGDIR. Each process closes what it inherited and writes its own
 * LOGDIR/ROLE.log (O_APPEND): "ready PID PPID PGID SID" once, then every 20 ms
 * "tick N ok" after checking its 1 MiB pattern (seeded by its role) and rewriting a
 * counter page; "FAIL ..." on a mismatch. Children die with their parent (PDEATHSIG). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <unistd.h>

#define TICK_NS (20 * 1000000L)
#include "rst_log.h"

#define AREA (1UL << 20)

static const char *logdir;

static uint64_t mix(uint64_t x)
{
    x += 0x9e3779b97f4a7c15ULL;
    x = (x ^ (x >> 30)) * 0xbf58476d1ce4e5b9ULL;
    x = (x ^ (x >> 27)) * 0x94d049bb133111ebULL;
    return x ^ (x >> 31);
}

static void own_log(const char *role)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.log", logdir, role);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    int nul = open("/dev/null", O_RDONLY);
    dup2(nul, 0);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
    close(nul);
}

static void run(const char *role, uint64_t seed)
{
    own_log(role);
    uint64_t *area = mmap(NULL, AREA, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    volatile uint64_t *counter = mmap(NULL, 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    size_t n = AREA / sizeof *area;
    for (size_t i = 0; i < n; i++)
        area[i] = mix(seed * 1000003 + i);
    say("ready %d %d %d %d\n", getpid(), getppid(), getpgid(0), getsid(0));
    for (;;) {
        for (size_t i = 0; i < n; i += 61)
            if (area[i] != mix(seed * 1000003 + i)) {
                FAIL("%s word %zu\n", role, i);
                break;
            }
        *counter += 1;
        say("tick %lu ok\n", (unsigned long)*counter);
        tick_sleep();
    }
}

static void *idle(void *arg)
{
    (void)arg;
    for (;;)
        pause();
    return NULL;
}

static void child_setup(void)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
}

int main(int argc, char **argv)
{
    if (argc < 2)
        return 2;
    logdir = argv[1];
    if (fork() == 0) {
        child_setup();
        setpgid(0, 0);
        if (fork() == 0) {
            child_setup();
            setsid();
            run("a1", 3);
        }
        run("a", 2);
    }
    if (fork() == 0) {
        pthread_t t;
        child_setup();
        pthread_create(&t, NULL, idle, NULL);
        run("b", 4);
    }
    run("m", 1);
    return 0;
}
