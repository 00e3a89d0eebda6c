/* A parent feeding its child through a pipe, both logging to the stdout they share (one
 * O_APPEND open file description, inherited).
 * Usage: tree_pipe STOPFILE. The parent writes "N\n" for N = 1, 2, ... as fast as the pipe
 * takes them (it is full most of the time: data in flight); the child reads them with
 * stdio, slowly, checks each is the one after the last and logs "c ok N" every 1000 lines.
 * Once STOPFILE exists the parent writes "end\n", closes the pipe and waits for the child,
 * which logs "c done N" and exits 7; the parent then logs "p reaped S sent N" (S: the exit
 * status) and exits. Starts with "p ready PARENT CHILD". */
#define _GNU_SOURCE
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/wait.h>
#include <unistd.h>

#define TICK_NS (1000000L)
#include "rst_log.h"

static int child(int rd)
{
    FILE *in = fdopen(rd, "r");
    char line[64];
    unsigned long want = 1;
    while (fgets(line, sizeof line, in)) {
        if (strcmp(line, "end\n") == 0) {
            say("c done %lu\n", want - 1);
            return 7;
        }
        unsigned long got = strtoul(line, NULL, 10);
        if (got != want) {
            FAIL("c got %lu want %lu\n", got, want);
            want = got;
        }
        if (want % 1000 == 0)
            say("c ok %lu\n", want);
        want++;
        if (want % 20 == 0)
            tick_sleep();
    }
    FAIL("c EOF without end after %lu\n", want - 1);
    return 1;
}

int main(int argc, char **argv)
{
    int p[2];
    if (argc < 2 || pipe(p) < 0)
        return 2;
    pid_t kid = fork();
    if (kid == 0) {
        prctl(PR_SET_PDEATHSIG, SIGKILL);
        close(p[1]);
        _exit(child(p[0]));
    }
    close(p[0]);
    say("p ready %d %d\n", getpid(), kid);
    char buf[32];
    unsigned long n;
    for (n = 1;; n++) {
        if (n % 100 == 0 && access(argv[1], F_OK) == 0)
            break;
        int len = snprintf(buf, sizeof buf, "%lu\n", n);
        if (write(p[1], buf, len) != len) {
            FAIL("p write %lu\n", n);
            return 1;
        }
    }
    if (write(p[1], "end\n", 4) != 4)
        FAIL("p write end\n");
    close(p[1]);
    int status;
    if (waitpid(kid, &status, 0) != kid)
        FAIL("p waitpid\n");
    say("p reaped %d sent %lu\n", WIFEXITED(status) ? WEXITSTATUS(status) : -1, n - 1);
    return 0;
}
