/* Maps PAGES (argv[1], default 64) private anonymous pages, touches them and prints
 * "ready ADDR LEN"; each "write" line on stdin rewrites every page and prints "ok N". */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

int main(int argc, char **argv)
{
    long pages = argc > 1 ? atol(argv[1]) : 64;
    size_t len = pages * 4096;
    char line[64];
    unsigned char *p = mmap(NULL, len, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    unsigned n = 0;
    if (p == MAP_FAILED)
        return 1;
    memset(p, 1, len);
    printf("ready %#lx %zu\n", (unsigned long)p, len);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        n++;
        for (size_t off = 0; off < len; off += 4096)
            p[off] = (unsigned char)n;
        printf("ok %u\n", n);
        fflush(stdout);
    }
    return 0;
}
