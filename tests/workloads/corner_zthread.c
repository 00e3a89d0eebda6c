/* Threads that ended: a thread that returned and was never joined (nor detached), and,
 * with argument "leader", the main thread itself ended with pthread_exit while a worker
 * goes on (the leader is then a zombie thread of a living process).
 * The worker (or main) answers SIGUSR1 (corner.h): "checked N", after checking that the
 * unjoined thread can still be joined with its return value. */
#define _GNU_SOURCE
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>
#include "corner.h"

static pthread_t gone;

static void *quick(void *arg)
{
    return arg;
}

static void check(void)
{
    static int joined;
    if (!joined) {
        void *ret = NULL;
        int err = pthread_join(gone, &ret);
        CHECK(err == 0 && ret == (void *)0x5eed, "join: %s, %p\n", strerror(err), ret);
        joined = 1;
    }
}

static void *worker(void *arg)
{
    (void)arg;
    CORNER_LOOP(check);
    return NULL;
}

int main(int argc, char **argv)
{
    corner_init();                  /* SIGUSR1 blocked in every thread made from now on */
    pthread_create(&gone, NULL, quick, (void *)0x5eed);
    usleep(10000);                  /* it has ended: a task no more, its result kept */
    if (argc > 1 && strcmp(argv[1], "leader") == 0) {
        pthread_t w;
        pthread_create(&w, NULL, worker, NULL);
        pthread_exit(NULL);
    }
    worker(NULL);
}
