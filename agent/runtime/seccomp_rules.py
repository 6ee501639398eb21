"""The syscalls a job may make, as data: the allowlist behind the default seccomp profile.

The same policy as the moby/containerd default profile: what an ordinary program needs is
allowed for every job; what reaches past a container (mounts, namespaces, kernel modules,
clocks, tracing, BPF, ...) is allowed only to a job that holds the capability the kernel
checks for it anyway; everything else fails with EPERM. One deliberate difference:
`unshare` is filtered as `clone` is, so that a job cannot make a user namespace (in which
it would hold every capability over what it creates there) unless it has CAP_SYS_ADMIN.

Names unknown to the host's libseccomp (newer syscalls) are skipped by the runtimes; they
are listed so that a newer host allows them without a change here.
"""

from __future__ import annotations

from dataclasses import dataclass

ALLOW = "SCMP_ACT_ALLOW"
ERRNO = "SCMP_ACT_ERRNO"
MASKED_EQ = "SCMP_CMP_MASKED_EQ"
EPERM = 1
ENOSYS = 38

# The namespace flags of clone(2) and unshare(2), by namespace.
NAMESPACE_FLAGS = {
    "mount": 0x00020000,
    "cgroup": 0x02000000,
    "uts": 0x04000000,
    "ipc": 0x08000000,
    "user": 0x10000000,
    "pid": 0x20000000,
    "network": 0x40000000,
}
ANY_NAMESPACE = sum(NAMESPACE_FLAGS.values())
AF_VSOCK = 40
# personality(2) values a job may set: PER_LINUX, PER_LINUX32, UNAME26 with either, and
# 0xffffffff, which only queries the current persona.
PERSONALITIES = (0x0, 0x8, 0x20000, 0x20008, 0xFFFFFFFF)

# The seccomp architectures of each machine the agent runs on: the native one and the
# compatibility modes its kernel can run (a 32-bit binary must not slip past the filter).
ARCHITECTURES = {
    "x86_64": ("SCMP_ARCH_X86_64", "SCMP_ARCH_X86", "SCMP_ARCH_X32"),
    "aarch64": ("SCMP_ARCH_AARCH64", "SCMP_ARCH_ARM"),
}


def _names(text: str) -> tuple[str, ...]:
    return tuple(text.split())


@dataclass(frozen=True)
class Arg:
    """A condition on one argument of a syscall (runtime-spec LinuxSeccompArg); for a
    masked comparison `value` is the mask and `value_two` the datum, as in libseccomp."""

    index: int
    value: int
    op: str
    value_two: int = 0


@dataclass(frozen=True)
class Rule:
    """Syscalls with one action, in the profile when its conditions hold for the job.

    `machines` limits the rule to those machines (all when empty); `needs` to jobs that
    hold every one of those capabilities; `unless` drops it for jobs holding any of those;
    `min_kernel` drops it on older kernels. Rules with the same names are alternatives.
    A rule has at most one of `args`: runc requires all of a rule's conditions, youki adds
    each as a rule of its own, so that several would mean one thing to one and another to
    the other.
    """

    names: tuple[str, ...]
    action: str = ALLOW
    errno: int | None = None
    args: tuple[Arg, ...] = ()
    machines: frozenset[str] = frozenset()
    needs: frozenset[str] = frozenset()
    unless: frozenset[str] = frozenset()
    min_kernel: tuple[int, int] | None = None


