/* A process that holds still: every thread parks in pause() with known vector registers,
 * so a dump of the restored process must read exactly what the first dump read.
 * Process-wide: a SIGUSR1 handler (SA_ONSTACK), SIGUSR2 blocked, an itimer-free, file-free
 * layout. Per thread: an alternate signal stack, a distinct blocked mask, ymm0-7 patterns
 * (xmm0-7 on a CPU without AVX, or with the argument "sse"). */
#define _GNU_SOURCE
#include <pthread.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/syscall.h>
#include <unistd.h>

#define THREADS 4

static void on_usr1(int sig) { (void)sig; }

static int use_avx;

static void park(int seed) {
    static __thread uint32_t pattern[64] __attribute__((aligned(32)));
    for (int i = 0; i < 64; i++)
        pattern[i] = 0x01010101u * (uint32_t)(seed + 1) + (uint32_t)i;
    stack_t ss = {.ss_sp = malloc(65536), .ss_size = 65536, .ss_flags = 0};
    sigaltstack(&ss, NULL);
    sigset_t set;
    sigemptyset(&set);
    sigaddset(&set, SIGUSR2);
    sigaddset(&set, SIGRTMIN + seed);
    pthread_sigmask(SIG_BLOCK, &set, NULL);
    /* ymm0-7 (or xmm0-7) from the pattern, then pause() forever, all in one asm block so
     * nothing compiled in between can touch the vector registers */
    for (;;) {
        if (!use_avx) {
            __asm__ volatile(
                "movdqu 0(%0), %%xmm0\n movdqu 32(%0), %%xmm1\n movdqu 64(%0), %%xmm2\n"
                "movdqu 96(%0), %%xmm3\n movdqu 128(%0), %%xmm4\n movdqu 160(%0), %%xmm5\n"
                "movdqu 192(%0), %%xmm6\n movdqu 224(%0), %%xmm7\n"
                "mov $34, %%eax\n syscall\n"
                : : "r"(pattern) : "rax", "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3",
                  "xmm4", "xmm5", "xmm6", "xmm7");
            continue;
        }
        __asm__ volatile(
            "vmovdqu 0(%0), %%ymm0\n vmovdqu 32(%0), %%ymm1\n vmovdqu 64(%0), %%ymm2\n"
            "vmovdqu 96(%0), %%ymm3\n vmovdqu 128(%0), %%ymm4\n vmovdqu 160(%0), %%ymm5\n"
            "vmovdqu 192(%0), %%ymm6\n vmovdqu 224(%0), %%ymm7\n"
            "mov $34, %%eax\n syscall\n"
            : : "r"(pattern) : "rax", "rcx", "r11", "memory", "xmm0", "xmm1", "xmm2", "xmm3",
              "xmm4", "xmm5", "xmm6", "xmm7");
    }
}

static void *thread_main(void *arg) { park((int)(intptr_t)arg); return NULL; }

int main(int argc, char **argv) {
    use_avx = __builtin_cpu_supports("avx") && !(argc > 1 && !strcmp(argv[1], "sse"));
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_usr1;
    sa.sa_flags = SA_ONSTACK | SA_RESTART;
    sigaddset(&sa.sa_mask, SIGTERM);
    sigaction(SIGUSR1, &sa, NULL);
    char *data = mmap(NULL, 1 << 20, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
    for (int i = 0; i < (1 << 20); i += 4096)
        data[i] = (char)(i >> 12);
    mprotect(data, 4096, PROT_READ);
    for (intptr_t i = 1; i < THREADS; i++) {
        pthread_t t;
        pthread_create(&t, NULL, thread_main, (void *)i);
    }
    write(1, "ready\n", 6);
    park(0);
}
