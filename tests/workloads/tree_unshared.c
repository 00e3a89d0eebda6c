/* A process whose second thread unshared its fd table (unshare(CLONE_FILES)): prints
 * "ready TID" once the thread did it, then waits for EOF on stdin. */
#define _GNU_SOURCE
#include <pthread.h>
#include <sched.h>
#include <stdio.h>
#include <sys/syscall.h>
#include <unistd.h>

static int ready[2];

static void *alone(void *arg)
{
    (void)arg;
    int tid = (int)syscall(SYS_gettid);
    if (unshare(CLONE_FILES) == 0 && write(ready[1], &tid, sizeof tid) == sizeof tid)
        for (;;)
            pause();
    return NULL;
}

int main(void)
{
    pthread_t t;
    int tid;
    if (pipe(ready) < 0 || pthread_create(&t, NULL, alone, NULL) != 0)
        return 1;
    if (read(ready[0], &tid, sizeof tid) != sizeof tid)
        return 1;
    printf("ready %d\n", tid);
    fflush(stdout);
    char ch;
    while (read(0, &ch, 1) > 0)
        ;
    return 0;
}
