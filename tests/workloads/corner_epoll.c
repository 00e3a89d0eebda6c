/* An epoll set whose registrations outlived the fd numbers they were made with (the watch
 * is on the open file description and the number it was added as):
 *  - pipe A's read end registered as fd 30 (data 0xA), dup'ed to 31, then 30 closed;
 *  - pipe B's read end registered as fd 40 (data 0xB), kept as 41, 40 closed; then pipe C's
 *    read end lands on 40 and is registered too (data 0xC): two watches on number 40;
 *  - pipe D's read end registered as 50 (data 0xD), still open there (the plain case).
 * Checks after SIGUSR1 (corner.h): writing into each pipe makes epoll_wait report exactly
 * that pipe's data, and reading it clears it. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/epoll.h>
#include <unistd.h>
#include "corner.h"

static int ep, wa, wb, wc, wd, ra = 31, rb = 41, rc = 40, rd = 50;

static int pipe_at(int rfd, int *w)
{
    int p[2];
    if (pipe(p))
        exit(1);
    if (dup2(p[0], rfd) < 0)
        exit(1);
    close(p[0]);
    *w = p[1];
    return rfd;
}

static void watch(int fd, long data)
{
    struct epoll_event ev = { .events = EPOLLIN, .data.u64 = data };
    if (epoll_ctl(ep, EPOLL_CTL_ADD, fd, &ev))
        FAIL("epoll_ctl %d: %s\n", fd, strerror(errno));
}

static void one(int w, int r, long want, const char *name)
{
    struct epoll_event ev[4];
    CHECK(epoll_wait(ep, ev, 4, 0) == 0, "%s: events before the write\n", name);
    CHECK(write(w, "x", 1) == 1, "%s: write\n", name);
    int n = epoll_wait(ep, ev, 4, 1000);
    CHECK(n == 1 && ev[0].data.u64 == (unsigned long)want, "%s: %d events, data %#llx, want %#lx\n", name, n,
          n > 0 ? (unsigned long long)ev[0].data.u64 : 0ULL, want);
    char c;
    CHECK(read(r, &c, 1) == 1, "%s: read\n", name);
}

static void check(void)
{
    one(wa, ra, 0xA, "A (closed, dup'ed)");
    one(wb, rb, 0xB, "B (closed, number reused)");
    one(wc, rc, 0xC, "C (on the reused number)");
    one(wd, rd, 0xD, "D (plain)");
}

int main(void)
{
    corner_init();
    ep = epoll_create1(0);
    pipe_at(30, &wa);
    watch(30, 0xA);
    dup2(30, 31);
    close(30);
    pipe_at(40, &wb);
    watch(40, 0xB);
    dup2(40, 41);
    close(40);
    pipe_at(40, &wc);
    watch(40, 0xC);
    pipe_at(50, &wd);
    watch(50, 0xD);
    CORNER_LOOP(check);
}
