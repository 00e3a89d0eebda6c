/* Lazy restore and fork advice: a 1 MiB MADV_WIPEONFORK area and a 1 MiB MADV_DONTFORK area
 * (mapped first, so above the big area: the background push reaches them last), then SIZE
 * MiB of plain data, each filled with a pattern; says "ready", waits until the file GO
 * exists (the test makes it once the lazy restore returned) and forks at once, before it
 * touches anything: the child must read zeros in every page of the WIPEONFORK area, must not
 * have the DONTFORK one, and must see the data of the big area; the parent then checks all
 * three. Prints "ok" or "FAIL ..." lines. */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#define PG 4096
#define SMALL (1 << 20)

static unsigned char *map(size_t size, unsigned char seed)
{
    unsigned char *p = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (p == MAP_FAILED) { perror("mmap"); exit(1); }
    for (size_t i = 0; i < size; i += PG) p[i] = p[i + PG - 1] = (unsigned char)(seed + i / PG);
    return p;
}

static long wrong(const unsigned char *p, size_t size, unsigned char seed)
{
    long bad = 0;
    for (size_t i = 0; i < size; i += PG)
        if (p[i] != (unsigned char)(seed + i / PG) || p[i + PG - 1] != (unsigned char)(seed + i / PG)) bad++;
    return bad;
}

int main(int argc, char **argv)
{
    size_t size = (size_t)atol(argv[1]) << 20;
    unsigned char *wipe = map(SMALL, 1), *dontfork = map(SMALL, 2), *big = map(size, 3);
    if (madvise(wipe, SMALL, MADV_WIPEONFORK) || madvise(dontfork, SMALL, MADV_DONTFORK)) { perror("madvise"); return 1; }
    printf("ready %p %p %p\n", (void *)wipe, (void *)dontfork, (void *)big);
    fflush(stdout);
    struct stat st;
    while (stat(argv[2], &st) != 0) usleep(1000);
    pid_t child = fork();
    if (child == 0) {
        long nonzero = 0;
        for (size_t i = 0; i < SMALL; i++) nonzero += wipe[i] != 0;
        unsigned char vec;
        int gone = mincore(dontfork, PG, &vec) < 0 && errno == ENOMEM;
        long bad = wrong(big, size, 3);
        if (nonzero || !gone || bad) {
            printf("FAIL child: %ld nonzero bytes in the WIPEONFORK area, DONTFORK area %s, %ld bad pages\n",
                   nonzero, gone ? "gone" : "still there", bad);
            fflush(stdout);
            _exit(1);
        }
        _exit(0);
    }
    int status = 0;
    waitpid(child, &status, 0);
    long bad = wrong(wipe, SMALL, 1) + wrong(dontfork, SMALL, 2) + wrong(big, size, 3);
    if (bad) printf("FAIL parent: %ld bad pages\n", bad);
    else if (!WIFEXITED(status) || WEXITSTATUS(status)) printf("FAIL child status %#x\n", status);
    else printf("ok\n");
    fflush(stdout);
    pause();
    return 0;
}
