/* A process that changed its credentials: rst_creds MODE, MODE "caps" (root, capabilities
 * reduced, bounding set trimmed, no_new_privs) or "nobody" (uid/gid 65534 keeping
 * CAP_NET_BIND_SERVICE, also in the ambient set). Prints "ready", then sleeps. */
#define _GNU_SOURCE
#include <grp.h>
#include <linux/capability.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <unistd.h>

static int set_caps(unsigned eff, unsigned prm, unsigned inh)
{
    struct __user_cap_header_struct h = { _LINUX_CAPABILITY_VERSION_3, 0 };
    struct __user_cap_data_struct d[2];
    memset(d, 0, sizeof d);
    d[0].effective = eff;
    d[0].permitted = prm;
    d[0].inheritable = inh;
    return syscall(SYS_capset, &h, d);
}

int main(int argc, char **argv)
{
    const unsigned bind = 1u << CAP_NET_BIND_SERVICE, kill = 1u << CAP_KILL;
    if (prctl(PR_CAPBSET_DROP, CAP_SYS_BOOT, 0, 0, 0) || prctl(PR_CAPBSET_DROP, CAP_NET_RAW, 0, 0, 0)) {
        perror("PR_CAPBSET_DROP");
        return 1;
    }
    if (argc > 1 && !strcmp(argv[1], "nobody")) {
        gid_t groups[] = { 65534, 100 };
        if (prctl(PR_SET_KEEPCAPS, 1, 0, 0, 0) || setgroups(2, groups) ||
            setresgid(65534, 65534, 65534) || setresuid(65534, 65534, 65534)) {
            perror("nobody");
            return 1;
        }
        if (set_caps(bind, bind | kill, bind) ||
            prctl(PR_CAP_AMBIENT, PR_CAP_AMBIENT_RAISE, CAP_NET_BIND_SERVICE, 0, 0) ||
            prctl(PR_SET_KEEPCAPS, 0, 0, 0, 0)) {
            perror("caps");
            return 1;
        }
    } else if (set_caps(bind | kill, bind | kill | (1u << CAP_CHOWN), 0) ||
               prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0)) {
        perror("caps");
        return 1;
    }
    write(1, "ready\n", 6);
    for (;;)
        pause();
}
