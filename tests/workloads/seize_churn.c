/* CREATORS (argv[1], default 4) threads keep creating and joining short-lived threads;
 * "count" on stdin prints how many were created so far. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>

static volatile unsigned long created;

static void *brief(void *arg)
{
    (void)arg;
    __atomic_fetch_add(&created, 1, __ATOMIC_RELAXED);
    return NULL;
}

static void *creator(void *arg)
{
    (void)arg;
    for (;;) {
        pthread_t t;
        if (pthread_create(&t, NULL, brief, NULL) == 0)
            pthread_join(t, NULL);
    }
    return NULL;
}

int main(int argc, char **argv)
{
    long n = argc > 1 ? atol(argv[1]) : 4;
    char line[64];
    pthread_t t;
    for (long i = 0; i < n; i++)
        pthread_create(&t, NULL, creator, NULL);
    printf("ready %ld\n", n);
    fflush(stdout);
    while (fgets(line, sizeof line, stdin)) {
        printf("count %lu\n", created);
        fflush(stdout);
    }
    return 0;
}
