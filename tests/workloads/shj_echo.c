/* Shell-job workload: stdin, stdout and stderr are a terminal.
 *
 * Prints "ready" on fd 1, then for every line read from fd 0 answers "echo N: <line>"
 * on fd 1, N counting the lines since the start (the state that must survive a dump and
 * restore). A line "err" is answered "err N" on fd 2 instead, so that fd 2 can be tested
 * too. EOF or a read error (a hung-up terminal: EIO) ends the process with status 0 / 2.
 * Only read(2)/write(2): no stdio buffering between the terminal and the counter.
 */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

static void put(int fd, const char *s, size_t n)
{
    while (n) {
        ssize_t w = write(fd, s, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            _exit(3);
        s += w;
        n -= (size_t)w;
    }
}

int main(void)
{
    static char buf[4096], out[4200];
    size_t have = 0;
    unsigned long counter = 0;

    put(1, "ready\n", 6);
    for (;;) {
        ssize_t n = read(0, buf + have, sizeof buf - have);
        if (n < 0 && errno == EINTR)
            continue;
        if (n < 0)
            return 2;
        if (n == 0)
            return 0;
        have += (size_t)n;
        char *nl;
        while ((nl = memchr(buf, '\n', have)) != NULL) {
            size_t len = (size_t)(nl - buf);
            int m;
            counter++;
            if (len == 3 && memcmp(buf, "err", 3) == 0)
                m = snprintf(out, sizeof out, "err %lu\n", counter), put(2, out, (size_t)m);
            else
                m = snprintf(out, sizeof out, "echo %lu: %.*s\n", counter, (int)len, buf),
                put(1, out, (size_t)m);
            memmove(buf, nl + 1, have - len - 1);
            have -= len + 1;
        }
        if (have == sizeof buf)
            have = 0;   /* a line longer than the buffer is dropped */
    }
}