FILES = _names("""
    access chdir chmod chown chown32 close close_range copy_file_range creat dup dup2 dup3
    faccessat faccessat2 fadvise64 fadvise64_64 fallocate fanotify_mark fchdir fchmod fchmodat
    fchmodat2 fchown fchown32 fchownat fcntl fcntl64 fdatasync flock fstat fstat64 fstatat64
    fstatfs fstatfs64 fsync ftruncate ftruncate64 futimesat getcwd getdents getdents64 lchown
    lchown32 link linkat _llseek lseek lstat lstat64 mkdir mkdirat mknod mknodat
    name_to_handle_at newfstatat open openat openat2 pread64 preadv preadv2 pwrite64 pwritev
    pwritev2 read readahead readlink readlinkat readv rename renameat renameat2 rmdir sendfile
    sendfile64 splice stat stat64 statfs statfs64 statx symlink symlinkat sync sync_file_range
    syncfs tee truncate truncate64 umask unlink unlinkat utime utimensat utimensat_time64
    utimes vmsplice write writev cachestat listmount statmount
""")
XATTRS = _names("""
    fgetxattr flistxattr fremovexattr fsetxattr getxattr getxattrat lgetxattr listxattr
    listxattrat llistxattr lremovexattr lsetxattr removexattr removexattrat setxattr setxattrat
""")
MEMORY = _names("""
    brk madvise map_shadow_stack membarrier memfd_create memfd_secret mincore mlock mlock2
    mlockall mmap mmap2 mprotect mremap mseal msync munlock munlockall munmap pkey_alloc
    pkey_free pkey_mprotect process_mrelease remap_file_pages
""")
PROCESSES = _names("""
    capget capset execve execveat exit exit_group fork get_robust_list get_thread_area getpgid
    getpgrp getpid getppid getpriority getrlimit getrusage getsid gettid ioprio_get ioprio_set
    kill landlock_add_rule landlock_create_ruleset landlock_restrict_self pidfd_open
    pidfd_send_signal prctl prlimit64 restart_syscall rseq seccomp set_robust_list
    set_thread_area set_tid_address setpgid setpriority setrlimit setsid tgkill times tkill
    ugetrlimit uretprobe vfork wait4 waitid waitpid
""")
IDENTITY = _names("""
    getegid getegid32 geteuid geteuid32 getgid getgid32 getgroups getgroups32 getresgid
    getresgid32 getresuid getresuid32 getuid getuid32 setfsgid setfsgid32 setfsuid setfsuid32
    setgid setgid32 setgroups setgroups32 setregid setregid32 setresgid setresgid32 setresuid
    setresuid32 setreuid setreuid32 setuid setuid32
""")
SIGNALS = _names("""
    alarm pause rt_sigaction rt_sigpending rt_sigprocmask rt_sigqueueinfo rt_sigreturn
    rt_sigsuspend rt_sigtimedwait rt_sigtimedwait_time64 rt_tgsigqueueinfo sigaltstack signalfd
    signalfd4 sigprocmask sigreturn
""")
SCHEDULING = _names("""
    getcpu sched_get_priority_max sched_get_priority_min sched_getaffinity sched_getattr
    sched_getparam sched_getscheduler sched_rr_get_interval sched_rr_get_interval_time64
    sched_setaffinity sched_setattr sched_setparam sched_setscheduler sched_yield
""")
# adjtimex and clock_adjtime only read the clock without CAP_SYS_TIME.
TIME = _names("""
    adjtimex clock_adjtime clock_adjtime64 clock_getres clock_getres_time64 clock_gettime
    clock_gettime64 clock_nanosleep clock_nanosleep_time64 getitimer gettimeofday nanosleep
    setitimer time timer_create timer_delete timer_getoverrun timer_gettime timer_gettime64
    timer_settime timer_settime64 timerfd_create timerfd_gettime timerfd_gettime64
    timerfd_settime timerfd_settime64
""")
WAITING = _names("""
    _newselect epoll_create epoll_create1 epoll_ctl epoll_ctl_old epoll_pwait epoll_pwait2
    epoll_wait epoll_wait_old eventfd eventfd2 futex futex_requeue futex_time64 futex_wait
    futex_waitv futex_wake inotify_add_watch inotify_init inotify_init1 inotify_rm_watch pipe
    pipe2 poll ppoll ppoll_time64 pselect6 pselect6_time64 select
""")
# Linux AIO. io_uring is left out: what it submits runs in the kernel, unseen by a filter.
ASYNC_IO = _names("""
    io_cancel io_destroy io_getevents io_pgetevents io_pgetevents_time64 io_setup io_submit
""")
SOCKETS = _names("""
    accept accept4 bind connect getpeername getsockname getsockopt listen recv recvfrom
    recvmmsg recvmmsg_time64 recvmsg send sendmmsg sendmsg sendto setsockopt shutdown
    socketcall socketpair
""")
IPC = _names("""
    ipc mq_getsetattr mq_notify mq_open mq_timedreceive mq_timedreceive_time64 mq_timedsend
    mq_timedsend_time64 mq_unlink msgctl msgget msgrcv msgsnd semctl semget semop semtimedop
    semtimedop_time64 shmat shmctl shmdt shmget
""")
SYSTEM = ("getrandom", "ioctl", "sysinfo", "uname")
AARCH64_ONLY = _names(
    "arm_fadvise64_64 arm_sync_file_range breakpoint cacheflush set_tls sync_file_range2"
)

