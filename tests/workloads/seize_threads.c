/* NTHREADS (argv[1], default 8) threads spin writing counters; "sum" on stdin prints their sum. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

static volatile unsigned long counters[64][8];   /* one cache line each */

static void *spin(void *arg)
{
    volatile unsigned long *c = counters[(long)arg];
    for (;;)
        (*c)++;
    return NULL;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 8;
    char line[64];
    pthread_t t;
    for (long i = 0; i < n && i < 64; i++)
        pthread_create(&t, NULL, spin, (void *)i);
    printf("ready %ld\n", n);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        unsigned long sum = 0;
        for (long i = 0; i < n; i++)
            sum += counters[i][0];
        printf("sum %lu\n", sum);
        fflush(stdout);
    }
    return 0;
}
