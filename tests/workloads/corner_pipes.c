/* Pipes a restore must bring back as they were:
 *  - pipe A: its read end and write end each opened a second time through /proc/self/fd
 *    (separate open file descriptions of the same pipe), O_NONBLOCK on the second ones only;
 *  - pipe B: enlarged to 1 MiB with F_SETPIPE_SZ and written until full (EAGAIN);
 *  - pipes C0..C3: one process holding both ends of each, the fd numbers interleaved in
 *    every order (write end below read end, ends of different pipes between them), each
 *    holding a few bytes, C3 a full default-size 64 KiB.
 * Checks after SIGUSR1 (corner.h): flags per description, the descriptions still distinct
 * and still one pipe, B's size, byte count and every byte, C's contents. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/ioctl.h>
#include <unistd.h>
#include "corner.h"


#define BIG (1 << 20)
static int a_r, a_w, a_r2, a_w2, b_r, b_w;
static long b_bytes;
static int c_r[4], c_w[4];
static const int c_len[4] = { 5, 300, 4097, 65536 };

static unsigned char pat(int seed, long i) { return (unsigned char)((i * 131 + seed * 7 + (i >> 9)) & 0xff); }

static int reopen(int fd, int flags)
{
    char path[64];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    int n = open(path, flags);
    if (n < 0) {
        FAIL("reopen %s: %s\n", path, strerror(errno));
        exit(1);
    }
    return n;
}

static int at(int fd, int want)
{
    if (dup2(fd, want) < 0)
        exit(1);
    close(fd);
    return want;
}

static void setup(void)
{
    int p[2];
    if (pipe(p))
        exit(1);
    a_r = p[0], a_w = p[1];
    a_r2 = reopen(a_r, O_RDONLY | O_NONBLOCK);
    a_w2 = reopen(a_w, O_WRONLY | O_NONBLOCK);

    if (pipe2(p, O_NONBLOCK))
        exit(1);
    b_r = p[0], b_w = p[1];
    if (fcntl(b_w, F_SETPIPE_SZ, BIG) != BIG)
        FAIL("F_SETPIPE_SZ: %s\n", strerror(errno));
    unsigned char buf[4096];
    for (;;) {
        for (int i = 0; i < (int)sizeof buf; i++)
            buf[i] = pat(1, b_bytes + i);
        ssize_t n = write(b_w, buf, 1000);   /* odd-sized writes: pages packed as the kernel likes */
        if (n < 0)
            break;
        b_bytes += n;
    }
    while (write(b_w, (unsigned char[]){ pat(1, b_bytes) }, 1) == 1)   /* then to the last byte */
        b_bytes++;
    fcntl(b_r, F_SETFL, 0);                  /* the read end blocking, the write end not */

    /* C: fds 40.. in the order w0 r1 r0 w2 w1 r3 r2 w3 */
    int order[8][2] = { {0, 1}, {1, 0}, {0, 0}, {2, 1}, {1, 1}, {3, 0}, {2, 0}, {3, 1} };
    int ends[4][2];
    for (int k = 0; k < 4; k++)
        if (pipe(ends[k]))
            exit(1);
    for (int k = 0; k < 4; k++) {      /* out of the way of 40..47 first */
        ends[k][0] = at(ends[k][0], 60 + 2 * k);
        ends[k][1] = at(ends[k][1], 61 + 2 * k);
    }
    for (int i = 0; i < 8; i++) {
        int k = order[i][0], e = order[i][1];
        int fd = at(ends[k][e], 40 + i);
        if (e) c_w[k] = fd; else c_r[k] = fd;
    }
    for (int k = 0; k < 4; k++) {
        unsigned char *data = malloc(c_len[k]);
        for (int i = 0; i < c_len[k]; i++)
            data[i] = pat(10 + k, i);
        if (write(c_w[k], data, c_len[k]) != c_len[k])
            FAIL("C%d write: %s\n", k, strerror(errno));
        free(data);
    }
}

static int nonblock(int fd) { return !!(fcntl(fd, F_GETFL) & O_NONBLOCK); }

static void check_a(void)
{
    CHECK(!nonblock(a_r) && !nonblock(a_w), "A: first ends became O_NONBLOCK (%d %d)\n", nonblock(a_r), nonblock(a_w));
    CHECK(nonblock(a_r2) && nonblock(a_w2), "A: second ends lost O_NONBLOCK (%d %d)\n", nonblock(a_r2), nonblock(a_w2));
    /* still one pipe: written through one write end, read through the other read end */
    if (write(a_w2, "x", 1) != 1 || write(a_w, "y", 1) != 1)
        FAIL("A: write: %s\n", strerror(errno));
    char got[2];
    if (read(a_r2, got, 2) != 2 || got[0] != 'x' || got[1] != 'y')
        FAIL("A: the ends are no longer one pipe\n");
    CHECK(read(a_r2, got, 1) < 0 && errno == EAGAIN, "A: non-blocking read end did not say EAGAIN\n");
}

static void check_b(void)
{
    int size = fcntl(b_r, F_GETPIPE_SZ), avail = -1;
    ioctl(b_r, FIONREAD, &avail);
    CHECK(size == BIG, "B: pipe size %d, want %d\n", size, BIG);
    CHECK(avail == b_bytes, "B: %d bytes buffered, want %ld\n", avail, b_bytes);
    CHECK(write(b_w, "z", 1) < 0 && errno == EAGAIN, "B: not full any more\n");
    CHECK(nonblock(b_w) && !nonblock(b_r), "B: flags changed\n");
    unsigned char buf[8192];
    long got = 0, bad = -1;
    while (got < b_bytes) {
        ssize_t n = read(b_r, buf, sizeof buf);
        if (n <= 0) {
            FAIL("B: read: %s after %ld\n", n ? strerror(errno) : "EOF", got);
            return;
        }
        for (ssize_t i = 0; i < n && bad < 0; i++)
            if (buf[i] != pat(1, got + i))
                bad = got + i;
        got += n;
    }
    CHECK(bad < 0, "B: byte %ld differs\n", bad);
}

static void check_c(void)
{
    for (int k = 0; k < 4; k++) {
        int avail = -1;
        ioctl(c_r[k], FIONREAD, &avail);
        if (avail != c_len[k]) {
            FAIL("C%d: %d bytes buffered, want %d\n", k, avail, c_len[k]);
            continue;
        }
        unsigned char *data = malloc(c_len[k]);
        long got = 0;
        while (got < c_len[k]) {
            ssize_t n = read(c_r[k], data + got, c_len[k] - got);
            if (n <= 0)
                break;
            got += n;
        }
        for (int i = 0; i < got; i++)
            if (data[i] != pat(10 + k, i)) {
                FAIL("C%d: byte %d differs\n", k, i);
                break;
            }
        free(data);
    }
}

static void check(void)
{
    check_a();
    check_b();
    check_c();
}

int main(void)
{
    corner_init();
    setup();
    CORNER_LOOP(check);
}