EVERY_JOB = FILES + XATTRS + MEMORY + PROCESSES + IDENTITY + SIGNALS + SCHEDULING + TIME
EVERY_JOB += WAITING + ASYNC_IO + SOCKETS + IPC + SYSTEM

# Mounts, namespaces, BPF, perf, quotas, host and domain names, the kernel log.
SYS_ADMIN = _names("""
    bpf clone clone3 fanotify_init fsconfig fsmount fsopen fspick lookup_dcookie
    lsm_get_self_attr lsm_list_modules lsm_set_self_attr mount mount_setattr move_mount
    open_tree perf_event_open quotactl quotactl_fd setdomainname sethostname setns syslog
    umount umount2 unshare
""")
SYS_PTRACE = _names("kcmp pidfd_getfd process_madvise process_vm_readv process_vm_writev ptrace")

# What each capability opens, beyond what every job may do.
BY_CAPABILITY = {
    "CAP_SYS_ADMIN": SYS_ADMIN,
    "CAP_DAC_READ_SEARCH": _names("open_by_handle_at"),
    "CAP_SYS_BOOT": _names("reboot"),
    "CAP_SYS_CHROOT": _names("chroot"),
    "CAP_SYS_MODULE": _names("delete_module finit_module init_module"),
    "CAP_SYS_PACCT": _names("acct"),
    "CAP_SYS_PTRACE": SYS_PTRACE,
    "CAP_SYS_RAWIO": _names("ioperm iopl"),
    "CAP_SYS_TIME": _names("clock_settime clock_settime64 settimeofday stime"),
    "CAP_SYS_TTY_CONFIG": _names("vhangup"),
    "CAP_SYS_NICE": _names("get_mempolicy mbind set_mempolicy set_mempolicy_home_node"),
    "CAP_SYSLOG": _names("syslog"),
    "CAP_BPF": _names("bpf"),
    "CAP_PERFMON": _names("perf_event_open"),
}

_SYS_ADMIN = frozenset({"CAP_SYS_ADMIN"})
_NO_NEW_NAMESPACE = (Arg(0, ANY_NAMESPACE, MASKED_EQ, 0),)

RULES: tuple[Rule, ...] = (
    Rule(EVERY_JOB),
    # Since Linux 4.8 a tracer cannot turn a traced syscall into one the filter refused.
    Rule(("process_vm_readv", "process_vm_writev", "ptrace"), min_kernel=(4, 8)),
    Rule(("socket",), args=(Arg(0, AF_VSOCK, "SCMP_CMP_NE"),)),
    *(Rule(("personality",), args=(Arg(0, value, "SCMP_CMP_EQ"),)) for value in PERSONALITIES),
    Rule(("arch_prctl", "modify_ldt"), machines=frozenset({"x86_64"})),
    Rule(AARCH64_ONLY, machines=frozenset({"aarch64"})),
    # A thread or a process, never a new namespace: flags are clone's first argument on
    # both machines (s390 alone differs).
    Rule(("clone", "unshare"), args=_NO_NEW_NAMESPACE, unless=_SYS_ADMIN),
    # clone3 passes its flags in memory a filter cannot read: ENOSYS makes libc fall
    # back to clone, which the rule above filters.
    Rule(("clone3",), action=ERRNO, errno=ENOSYS, unless=_SYS_ADMIN),
    *(Rule(names, needs=frozenset({capability})) for capability, names in BY_CAPABILITY.items()),
)
