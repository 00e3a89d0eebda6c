/* A parent with two unreaped children: one exited with status 7, one killed by SIGTERM.
 * It logs "ready PID Z7 ZTERM" then "tick N" every 10 ms to LOGDIR/parent.log (opened each
 * time: no fd to restore); on SIGUSR1 it reaps both and logs "reaped PID STATUS" for each. */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static volatile sig_atomic_t reap;
static char path[4096];

static void on_usr1(int sig) { (void)sig; reap = 1; }

static void logf_(const char *fmt, long a, long b, long c) {
    FILE *f = fopen(path, "a");
    if (!f) return;
    fprintf(f, fmt, a, b, c);
    fclose(f);
}

int main(int argc, char **argv) {
    if (argc < 2) return 2;
    snprintf(path, sizeof path, "%s/parent.log", argv[1]);
    signal(SIGUSR1, on_usr1);
    pid_t z7 = fork();
    if (z7 == 0) _exit(7);
    pid_t zterm = fork();
    if (zterm == 0) { kill(getpid(), SIGTERM); pause(); _exit(1); }
    logf_("ready %ld %ld %ld\n", getpid(), z7, zterm);
    struct timespec ts = {0, 10 * 1000 * 1000};
    for (long n = 1;; n++) {
        nanosleep(&ts, NULL);
        logf_("tick %ld ok\n", n, 0, 0);
        if (reap) {
            reap = 0;
            pid_t kids[2] = {z7, zterm};
            for (int i = 0; i < 2; i++) {
                int status = -1;
                pid_t got = waitpid(kids[i], &status, 0);
                logf_("reaped %ld %ld\n", got, status, 0);
            }
        }
    }
}
