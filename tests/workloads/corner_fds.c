/* signalfd, timerfd and inotify through a restore. Usage: corner_fds DIR
 *  - sfd: signalfd for SIGUSR2 and SIGRTMIN+1 (both blocked), O_NONBLOCK;
 *  - armed: CLOCK_MONOTONIC timerfd, 30 s left, 7 s interval;
 *  - fired: CLOCK_BOOTTIME one-shot that expired once, not read (1 tick waiting);
 *  - idle: CLOCK_REALTIME timerfd never armed;
 *  - ino: inotify, IN_CREATE on DIR as wd 1, IN_MODIFY on DIR/file as wd 3 (wd 2 removed).
 * Checks after SIGUSR1 (corner.h): the signalfd reads a SIGUSR2 sent now; the armed timer
 * has at most 30 s left (more than 20), its interval is 7 s; the fired one reads 1; the
 * idle one is disarmed; creating DIR/new and writing DIR/file give events on wd 1 and 3. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/inotify.h>
#include <sys/signalfd.h>
#include <sys/timerfd.h>
#include <unistd.h>
#include "corner.h"

static int sfd, armed, fired, idle, ino;
static char dir[PATH_MAX];

static void check(void)
{
    static int round;
    round++;
    CHECK(fcntl(sfd, F_GETFL) & O_NONBLOCK, "sfd: lost O_NONBLOCK\n");
    struct signalfd_siginfo si;
    CHECK(read(sfd, &si, sizeof si) < 0 && errno == EAGAIN, "sfd: something to read before the signal\n");
    kill(getpid(), SIGUSR2);
    CHECK(read(sfd, &si, sizeof si) == sizeof si && si.ssi_signo == SIGUSR2, "sfd: no SIGUSR2 read\n");

    struct itimerspec it;
    timerfd_gettime(armed, &it);
    CHECK(it.it_value.tv_sec < 30 && it.it_value.tv_sec >= 20, "armed: %ld s left\n", (long)it.it_value.tv_sec);
    CHECK(it.it_interval.tv_sec == 7 && it.it_interval.tv_nsec == 0, "armed: interval %ld.%09ld\n",
          (long)it.it_interval.tv_sec, it.it_interval.tv_nsec);
    uint64_t ticks = 0;
    if (round == 1) {
        CHECK(read(fired, &ticks, 8) == 8 && ticks == 1, "fired: read %llu ticks\n", (unsigned long long)ticks);
    }
    timerfd_gettime(idle, &it);
    CHECK(!it.it_value.tv_sec && !it.it_value.tv_nsec, "idle: armed\n");

    char path[PATH_MAX + 32], buf[4096];
    snprintf(path, sizeof path, "%s/new%d", dir, round);
    close(open(path, O_CREAT | O_WRONLY, 0600));
    snprintf(path, sizeof path, "%s/file", dir);
    int f = open(path, O_WRONLY | O_APPEND);
    CHECK(f >= 0 && write(f, "x", 1) == 1, "write file: %s\n", strerror(errno));
    close(f);
    int seen_create = 0, seen_modify = 0;
    for (int tries = 0; tries < 100 && !(seen_create && seen_modify); tries++) {
        ssize_t n = read(ino, buf, sizeof buf);
        if (n <= 0) {
            usleep(1000);
            continue;
        }
        for (char *p = buf; p < buf + n;) {
            struct inotify_event *e = (struct inotify_event *)p;
            if (e->wd == 1 && (e->mask & IN_CREATE))
                seen_create = 1;
            else if (e->wd == 3 && (e->mask & IN_MODIFY))
                seen_modify = 1;
            else if (e->wd == 1 && (e->mask & IN_MODIFY))
                ;      /* DIR/file is also in DIR, which watches only IN_CREATE */
            else
                FAIL("ino: unexpected event wd %d mask %#x\n", e->wd, e->mask);
            p += sizeof *e + e->len;
        }
    }
    CHECK(seen_create, "ino: no IN_CREATE on wd 1\n");
    CHECK(seen_modify, "ino: no IN_MODIFY on wd 3\n");
}

int main(int argc, char **argv)
{
    if (argc != 2 || !realpath(argv[1], dir))
        return 2;
    corner_init();
    sigset_t m;
    sigemptyset(&m);
    sigaddset(&m, SIGUSR2);
    sigaddset(&m, SIGRTMIN + 1);
    sigprocmask(SIG_BLOCK, &m, NULL);
    sfd = signalfd(-1, &m, SFD_NONBLOCK);

    armed = timerfd_create(CLOCK_MONOTONIC, 0);
    struct itimerspec it = { { 7, 0 }, { 30, 0 } };
    timerfd_settime(armed, 0, &it, NULL);
    fired = timerfd_create(CLOCK_BOOTTIME, TFD_NONBLOCK);
    struct itimerspec once = { { 0, 0 }, { 0, 1000 } };
    timerfd_settime(fired, 0, &once, NULL);
    idle = timerfd_create(CLOCK_REALTIME, 0);

    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/file", dir);
    close(open(path, O_CREAT | O_WRONLY, 0600));
    ino = inotify_init1(IN_NONBLOCK);
    int w1 = inotify_add_watch(ino, dir, IN_CREATE);
    int w2 = inotify_add_watch(ino, "/", IN_DELETE);
    inotify_rm_watch(ino, w2);
    int w3 = inotify_add_watch(ino, path, IN_MODIFY);
    char buf[4096];
    while (read(ino, buf, sizeof buf) > 0)
        ;                     /* the IN_IGNORED of wd 2 */
    if (sfd < 0 || armed < 0 || fired < 0 || idle < 0 || w1 != 1 || w3 != 3)
        FAIL("setup: %s (wd %d %d)\n", strerror(errno), w1, w3);
    usleep(2000);             /* let `fired` fire */
    CORNER_LOOP(check);
}
