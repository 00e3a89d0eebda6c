/* Target of bench/first_predump.py: SIZE bytes of private anonymous memory (every page
 * written) and THREADS threads in all (the main one included), every one idle in pause().
 *
 * usage: threads_target SIZE_BYTES THREADS
 *
 * Prints "ready" on stdout once every thread runs, then points fds 0-2 at /dev/null.
 */
#include <fcntl.h>
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static void *idle(void *arg)
{
    for (;;)
        pause();
    return arg;
}

int main(int argc, char **argv)
{
    if (argc < 3) {
        fprintf(stderr, "usage: %s SIZE_BYTES THREADS\n", argv[0]);
        return 2;
    }
    size_t size = strtoull(argv[1], NULL, 0);
    int threads = atoi(argv[2]);
    unsigned char *mem = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (mem == MAP_FAILED) {
        perror("mmap");
        return 1;
    }
    memset(mem, 0x5a, size);
    for (int i = 1; i < threads; i++) {
        pthread_t t;
        if (pthread_create(&t, NULL, idle, NULL)) {
            perror("pthread_create");
            return 1;
        }
    }
    printf("ready\n");
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
    for (;;)
        pause();
}
