/* Blocks in read(2) on stdin; answers "got LINE" (or "EINTR" if a read was interrupted). */
#include <errno.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
    char buf[256];
    printf("ready %d\n", getpid());
    fflush(stdout);
    for (;;) {
        ssize_t n = read(0, buf, sizeof buf - 1);
        if (n < 0 && errno == EINTR) {
            printf("EINTR\n");
            fflush(stdout);
            continue;
        }
        if (n <= 0)
            return 0;
        buf[n] = 0;
        printf("got %s", buf);
        fflush(stdout);
    }
}
