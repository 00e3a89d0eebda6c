/* O_APPEND files a restore must bring back: DIR/log opened O_WRONLY|O_APPEND after 1000
 * bytes were written, then 37 appended through it; DIR/rw opened O_RDWR|O_APPEND, 5000
 * bytes long, its offset moved back to 1234 by lseek (reads go there, writes to the end);
 * a dup of the first shares its description.
 * Checks after SIGUSR1 (corner.h): the size and the offset of each are what they were, a
 * read through rw starts at 1234, each append lands at the end, and the offsets follow. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/stat.h>
#include <unistd.h>
#include "corner.h"

static int lg, lg2, rw;
static off_t lg_size = 1037, rw_size = 5000;

static unsigned char pat(long i) { return (unsigned char)(i * 7 + 3); }

static off_t size_of(int fd)
{
    struct stat st;
    return fstat(fd, &st) ? -1 : st.st_size;
}

static void make(const char *path, long n)
{
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC, 0600);
    for (long i = 0; i < n; i++) {
        unsigned char c = pat(i);
        if (fd < 0 || write(fd, &c, 1) != 1)
            exit(1);
    }
    close(fd);
}

static void check(void)
{
    static unsigned round;
    round++;
    CHECK(size_of(lg) == lg_size, "log: size %ld, want %ld\n", (long)size_of(lg), (long)lg_size);
    CHECK(lseek(lg, 0, SEEK_CUR) == lg_size, "log: offset %ld, want %ld\n", (long)lseek(lg, 0, SEEK_CUR), (long)lg_size);
    CHECK(size_of(rw) == rw_size, "rw: size %ld, want %ld\n", (long)size_of(rw), (long)rw_size);
    CHECK(lseek(rw, 0, SEEK_CUR) == 1234, "rw: offset %ld, want 1234\n", (long)lseek(rw, 0, SEEK_CUR));
    CHECK((fcntl(lg, F_GETFL) & (O_APPEND | O_ACCMODE)) == (O_APPEND | O_WRONLY), "log: flags %#x\n", fcntl(lg, F_GETFL));
    CHECK((fcntl(rw, F_GETFL) & (O_APPEND | O_ACCMODE)) == (O_APPEND | O_RDWR), "rw: flags %#x\n", fcntl(rw, F_GETFL));
    unsigned char c;
    CHECK(read(rw, &c, 1) == 1 && c == pat(1234), "rw: read at 1234 gave %d\n", c);
    /* appends: through the dup too (one description: one offset) */
    CHECK(write(lg2, "abc", 3) == 3, "log: write: %s\n", strerror(errno));
    lg_size += 3;
    CHECK(lseek(lg, 0, SEEK_CUR) == lg_size, "log: offset %ld after append, want %ld\n", (long)lseek(lg, 0, SEEK_CUR), (long)lg_size);
    CHECK(write(rw, "xy", 2) == 2, "rw: write: %s\n", strerror(errno));
    rw_size += 2;
    CHECK(size_of(rw) == rw_size, "rw: append did not land at the end (size %ld)\n", (long)size_of(rw));
    char tail[2] = { 0, 0 };
    CHECK(pread(rw, tail, 2, rw_size - 2) == 2 && tail[0] == 'x' && tail[1] == 'y', "rw: the end is not the append\n");
    lseek(rw, 1234, SEEK_SET);
    say("round %u sizes %ld %ld\n", round, (long)lg_size, (long)rw_size);
}

int main(int argc, char **argv)
{
    char path[4096];
    if (argc != 2)
        return 2;
    corner_init();
    snprintf(path, sizeof path, "%s/log", argv[1]);
    make(path, 1000);
    lg = open(path, O_WRONLY | O_APPEND);
    for (int i = 0; i < 37; i++)
        if (write(lg, "L", 1) != 1)
            exit(1);
    lg2 = dup(lg);
    snprintf(path, sizeof path, "%s/rw", argv[1]);
    make(path, rw_size);
    rw = open(path, O_RDWR | O_APPEND);
    lseek(rw, 1234, SEEK_SET);
    CORNER_LOOP(check);
}
