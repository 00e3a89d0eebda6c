/* A parent and two children sharing memory of every kind coldsnap restores shared:
 *   anon   MAP_SHARED|MAP_ANONYMOUS, inherited across fork
 *   memfd  a memfd mapped shared (the parent and b keep its fd 50, a keeps the mapping only),
 *          plus a sealed memfd "cs-sealed" (fd 51, mapped read-only, F_SEAL_WRITE|GROW|SHRINK|SEAL)
 *   posix  a /dev/shm file (shm_open NAME, mapped, fd closed)
 *   sysv   a SysV segment of key KEY (shmat, inherited) and a set of 2 semaphores of key KEY:
 *          sem 0 a lock taken around each tick, sem 1 stays 7
 * Usage: shm_family LOGDIR KINDS NAME KEY (KINDS: comma list of the above).
 * Each process (p, a, b) writes LOGDIR/ROLE.log: "ready PID" once, then every 20 ms
 * "tick N KIND=c0,c1,c2 ..." after adding one to its own slot in each region and reading
 * the three slots; "FAIL ..." when its own slot is not N or a region's pattern or a seal or a
 * semaphore value is off. Children die with their parent (PDEATHSIG). */
#define _GNU_SOURCE
#include <fcntl.h>
#include <signal.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ipc.h>
#include <sys/mman.h>
#include <sys/prctl.h>
#include <sys/sem.h>
#include <sys/shm.h>
#include <unistd.h>

#define TICK_NS (20 * 1000000L)
#include "rst_log.h"

#define SIZE 8192
#define PATTERN_AT 2048
#define MEMFD_FD 50
#define SEALED_FD 51
#define SEALS (F_SEAL_WRITE | F_SEAL_GROW | F_SEAL_SHRINK | F_SEAL_SEAL)
static const char sealed_text[] = "sealed contents";

struct region {
    const char *kind;
    volatile uint64_t *slots;
};

static struct region regions[4];
static int nregions, semid = -1;
static const char *logdir;
static const char *sealed_map;

static int has(const char *kinds, const char *kind)
{
    size_t n = strlen(kind);
    for (const char *p = kinds; (p = strstr(p, kind)); p += n)
        if ((p == kinds || p[-1] == ',') && (p[n] == ',' || p[n] == 0))
            return 1;
    return 0;
}

static void add(const char *kind, void *mem)
{
    if (mem == MAP_FAILED || mem == (void *)-1) {
        perror(kind);
        exit(1);
    }
    snprintf((char *)mem + PATTERN_AT, 64, "region %s", kind);
    regions[nregions++] = (struct region){ kind, mem };
}

static void own_log(const char *role)
{
    char path[4096];
    snprintf(path, sizeof path, "%s/%s.log", logdir, role);
    int fd = open(path, O_WRONLY | O_CREAT | O_APPEND, 0644);
    dup2(fd, 1);
    dup2(fd, 2);
    close(fd);
}

static void lock(int op)
{
    struct sembuf b = { 0, op, 0 };
    if (semid >= 0)
        while (semop(semid, &b, 1) < 0 && errno == EINTR)
            ;
}

static void run(const char *role, int me)
{
    own_log(role);
    say("ready %d\n", getpid());
    for (uint64_t n = 1;; n++) {
        char line[400];
        int at = snprintf(line, sizeof line, "tick %lu", (unsigned long)n);
        lock(-1);
        for (int i = 0; i < nregions; i++) {
            struct region *r = &regions[i];
            char want[64];
            snprintf(want, sizeof want, "region %s", r->kind);
            if (strcmp((const char *)r->slots + PATTERN_AT, want))
                FAIL("%s pattern\n", r->kind);
            r->slots[me] += 1;
            if (r->slots[me] != n)
                FAIL("%s own slot %lu at tick %lu\n", r->kind, (unsigned long)r->slots[me], (unsigned long)n);
            at += snprintf(line + at, sizeof line - at, " %s=%lu,%lu,%lu", r->kind, (unsigned long)r->slots[0],
                           (unsigned long)r->slots[1], (unsigned long)r->slots[2]);
        }
        lock(1);
        if (semid >= 0 && semctl(semid, 1, GETVAL) != 7)
            FAIL("sem 1 is %d\n", semctl(semid, 1, GETVAL));
        if (sealed_map) {
            if (memcmp(sealed_map, sealed_text, sizeof sealed_text))
                FAIL("sealed memfd mapping\n");
            if (me != 1 && fcntl(SEALED_FD, F_GET_SEALS) != SEALS)
                FAIL("seals %d\n", fcntl(SEALED_FD, F_GET_SEALS));
        }
        say("%s\n", line);
        tick_sleep();
    }
}

static void child(const char *role, int me)
{
    prctl(PR_SET_PDEATHSIG, SIGKILL);
    if (me == 1) {
        close(MEMFD_FD);       /* a maps the memfds without holding them */
        close(SEALED_FD);
    }
    run(role, me);
}

int main(int argc, char **argv)
{
    if (argc < 5)
        return 2;
    logdir = argv[1];
    const char *kinds = argv[2], *name = argv[3];
    key_t key = (key_t)strtol(argv[4], NULL, 0);
    int nul = open("/dev/null", O_RDONLY);
    dup2(nul, 0);
    if (has(kinds, "anon"))
        add("anon", mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED | MAP_ANONYMOUS, -1, 0));
    if (has(kinds, "memfd")) {
        int fd = memfd_create("cs-counters", MFD_CLOEXEC);
        if (fd < 0 || ftruncate(fd, SIZE) || dup2(fd, MEMFD_FD) < 0)
            return 1;
        close(fd);
        add("memfd", mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, MEMFD_FD, 0));
        int s = memfd_create("cs-sealed", MFD_ALLOW_SEALING);
        if (s < 0 || write(s, sealed_text, sizeof sealed_text) != sizeof sealed_text || dup2(s, SEALED_FD) < 0)
            return 1;
        close(s);
        if (fcntl(SEALED_FD, F_ADD_SEALS, SEALS))
            return 1;
        sealed_map = mmap(NULL, 4096, PROT_READ, MAP_SHARED, SEALED_FD, 0);
        if (sealed_map == MAP_FAILED)
            return 1;
    }
    if (has(kinds, "posix")) {
        int fd = shm_open(name, O_CREAT | O_RDWR, 0600);
        if (fd < 0 || ftruncate(fd, SIZE))
            return 1;
        add("posix", mmap(NULL, SIZE, PROT_READ | PROT_WRITE, MAP_SHARED, fd, 0));
        close(fd);
    }
    if (has(kinds, "sysv")) {
        int id = shmget(key, SIZE, IPC_CREAT | IPC_EXCL | 0640);
        if (id < 0)
            return 1;
        add("sysv", shmat(id, NULL, 0));
        semid = semget(key, 2, IPC_CREAT | IPC_EXCL | 0600);
        unsigned short vals[2] = { 1, 7 };
        if (semid < 0 || semctl(semid, 0, SETALL, vals))
            return 1;
    }
    if (fork() == 0)
        child("a", 1);
    if (fork() == 0)
        child("b", 2);
    run("p", 0);
    return 0;
}
