/* Files deleted while open or mapped (ghost files). Usage: corner_ghost DIR [BIG_BYTES]
 *  - DIR/held: 5000 bytes, open O_RDWR at offset 100, then unlinked;
 *  - DIR/sparse: 4 KiB at 0 and at 200000 (a hole between), open O_RDONLY, unlinked;
 *  - DIR/wo: open O_WRONLY, 10 bytes written, unlinked;
 *  - DIR/priv: 3 pages mapped MAP_PRIVATE (one byte changed: a private copy), fd closed, unlinked;
 *  - DIR/shared: 2 pages mapped MAP_SHARED, written through the mapping, fd closed, unlinked;
 *  - with BIG_BYTES, DIR/big: that many bytes, open, unlinked (for the size limit).
 * Checks after SIGUSR1 (corner.h): each is still deleted (st_nlink 0, " (deleted)" in
 * /proc), same size, offset and bytes; the mappings hold the same bytes and still work. */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <limits.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <unistd.h>
#include "corner.h"

#define PG 4096
static int held, sparse, wo, big = -1;
static unsigned char *priv, *shared;
static char dir[PATH_MAX];

static unsigned char pat(int seed, long i) { return (unsigned char)(i * 13 + seed * 101 + (i >> 8)); }

static int make(const char *name, long n, int seed, int flags)
{
    char path[PATH_MAX + 32];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0640);
    unsigned char buf[PG];
    for (long at = 0; fd >= 0 && at < n; at += PG) {
        long k = n - at < PG ? n - at : PG;
        for (long i = 0; i < k; i++)
            buf[i] = pat(seed, at + i);
        if (write(fd, buf, k) != k)
            exit(1);
    }
    if (fd < 0)
        exit(1);
    int again = open(path, flags);
    close(fd);
    if (again < 0 || unlink(path))
        exit(1);
    return again;
}

static void check_deleted(int fd, const char *name, long size)
{
    struct stat st;
    char link[64], got[PATH_MAX], want[PATH_MAX + 64];
    CHECK(fstat(fd, &st) == 0 && st.st_nlink == 0, "%s: not deleted (nlink %ld)\n", name, (long)st.st_nlink);
    CHECK(st.st_size == size, "%s: size %ld, want %ld\n", name, (long)st.st_size, size);
    snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
    ssize_t n = readlink(link, got, sizeof got - 1);
    got[n > 0 ? n : 0] = 0;
    snprintf(want, sizeof want, "%s/%s (deleted)", dir, name);
    CHECK(strcmp(got, want) == 0, "%s: /proc says %s\n", name, got);
}

static void check_bytes(int fd, const char *name, long off, long n, int seed)
{
    unsigned char buf[PG];
    for (long at = off; at < off + n; at += PG) {
        long k = off + n - at < PG ? off + n - at : PG;
        if (pread(fd, buf, k, at) != k) {
            FAIL("%s: pread at %ld: %s\n", name, at, strerror(errno));
            return;
        }
        for (long i = 0; i < k; i++)
            if (buf[i] != (seed < 0 ? 0 : pat(seed, at + i))) {
                FAIL("%s: byte %ld differs\n", name, at + i);
                return;
            }
    }
}

static void check(void)
{
    static int before;         /* rounds done: each writes priv[6000] and shared[8] */
    check_deleted(held, "held", 5000);
    CHECK(lseek(held, 0, SEEK_CUR) == 100, "held: offset %ld\n", (long)lseek(held, 0, SEEK_CUR));
    check_bytes(held, "held", 0, 5000, 1);
    CHECK((fcntl(held, F_GETFL) & O_ACCMODE) == O_RDWR, "held: not O_RDWR\n");
    check_deleted(sparse, "sparse", 200000 + PG);
    check_bytes(sparse, "sparse", 0, PG, 2);
    check_bytes(sparse, "sparse", PG, 200000 - PG, -1);
    check_bytes(sparse, "sparse", 200000, PG, 3);
    check_deleted(wo, "wo", 10);
    CHECK((fcntl(wo, F_GETFL) & O_ACCMODE) == O_WRONLY, "wo: not O_WRONLY\n");
    if (big >= 0)
        check_deleted(big, "big", lseek(big, 0, SEEK_END));
    for (long i = 0; i < 3 * PG; i++)
        if (priv[i] != (i == 5000 ? 0xEE : i == 6000 && before ? 0x66 : pat(4, i))) {
            FAIL("priv: byte %ld differs\n", i);
            break;
        }
    for (long i = 0; i < 2 * PG; i++)
        if (shared[i] != (i == 7 ? 0x77 : i == 8 && before ? 0x88 : pat(5, i))) {
            FAIL("shared: byte %ld differs\n", i);
            break;
        }
    shared[8] = 0x88;          /* still a working shared mapping */
    priv[6000] = 0x66;
    before++;
    /* the maps still show both deleted files */
    char line[512];
    int seen = 0;
    FILE *maps = fopen("/proc/self/maps", "r");
    while (maps && fgets(line, sizeof line, maps))
        if (strstr(line, "/priv (deleted)") || strstr(line, "/shared (deleted)"))
            seen++;
    if (maps)
        fclose(maps);
    CHECK(seen == 2, "maps show %d deleted mappings, want 2\n", seen);
}

int main(int argc, char **argv)
{
    if (argc < 2 || !realpath(argv[1], dir))
        return 2;
    corner_init();
    held = make("held", 5000, 1, O_RDWR);
    lseek(held, 100, SEEK_SET);
    {   /* sparse: data, hole, data */
        char path[PATH_MAX + 32];
        unsigned char buf[PG];
        snprintf(path, sizeof path, "%s/sparse", dir);
        int fd = open(path, O_RDWR | O_CREAT | O_TRUNC, 0600);
        for (int i = 0; i < PG; i++)
            buf[i] = pat(2, i);
        if (fd < 0 || pwrite(fd, buf, PG, 0) != PG)
            exit(1);
        for (int i = 0; i < PG; i++)
            buf[i] = pat(3, 200000 + i);
        if (pwrite(fd, buf, PG, 200000) != PG)
            exit(1);
        sparse = open(path, O_RDONLY);
        close(fd);
        unlink(path);
    }
    wo = make("wo", 10, 6, O_WRONLY);
    if (argc > 2)
        big = make("big", atol(argv[2]), 7, O_RDONLY);
    int fd = make("priv", 3 * PG, 4, O_RDONLY);
    priv = mmap(NULL, 3 * PG, PROT_READ | PROT_WRITE, MAP_PRIVATE, fd, 0);
    close(fd);
    fd = make("shared", 2 * PG, 5, O_RDWR);
    shared = mmap(NULL, 2 * PG, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0);
    close(fd);
    if (priv == MAP_FAILED || shared == MAP_FAILED)
        exit(1);
    priv[5000] = 0xEE;
    shared[7] = 0x77;
    CORNER_LOOP(check);
}
