/* A tree of N processes for bench/tree.py: the root and N-1 children (flat), each with
 * SIZE bytes of private anonymous memory filled with its own pattern (every byte non-zero),
 * all holding both ends of one pipe the root made (with a byte left in it) and each child
 * the write end of a pipe to the root. The root prints "ready" once every child has said
 * so on its pipe; then every process sleeps in pause(). The root kills the children when
 * it gets SIGTERM.
 *
 *     tree_target N SIZE
 */
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <unistd.h>

static pid_t kids[1024];
static int nkids;

static void fill(size_t size, int tag) {
    char *m = mmap(NULL, size, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    if (m == MAP_FAILED) { perror("mmap"); exit(1); }
    memset(m, 1 + tag % 255, size);
}

static void on_term(int sig) {
    (void)sig;
    for (int i = 0; i < nkids; i++) kill(kids[i], SIGKILL);
    _exit(0);
}

int main(int argc, char **argv) {
    if (argc != 3) { fprintf(stderr, "usage: tree_target N SIZE\n"); return 2; }
    int n = atoi(argv[1]);
    size_t size = strtoull(argv[2], NULL, 0);
    if (n < 1 || n > 1024) return 2;
    int shared[2], up[2];
    if (pipe(shared) || pipe(up)) { perror("pipe"); return 1; }
    if (write(shared[1], "x", 1) != 1) return 1;
    signal(SIGTERM, on_term);
    for (int i = 1; i < n; i++) {
        pid_t p = fork();
        if (p < 0) { perror("fork"); on_term(0); }
        if (p == 0) {
            signal(SIGTERM, SIG_DFL);
            fill(size, i);
            if (write(up[1], "k", 1) != 1) _exit(1);
            for (;;) pause();
        }
        kids[nkids++] = p;
    }
    fill(size, 0);
    char c;
    for (int i = 1; i < n; i++)
        if (read(up[0], &c, 1) != 1) { perror("read"); on_term(0); }
    printf("ready\n");
    fflush(stdout);
    for (;;) pause();
}
