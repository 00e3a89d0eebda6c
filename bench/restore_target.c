/* Target of bench/restore.py: SIZE bytes of private anonymous memory, every byte non-zero.
 *
 * usage: restore_target SIZE_BYTES [MBPS]    fill, then sleep; with MBPS > 0 keep dirtying
 *                                            pages at MBPS (one byte per 4 KiB page, 10^6 B)
 *        restore_target SIZE_BYTES blank     map SIZE untouched (the process_vm_writev baseline)
 *
 * Prints "ready <addr>" on stdout, then points fds 0-2 at /dev/null (the dumped fd table is
 * only /dev/null: nothing tied to the benchmark) and loops in nanosleep(1 ms) forever.
 */
#include <fcntl.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <time.h>
#include <unistd.h>

static double now(void)
{
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec + t.tv_nsec * 1e-9;
}

int main(int argc, char **argv)
{
    if (argc < 2) {
        fprintf(stderr, "usage: %s SIZE_BYTES [MBPS|blank]\n", argv[0]);
        return 2;
    }
    size_t size = strtoull(argv[1], NULL, 0);
    int blank = argc > 2 && !strcmp(argv[2], "blank");
    double mbps = argc > 2 && !blank ? atof(argv[2]) : 0;
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    if (!blank) {
        /* every byte non-zero and varying: no zero pages, nothing a dedup could fold */
        uint64_t *q = (uint64_t *)mem;
        for (size_t i = 0; i < size / 8; i++)
            q[i] = (i * 0x9E3779B97F4A7C15ull) | 0x0101010101010101ull;
    }
    printf("ready %p\n", (void *)mem);
    fflush(stdout);
    int nul = open("/dev/null", O_RDWR);
    if (nul < 0) {
        perror("/dev/null");
        return 1;
    }
    dup2(nul, 0);
    dup2(nul, 1);
    dup2(nul, 2);
    if (nul > 2)
        close(nul);

    size_t npages = size / 4096, pos = 0;
    double t0 = now(), done = 0;
    struct timespec ms1 = {0, 1000000};
    for (;;) {
        nanosleep(&ms1, NULL);
        if (mbps <= 0 || !npages)
            continue;
        double want = (now() - t0) * mbps * 1e6 / 4096;
        for (; done < want; done++, pos++) {
            unsigned char *p = mem + (pos % npages) * 4096 + 8;
            *p = (unsigned char)(*p + 1) ? (unsigned char)(*p + 1) : 1;
        }
    }
}
