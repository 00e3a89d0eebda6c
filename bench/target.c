/* Benchmark target: SIZE bytes of touched private anonymous memory, then idle.
 *
 * usage: target SIZE_BYTES
 * Maps SIZE with MAP_PRIVATE|MAP_ANONYMOUS, writes one non-zero byte into every page (so each
 * page is present and not the zero page), prints "ready <addr>" and blocks in read(0) until
 * its stdin closes, then exits.
 */
#include <stdio.h>
#include <stdlib.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    if (argc != 2) {
        fprintf(stderr, "usage: %s SIZE_BYTES\n", argv[0]);
        return 2;
    }
    size_t size = strtoull(argv[1], NULL, 0);
    long page = sysconf(_SC_PAGESIZE);
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE,
                              MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    for (size_t off = 0; off < size; off += page)
        mem[off] = (unsigned char)((off / page) | 1);
    printf("ready %p\n", (void *)mem);
    fflush(stdout);
    char c;
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}
