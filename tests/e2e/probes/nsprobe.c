/* Calls what a job's seccomp profile filters, directly (no libc wrapper to fall back),
 * and prints one line per call: NAME=0 when it worked, NAME=ERRNO when it failed. */
#define _GNU_SOURCE
#include <errno.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <string.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <unistd.h>

#define NEWNET 0x40000000UL
#define NEWUSER 0x10000000UL
#ifndef SYS_clone3
#define SYS_clone3 435
#endif
#ifndef SYS_io_uring_setup
#define SYS_io_uring_setup 425
#endif

static void report(const char *name, long result) {
    printf("%s=%d\n", name, result < 0 ? errno : 0);
    fflush(stdout);
}

/* clone(flags) as fork does; the child exits at once. */
static long clone_with(unsigned long flags) {
    long pid = syscall(SYS_clone, flags | SIGCHLD, 0, 0, 0, 0);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, 0, 0);
    return pid;
}

static long clone3_with(unsigned long flags) {
    uint64_t args[11];
    memset(args, 0, sizeof args);
    args[0] = flags;   /* flags */
    args[4] = SIGCHLD; /* exit_signal */
    long pid = syscall(SYS_clone3, args, sizeof args);
    if (pid == 0)
        _exit(0);
    if (pid > 0)
        waitpid((pid_t)pid, 0, 0);
    return pid;
}

int main(void) {
    report("clone", clone_with(0));
    report("clone_newuser", clone_with(NEWUSER));
    report("clone_newnet", clone_with(NEWNET));
    report("clone3_newuser", clone3_with(NEWUSER));
    report("personality_query", syscall(SYS_personality, 0xffffffffUL));
    report("personality_read_implies_exec", syscall(SYS_personality, 0x0400000UL));
    uint8_t params[120];
    memset(params, 0, sizeof params);
    report("io_uring_setup", syscall(SYS_io_uring_setup, 1, params));
    /* Last: on success the probe is in a user namespace of its own. */
    report("unshare_newuser", syscall(SYS_unshare, NEWUSER));
    return 0;
}
