/* Round-trip workload: open files and their positions.
 *
 * Usage: rst_files DIR   (DIR: where it creates append.log and data.bin)
 * Protocol: stdin /dev/null, stdout+stderr a log file opened O_APPEND; "ready", then every
 * 20 ms "tick N ok", "FAIL <reason>" on a failed check. Everything via write(2).
 *
 * fd 10/11: a pipe holding 3000 unread bytes; each tick checks FIONREAD. On SIGUSR1 main
 *           reads it dry, compares the bytes ("drained N ok") and refills it with the next
 *           pattern (3000 + k bytes after the k-th drain).
 * fd 12:    DIR/append.log, O_WRONLY|O_APPEND, 1000 bytes long at start; each tick appends
 *           a 16-byte record and checks the position and the size.
 * fd 13:    DIR/data.bin, O_RDWR, FD_CLOEXEC, 20000 bytes, positioned at 12345; each tick
 *           checks lseek(fd, 0, SEEK_CUR), the flags and 64 bytes there (pread).
 * fd 14:    /dev/null, O_WRONLY.
 * Every fd is checked against /proc/self/fd (same path), and fd 1 keeps its flags (O_APPEND).
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/stat.h>
#include <time.h>
#include <unistd.h>

#define TICK_NS (20 * 1000000L)
#define PIPE_RD 10
#define PIPE_WR 11
#define APPEND_FD 12
#define RDWR_FD 13
#define NULL_FD 14
#define PIPE_BYTES 3000
#define DATA_SIZE 20000
#define DATA_POS 12345
#define APPEND_START 1000
#define REC 16

#include "rst_log.h"

static volatile sig_atomic_t drain_requests;
static void on_usr1(int sig) { (void)sig; drain_requests++; }

static unsigned char patbyte(unsigned seed, size_t i)
{
    uint32_t x = (uint32_t)(i * 2654435761u) ^ (seed * 40503u + 17);
    x ^= x >> 13;
    return (unsigned char)(x * 0x5bd1e995u >> 24);
}

static void put_at(int fd, int want_fd, const char *what)
{
    if (fd < 0) {
        say("FAIL open %s: %s\n", what, strerror(errno));
        exit(1);
    }
    if (fd != want_fd) {
        if (dup2(fd, want_fd) < 0) {
            say("FAIL dup2 %s: %s\n", what, strerror(errno));
            exit(1);
        }
        close(fd);
    }
}

static int write_all(int fd, const unsigned char *p, size_t n)
{
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return -1;
        p += w;
        n -= w;
    }
    return 0;
}

static void fill_pipe(unsigned seed, size_t n)
{
    unsigned char buf[8192];
    for (size_t i = 0; i < n; i++)
        buf[i] = patbyte(seed, i);
    if (write_all(PIPE_WR, buf, n))
        FAIL("pipe write: %s\n", strerror(errno));
}

static void check_link(int fd, const char *want)
{
    char path[64], got[PATH_MAX];
    snprintf(path, sizeof path, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(path, got, sizeof got - 1);
    if (n < 0) {
        FAIL("fd %d: readlink: %s\n", fd, strerror(errno));
        return;
    }
    got[n] = 0;
    if (want[0] && strcmp(got, want) != 0)
        FAIL("fd %d is %s, was %s\n", fd, got, want);
}

int main(int argc, char **argv)
{
    char append_path[PATH_MAX], data_path[PATH_MAX];
    char append_real[PATH_MAX], data_real[PATH_MAX];
    unsigned char buf[8192];
    unsigned long tick = 0;
    unsigned drains = 0;
    size_t pipe_expect = PIPE_BYTES;
    off_t append_size = APPEND_START;
    int stdout_flags;

    if (argc != 2) {
        say("FAIL usage: rst_files DIR\n");
        return 2;
    }
    snprintf(append_path, sizeof append_path, "%s/append.log", argv[1]);
    snprintf(data_path, sizeof data_path, "%s/data.bin", argv[1]);

    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sigaction(SIGUSR1, &sa, NULL);

    int p[2];
    if (pipe(p)) {
        say("FAIL pipe: %s\n", strerror(errno));
        return 1;
    }
    /* move both ends out of the way first so that dup2 never clobbers the other end */
    int r = fcntl(p[0], F_DUPFD, 20), w = fcntl(p[1], F_DUPFD, 20);
    close(p[0]);
    close(p[1]);
    put_at(r, PIPE_RD, "pipe");
    put_at(w, PIPE_WR, "pipe");
    fill_pipe(0, PIPE_BYTES);

    int fd = open(append_path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    memset(buf, 'A', APPEND_START);
    if (fd < 0 || write_all(fd, buf, APPEND_START)) {
        say("FAIL create %s: %s\n", append_path, strerror(errno));
        return 1;
    }
    close(fd);
    put_at(open(append_path, O_WRONLY | O_APPEND), APPEND_FD, append_path);
    if (lseek(APPEND_FD, 0, SEEK_END) != APPEND_START)
        say("FAIL append.log not at %d\n", APPEND_START);

    fd = open(data_path, O_RDWR | O_CREAT | O_TRUNC, 0600);
    if (fd < 0) {
        say("FAIL create %s: %s\n", data_path, strerror(errno));
        return 1;
    }
    for (size_t off = 0; off < DATA_SIZE; off += sizeof buf) {
        size_t n = DATA_SIZE - off < sizeof buf ? DATA_SIZE - off : sizeof buf;
        for (size_t i = 0; i < n; i++)
            buf[i] = patbyte(99, off + i);
        if (write_all(fd, buf, n)) {
            say("FAIL write %s: %s\n", data_path, strerror(errno));
            return 1;
        }
    }
    put_at(fd, RDWR_FD, data_path);
    fcntl(RDWR_FD, F_SETFD, FD_CLOEXEC);
    if (lseek(RDWR_FD, DATA_POS, SEEK_SET) != DATA_POS)
        say("FAIL lseek: %s\n", strerror(errno));

    put_at(open("/dev/null", O_WRONLY), NULL_FD, "/dev/null");

    if (!realpath(append_path, append_real) || !realpath(data_path, data_real)) {
        say("FAIL realpath: %s\n", strerror(errno));
        return 1;
    }
    stdout_flags = fcntl(1, F_GETFL) & (O_APPEND | O_ACCMODE);
    say("ready\n");

    for (;;) {
        tick_sleep();
        tick++;

        /* the pipe */
        int avail = -1;
        if (ioctl(PIPE_RD, FIONREAD, &avail) != 0)
            FAIL("FIONREAD: %s\n", strerror(errno));
        else if ((size_t)avail != pipe_expect)
            FAIL("pipe holds %d bytes, want %zu\n", avail, pipe_expect);
        if (drain_requests > (sig_atomic_t)drains) {
            drains++;
            size_t got = 0;
            int bad = -1;
            while (got < pipe_expect) {
                ssize_t n = read(PIPE_RD, buf, pipe_expect - got);
                if (n < 0 && errno == EINTR)
                    continue;
                if (n <= 0)
                    break;
                for (ssize_t i = 0; i < n; i++)
                    if (bad < 0 && buf[i] != patbyte(drains - 1, got + i))
                        bad = (int)(got + i);
                got += n;
            }
            if (got != pipe_expect || bad >= 0)
                FAIL("drain %u: read %zu of %zu bytes, first bad byte %d\n", drains, got,
                     pipe_expect, bad);
            else
                say("drained %zu ok\n", got);
            pipe_expect = PIPE_BYTES + drains;
            fill_pipe(drains, pipe_expect);
        }
        struct stat pr, pw;
        if (fstat(PIPE_RD, &pr) || fstat(PIPE_WR, &pw) || !S_ISFIFO(pr.st_mode) ||
            pr.st_ino != pw.st_ino || pr.st_dev != pw.st_dev)
            FAIL("fds %d and %d are not the two ends of one pipe\n", PIPE_RD, PIPE_WR);
        if ((fcntl(PIPE_RD, F_GETFL) & O_ACCMODE) != O_RDONLY ||
            (fcntl(PIPE_WR, F_GETFL) & O_ACCMODE) != O_WRONLY)
            FAIL("pipe ends have the wrong access modes\n");

        /* the O_APPEND file */
        unsigned char rec[REC];
        snprintf((char *)rec, sizeof rec, "rec %010lu", tick);
        rec[REC - 1] = '\n';
        if (write_all(APPEND_FD, rec, REC))
            FAIL("append: %s\n", strerror(errno));
        else
            append_size += REC;
        off_t pos = lseek(APPEND_FD, 0, SEEK_CUR);
        struct stat st;
        if (pos != append_size)
            FAIL("append.log position %lld, want %lld\n", (long long)pos, (long long)append_size);
        if (fstat(APPEND_FD, &st) || st.st_size != append_size)
            FAIL("append.log size %lld, want %lld\n", (long long)st.st_size, (long long)append_size);
        int fl = fcntl(APPEND_FD, F_GETFL);
        if (!(fl & O_APPEND) || (fl & O_ACCMODE) != O_WRONLY)
            FAIL("append.log flags %#x\n", fl);
        check_link(APPEND_FD, append_real);

        /* the O_RDWR file */
        pos = lseek(RDWR_FD, 0, SEEK_CUR);
        if (pos != DATA_POS)
            FAIL("data.bin position %lld, want %d\n", (long long)pos, DATA_POS);
        fl = fcntl(RDWR_FD, F_GETFL);
        if ((fl & O_ACCMODE) != O_RDWR || (fl & O_APPEND))
            FAIL("data.bin flags %#x\n", fl);
        if (!(fcntl(RDWR_FD, F_GETFD) & FD_CLOEXEC))
            FAIL("data.bin lost FD_CLOEXEC\n");
        if (pread(RDWR_FD, buf, 64, DATA_POS) != 64)
            FAIL("data.bin pread: %s\n", strerror(errno));
        else
            for (int i = 0; i < 64; i++)
                if (buf[i] != patbyte(99, DATA_POS + i)) {
                    FAIL("data.bin byte %d differs\n", DATA_POS + i);
                    break;
                }
        check_link(RDWR_FD, data_real);

        /* /dev/null and the log */
        if (write(NULL_FD, "0123456789", 10) != 10)
            FAIL("/dev/null write: %s\n", strerror(errno));
        check_link(NULL_FD, "/dev/null");
        if ((fcntl(1, F_GETFL) & (O_APPEND | O_ACCMODE)) != stdout_flags)
            FAIL("stdout flags %#x, were %#x\n", fcntl(1, F_GETFL), stdout_flags);

        say("tick %lu ok\n", tick);
    }
}
