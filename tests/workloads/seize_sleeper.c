/* Sleeps MS milliseconds with nanosleep (argv[2]="nano") or clock_nanosleep
 * (default), then prints "slept ELAPSED_MS rc=RC" and waits for EOF on stdin. */
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

static double now_ms(void)
{
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
    long ms = argc > 1 ? atol(argv[1]) : 1000;
    int nano = argc > 2 && strcmp(argv[2], "nano") == 0;
    struct timespec req = { ms / 1000, (ms % 1000) * 1000000L }, rem;
    char c;
    printf("ready %d\n", getpid());
    fflush(stdout);
    double t0 = now_ms();
    int rc = nano ? nanosleep(&req, &rem) : clock_nanosleep(CLOCK_MONOTONIC, 0, &req, &rem);
    if (nano && rc < 0)
        rc = errno;
    printf("slept %.1f rc=%d\n", now_ms() - t0, rc);
    fflush(stdout);
    while (read(0, &c, 1) > 0)
        ;
    return 0;
}
