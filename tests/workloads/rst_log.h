/* Shared by the rst_* round-trip workloads: log lines with write(2) only (stdout is an
 * O_APPEND log file that survives restore) and a relative tick sleep. Define TICK_NS first. */
#ifndef RST_LOG_H
#define RST_LOG_H
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <time.h>
#include <unistd.h>

static void say(const char *fmt, ...)
{
    char buf[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1)
        n = sizeof buf - 1;
    ssize_t off = 0;
    while (off < n) {
        ssize_t w = write(1, buf + off, n - off);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        off += w;
    }
}

#define FAIL(...) say("FAIL " __VA_ARGS__)

/* 20 ms of sleep, relative: after a restore the task does not rush through the ticks it
 * missed while it sat in images (rem starts at zero in case EINTR comes without it) */
static void tick_sleep(void)
{
    struct timespec req = { 0, TICK_NS }, rem = { 0, 0 };
    while (nanosleep(&req, &rem) != 0 && errno == EINTR) {
        req = rem;
        rem.tv_sec = rem.tv_nsec = 0;
    }
}

#endif
