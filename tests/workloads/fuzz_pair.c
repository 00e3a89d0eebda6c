/* The dump the image fuzz test mutates: a parent and one child, each with a page pattern
 * in an anonymous area and its stack, the parent holding a regular file and both ends of a
 * pipe with a few bytes in it; both park in pause(). Small on purpose: every fuzz case
 * reads its whole image set. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdio.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void fill(unsigned char *p, size_t n, unsigned seed) {
    for (size_t i = 0; i < n; i++)
        p[i] = (unsigned char)(i * 7 + seed);
}

int main(int argc, char **argv) {
    const char *data = argc > 1 ? argv[1] : "fuzz.data";
    unsigned char *area = mmap(NULL, 8 * 4096, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (area == MAP_FAILED)
        return 1;
    fill(area, 3 * 4096, 1);
    int fd = open(data, O_RDWR | O_CREAT | O_CLOEXEC, 0600);
    int p[2];
    if (fd < 0 || pipe(p) < 0 || write(p[1], "queued", 6) != 6)
        return 1;
    pid_t child = fork();
    if (child < 0)
        return 1;
    if (child == 0) {
        fill(area + 4096, 4096, 2);
        write(1, "child ready\n", 12);
        for (;;)
            pause();
    }
    write(1, "ready\n", 6);
    for (;;)
        pause();
}
