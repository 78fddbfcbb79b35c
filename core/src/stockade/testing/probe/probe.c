/*
 * stockade in-instance probe.
 *
 * Attempts, for real, each action the classic jail systems forbid inside an
 * instance and prints one JSON object per line:
 *   {"check": NAME, "verdict": "forbidden"|"allowed"|"inconclusive",
 *    "errno": "EPERM"|null, "detail": "..."}
 * plus {"fact": NAME, "value": "..."} lines for the suite's isolation checks.
 *
 * The verdict comes from the kernel's answer, never from assumptions: a
 * permission error (EPERM/EACCES/EROFS) is "forbidden"; success, or an error
 * the kernel only returns after the permission check passed (EBADF, EINVAL,
 * ENOENT, ...), is "allowed"; anything else is "inconclusive".
 *
 * It must never harm the host when a check turns out allowed: everything it
 * does is undone (unmount, unlink, flags cleared, the value it read written
 * back), risky steps run in short-lived children (private mount namespace,
 * ptrace detached by exit), and it only touches targets of its own or no-ops.
 *
 * Runs in a bare busybox image: static, no libc at run time, no /proc needed
 * for most checks. Built by build.py with `gcc -static`.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <ctype.h>
#include <grp.h>
#include <ifaddrs.h>
#include <stddef.h>
#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <linux/bpf.h>
#include <linux/keyctl.h>
#include <linux/perf_event.h>
#include <net/if.h>
#include <linux/netlink.h>
#include <linux/rtnetlink.h>
#include <netinet/in.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/prctl.h>
#include <sys/ptrace.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/syscall.h>
#include <sys/sysmacros.h>
#include <sys/types.h>
#include <sys/uio.h>
#include <sys/un.h>
#include <sys/utsname.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>
#if defined(__x86_64__) || defined(__i386__)
#include <sys/io.h>
#define HAVE_IOPL 1
#endif

/* <linux/fs.h> clashes with <sys/mount.h> in glibc 2.36: define what we use. */
#define PROBE_FS_IOC_GETFLAGS _IOR('f', 1, long)
#define PROBE_FS_IOC_SETFLAGS _IOW('f', 2, long)
#define PROBE_FS_IMMUTABLE_FL 0x00000010
#define PROBE_FS_APPEND_FL 0x00000020
#ifndef SYS_fsopen
#define SYS_fsopen 430
#endif
#ifndef FSOPEN_CLOEXEC
#define FSOPEN_CLOEXEC 0x00000001
#endif

#define PROBE_VERSION "1"
#define DETAIL_MAX 1024
#define MAX_IFACES 16
#define MAX_FLAG_DIRS 8
#define MAX_CONNECTS 32

enum verdict { FORBIDDEN, ALLOWED, INCONCLUSIVE };
static const char *verdict_names[] = {"forbidden", "allowed", "inconclusive"};

/* Every check this program can emit, in order; `--list` prints them. */
static const char *all_checks[] = {
    "kmod.finit_module",
    "kmod.delete_module",
    "kernel_modify.dev_mem",
    "kernel_modify.dev_kmem",
    "kernel_modify.dev_port",
    "kernel_modify.iopl",
    "kernel_modify.ioperm",
    "kernel_modify.bpf_prog_load",
    "kernel_modify.perf_event_open",
    "kernel_modify.kexec_file_load",
    "mount.tmpfs",
    "mount.umount",
    "mount.fsopen",
    "mknod.char_1_3",
    "mknod.block_device_open",
    "raw_sockets.inet_raw_icmp",
    "raw_sockets.inet6_raw_icmpv6",
    "raw_sockets.packet",
    "net_admin.route_add",
    "net_admin.link_flags",
    "sysctl.proc_sys",
    "sysctl.sys",
    "chflags.immutable",
    "chflags.append",
    "foreign_network.host_loopback_tcp",
    "foreign_network.host_abstract_unix",
    "foreign_network.host_interfaces",
    "host_processes.kill",
    "host_processes.proc_entry",
    "ptrace.host_pid",
    "ptrace.own_child",
    "ptrace.other_uid_child",
    "ptrace.process_vm_readv_other_uid",
    "keyring.syscall",
    "keyring.host_session",
    "sys_time.settimeofday",
    "new_userns.unshare",
    "escape.release_agent",
    "escape.proc_exe_write",
    "escape.leaked_fds",
    "escape.open_by_handle_at",
    NULL,
};

static struct {
    long host_pid;
    long host_port;
    const char *host_abstract;
    long host_keyring;
    int have_host_keyring;
    const char *host_token;
    const char *host_ifaces[MAX_IFACES];
    int n_host_ifaces;
    const char *scratch_base;
    const char *flag_dirs[MAX_FLAG_DIRS];
    int n_flag_dirs;
    const char *only[32];
    int n_only;
    long exe_watch_ms;
    const char *connects[MAX_CONNECTS];
    int n_connects;
    long connect_timeout_ms;
    long serve_port;
    const char *serve_token;
} opt = {.host_pid = -1, .host_port = -1, .connect_timeout_ms = 1500, .serve_port = -1};

static char scratch[4096]; /* private temp dir, removed at exit */
static int checks_run;
static volatile int probe_marker = 0x5ec0de; /* read back by process_vm_readv */

/* ---------------------------------------------------------------- output */

static const char *errname(int e) {
    static char buf[16];
    switch (e) {
#define E(x) \
    case x:  \
        return #x;
        E(EPERM) E(ENOENT) E(ESRCH) E(EINTR) E(EIO) E(ENXIO) E(E2BIG) E(ENOEXEC)
        E(EBADF) E(ECHILD) E(EAGAIN) E(ENOMEM) E(EACCES) E(EFAULT) E(EBUSY)
        E(EEXIST) E(EXDEV) E(ENODEV) E(ENOTDIR) E(EISDIR) E(EINVAL) E(ENFILE)
        E(EMFILE) E(ENOTTY) E(ETXTBSY) E(EFBIG) E(ENOSPC) E(ESPIPE) E(EROFS)
        E(EMLINK) E(EPIPE) E(ERANGE) E(ENAMETOOLONG) E(ENOSYS) E(ENOTEMPTY)
        E(ELOOP) E(ENODATA) E(EOVERFLOW) E(EUSERS) E(ENOTSOCK) E(EPROTOTYPE)
        E(EPROTONOSUPPORT) E(ESOCKTNOSUPPORT) E(EOPNOTSUPP) E(EAFNOSUPPORT)
        E(EADDRINUSE) E(EADDRNOTAVAIL) E(ENETDOWN) E(ENETUNREACH) E(ECONNRESET)
        E(ENOBUFS) E(EISCONN) E(ENOTCONN) E(ETIMEDOUT) E(ECONNREFUSED)
        E(EHOSTUNREACH) E(EALREADY) E(EINPROGRESS) E(ESTALE) E(EDQUOT)
        E(ENOKEY) E(EKEYEXPIRED) E(EKEYREVOKED) E(EKEYREJECTED) E(ENOMEDIUM)
#undef E
    }
    snprintf(buf, sizeof buf, "E%d", e);
    return buf;
}

static void json_str(FILE *f, const char *s) {
    fputc('"', f);
    for (const unsigned char *p = (const unsigned char *)s; *p; p++) {
        if (*p == '"' || *p == '\\')
            fprintf(f, "\\%c", *p);
        else if (*p == '\n')
            fputs("\\n", f);
        else if (*p < 0x20 || *p >= 0x7f)
            fprintf(f, "\\u%04x", *p); /* keep the output plain ASCII */
        else
            fputc(*p, f);
    }
    fputc('"', f);
}

static int selected(const char *check) {
    if (opt.n_only == 0) return 1;
    for (int i = 0; i < opt.n_only; i++) {
        size_t n = strlen(opt.only[i]);
        if (n == 0) continue;
        if (strncmp(check, opt.only[i], n) == 0 && (check[n] == 0 || check[n] == '.' ||
                                                   opt.only[i][n - 1] == '.'))
            return 1;
    }
    return 0;
}

/* err: 0 for none, else an errno value printed by name. */
static void emit(const char *check, enum verdict v, int err, const char *fmt, ...) {
    char detail[DETAIL_MAX];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(detail, sizeof detail, fmt, ap);
    va_end(ap);
    printf("{\"check\": ");
    json_str(stdout, check);
    printf(", \"verdict\": \"%s\", \"errno\": ", verdict_names[v]);
    if (err)
        json_str(stdout, errname(err));
    else
        fputs("null", stdout);
    printf(", \"detail\": ");
    json_str(stdout, detail);
    printf("}\n");
    fflush(stdout);
    checks_run++;
}

static void fact(const char *name, const char *fmt, ...) {
    char value[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(value, sizeof value, fmt, ap);
    va_end(ap);
    printf("{\"fact\": ");
    json_str(stdout, name);
    printf(", \"value\": ");
    json_str(stdout, value);
    printf("}\n");
    fflush(stdout);
}

static int denied(int e) { return e == EPERM || e == EACCES || e == EROFS; }

/* Most checks: a permission error is forbidden, success or one of `passed`
 * (errors raised after the permission check) is allowed, the rest inconclusive. */
static enum verdict classify(int err, const int *passed) {
    if (err == 0) return ALLOWED;
    if (denied(err)) return FORBIDDEN;
    for (; passed && *passed; passed++)
        if (*passed == err) return ALLOWED;
    return INCONCLUSIVE;
}

/* ---------------------------------------------------------------- helpers */

static ssize_t read_file(const char *path, char *buf, size_t size, int *err) {
    int fd = open(path, O_RDONLY | O_CLOEXEC);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    ssize_t n = read(fd, buf, size - 1);
    *err = n < 0 ? errno : 0;
    close(fd);
    if (n < 0) return -1;
    buf[n] = 0;
    return n;
}

/* Is capability bit `cap` in this process's effective set (CapEff of /proc/self/status)? */
static int has_effective_cap(int cap) {
    char buf[4096];
    int err;
    if (read_file("/proc/self/status", buf, sizeof buf, &err) <= 0) return 0;
    const char *p = strstr(buf, "CapEff:");
    if (!p) return 0;
    unsigned long long eff = strtoull(p + 7, NULL, 16);
    return (int)((eff >> cap) & 1ULL);
}

static void chomp(char *s) {
    size_t n = strlen(s);
    while (n && (s[n - 1] == '\n' || s[n - 1] == ' ')) s[--n] = 0;
}

/* Result of a check run in a short-lived child process. */
struct child_result {
    int err;   /* errno of the decisive step, 0 on success */
    int extra; /* check-specific */
    char detail[512];
};

/* Runs fn in a forked child (so whatever it changes dies with it) and hands
 * back its result; -1 if it did not answer within timeout_ms. */
static int in_child(void (*fn)(void *, struct child_result *), void *arg, int timeout_ms,
                    struct child_result *out) {
    int p[2];
    memset(out, 0, sizeof *out);
    if (pipe2(p, O_CLOEXEC) < 0) {
        out->err = errno;
        snprintf(out->detail, sizeof out->detail, "pipe: %s", strerror(errno));
        return -1;
    }
    pid_t pid = fork();
    if (pid < 0) {
        out->err = errno;
        snprintf(out->detail, sizeof out->detail, "fork: %s", strerror(errno));
        close(p[0]);
        close(p[1]);
        return -1;
    }
    if (pid == 0) {
        struct child_result r;
        memset(&r, 0, sizeof r);
        close(p[0]);
        prctl(PR_SET_PDEATHSIG, SIGKILL); /* never outlive a killed probe */
        fn(arg, &r);
        if (write(p[1], &r, sizeof r) != sizeof r) _exit(2);
        _exit(0);
    }
    close(p[1]);
    struct pollfd pfd = {.fd = p[0], .events = POLLIN};
    int rc = -1;
    if (poll(&pfd, 1, timeout_ms) == 1 && read(p[0], out, sizeof *out) == sizeof *out) rc = 0;
    close(p[0]);
    if (rc < 0) {
        kill(pid, SIGKILL);
        snprintf(out->detail, sizeof out->detail, "child gave no answer within %d ms", timeout_ms);
    }
    waitpid(pid, NULL, __WALL);
    return rc;
}

/* Does /proc/<pid>/cmdline carry the host token? 1 yes, 0 no, -1 cannot tell. */
static int pid_has_token(long pid) {
    if (!opt.host_token) return -1;
    char path[64], buf[4096];
    int err;
    snprintf(path, sizeof path, "/proc/%ld/cmdline", pid);
    ssize_t n = read_file(path, buf, sizeof buf, &err);
    if (n < 0) return -1;
    for (ssize_t i = 0; i < n; i++)
        if (buf[i] == 0) buf[i] = ' ';
    return strstr(buf, opt.host_token) != NULL;
}

static int path_join(char *out, size_t size, const char *dir, const char *name) {
    return snprintf(out, size, "%s/%s", dir, name) < (int)size ? 0 : -1;
}

/* ---------------------------------------------------------------- kmod */

static void check_kmod(void) {
    int has_modules = access("/proc/modules", F_OK) == 0;
    const char *nomod = has_modules ? "" : " (no /proc/modules: kernel may lack module support)";
    if (selected("kmod.finit_module")) {
        long r = syscall(SYS_finit_module, -1, "", 0);
        int e = r < 0 ? errno : 0;
        if (e == EBADF)
            emit("kmod.finit_module", ALLOWED, e, "finit_module(-1) passed the permission check");
        else if (denied(e))
            emit("kmod.finit_module", FORBIDDEN, e, "finit_module(-1) denied");
        else
            emit("kmod.finit_module", INCONCLUSIVE, e, "finit_module(-1) returned %ld%s", r, nomod);
    }
    if (selected("kmod.delete_module")) {
        long r = syscall(SYS_delete_module, "stockade_probe_no_such_module", O_NONBLOCK);
        int e = r < 0 ? errno : 0;
        if (e == ENOENT)
            emit("kmod.delete_module", ALLOWED, e, "delete_module(nonexistent) passed the "
                                                   "permission check");
        else if (denied(e))
            emit("kmod.delete_module", FORBIDDEN, e, "delete_module denied");
        else
            emit("kmod.delete_module", INCONCLUSIVE, e, "delete_module returned %ld%s", r, nomod);
    }
}

/* ---------------------------------------------------------------- kernel_modify */

/* Opens /dev/<name> for writing (open only: nothing is ever written). If the
 * node is absent, tries a private node of the same number in the scratch dir
 * so "hidden from /dev" is told apart from "reachable by mknod". */
static void check_dev_node(const char *check, const char *name, unsigned minor) {
    if (!selected(check)) return;
    char path[4200];
    snprintf(path, sizeof path, "/dev/%s", name);
    int fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
    if (fd >= 0) {
        close(fd);
        emit(check, ALLOWED, 0, "opened %s read-write (nothing written)", path);
        return;
    }
    int e = errno;
    if (denied(e)) {
        emit(check, FORBIDDEN, e, "open %s denied", path);
        return;
    }
    if (e == ENXIO || e == ENODEV) {
        emit(check, INCONCLUSIVE, e, "%s exists but the kernel has no such device", path);
        return;
    }
    if (e != ENOENT || !scratch[0]) {
        emit(check, INCONCLUSIVE, e, "open %s failed", path);
        return;
    }
    path_join(path, sizeof path, scratch, name);
    if (mknod(path, S_IFCHR | 0600, makedev(1, minor)) < 0) {
        e = errno;
        emit(check, denied(e) ? FORBIDDEN : INCONCLUSIVE, e,
             "/dev/%s absent and mknod 1:%u denied", name, minor);
        return;
    }
    fd = open(path, O_RDWR | O_CLOEXEC | O_NOCTTY);
    e = fd < 0 ? errno : 0;
    if (fd >= 0) close(fd);
    unlink(path);
    if (fd >= 0)
        emit(check, ALLOWED, 0, "/dev/%s absent but a node made by mknod 1:%u opened read-write",
             name, minor);
    else if (denied(e))
        emit(check, FORBIDDEN, e, "/dev/%s absent; a node made by mknod 1:%u cannot be opened", name,
             minor);
    else
        emit(check, INCONCLUSIVE, e, "/dev/%s absent; node 1:%u made but kernel has no device",
             name, minor);
}

#ifdef HAVE_IOPL
static void child_iopl(void *arg, struct child_result *r) {
    (void)arg;
    if (iopl(3) < 0) {
        r->err = errno;
        return;
    }
    iopl(0); /* the child exits anyway; undo for good measure */
}

static void child_ioperm(void *arg, struct child_result *r) {
    (void)arg;
    if (ioperm(0x80, 1, 1) < 0) {
        r->err = errno;
        return;
    }
    ioperm(0x80, 1, 0);
}
#endif

static void check_kernel_modify(void) {
    check_dev_node("kernel_modify.dev_mem", "mem", 1);
    check_dev_node("kernel_modify.dev_kmem", "kmem", 2);
    check_dev_node("kernel_modify.dev_port", "port", 4);

    struct child_result r;
#ifdef HAVE_IOPL
    if (selected("kernel_modify.iopl")) {
        if (in_child(child_iopl, NULL, 5000, &r) < 0)
            emit("kernel_modify.iopl", INCONCLUSIVE, r.err, "%s", r.detail);
        else
            emit("kernel_modify.iopl", classify(r.err, NULL), r.err,
                 r.err ? "iopl(3) failed" : "iopl(3) succeeded (in a child, undone)");
    }
    if (selected("kernel_modify.ioperm")) {
        if (in_child(child_ioperm, NULL, 5000, &r) < 0)
            emit("kernel_modify.ioperm", INCONCLUSIVE, r.err, "%s", r.detail);
        else
            emit("kernel_modify.ioperm", classify(r.err, NULL), r.err,
                 r.err ? "ioperm(0x80) failed" : "ioperm(0x80) succeeded (in a child, undone)");
    }
#else
    if (selected("kernel_modify.iopl"))
        emit("kernel_modify.iopl", INCONCLUSIVE, 0, "not an x86 machine");
    if (selected("kernel_modify.ioperm"))
        emit("kernel_modify.ioperm", INCONCLUSIVE, 0, "not an x86 machine");
#endif

    if (selected("kernel_modify.bpf_prog_load")) {
        /* A kprobe program needs CAP_BPF+CAP_PERFMON (checked before the
         * verifier); its one instruction is invalid, so even when permitted
         * nothing is loaded (EINVAL from the verifier). */
        struct bpf_insn insn;
        memset(&insn, 0, sizeof insn);
        union bpf_attr attr;
        memset(&attr, 0, sizeof attr);
        attr.prog_type = BPF_PROG_TYPE_KPROBE;
        attr.insn_cnt = 1;
        attr.insns = (uint64_t)(uintptr_t)&insn;
        attr.license = (uint64_t)(uintptr_t) "GPL";
        long fd = syscall(SYS_bpf, BPF_PROG_LOAD, &attr, sizeof attr);
        int e = fd < 0 ? errno : 0;
        if (fd >= 0) close((int)fd);
        static const int passed[] = {EINVAL, E2BIG, 0};
        enum verdict v = classify(e, passed);
        emit("kernel_modify.bpf_prog_load", v, e, "%s",
             v == ALLOWED ? "BPF_PROG_LOAD (kprobe) passed the permission check"
             : v == FORBIDDEN ? "BPF_PROG_LOAD (kprobe) denied"
                              : "BPF_PROG_LOAD gave an unexpected answer");
    }

    if (selected("kernel_modify.perf_event_open")) {
        /* A CPU-wide counter needs CAP_PERFMON when perf_event_paranoid > 0. */
        char paranoid[32] = "?";
        int err;
        if (read_file("/proc/sys/kernel/perf_event_paranoid", paranoid, sizeof paranoid, &err) > 0)
            chomp(paranoid);
        struct perf_event_attr pa;
        memset(&pa, 0, sizeof pa);
        pa.type = PERF_TYPE_SOFTWARE;
        pa.size = sizeof pa;
        pa.config = PERF_COUNT_SW_CPU_CLOCK;
        pa.disabled = 1;
        long fd = syscall(SYS_perf_event_open, &pa, -1, 0, -1, PERF_FLAG_FD_CLOEXEC);
        int e = fd < 0 ? errno : 0;
        if (fd >= 0) close((int)fd);
        enum verdict v = classify(e, NULL);
        /* Debian's perf_event_paranoid=3 keeps perf from everyone without CAP_SYS_ADMIN: a
           refusal despite CAP_PERFMON says nothing about the instance's restriction. */
        if (v == FORBIDDEN && e == EACCES && atoi(paranoid) > 2 && has_effective_cap(38))
            v = INCONCLUSIVE;
        emit("kernel_modify.perf_event_open", v, e,
             "CPU-wide perf_event_open %s (perf_event_paranoid=%s)",
             fd >= 0 ? "succeeded (closed)" : "failed", paranoid);
    }

    if (selected("kernel_modify.kexec_file_load")) {
        /* Never kexec_load with no segments (that unloads a loaded crash
         * kernel): kexec_file_load with an undefined flag is refused with
         * EPERM before, or EINVAL right after, the permission check. */
        long rr = syscall(SYS_kexec_file_load, -1, -1, 0UL, NULL, 1UL << 30);
        int e = rr < 0 ? errno : 0;
        static const int passed[] = {EINVAL, 0};
        enum verdict v = classify(e, passed);
        emit("kernel_modify.kexec_file_load", v, e, "%s",
             v == ALLOWED ? "kexec_file_load passed the permission check (bad flag rejected after)"
             : v == FORBIDDEN ? "kexec_file_load denied"
                              : "kexec_file_load unavailable or unexpected answer");
    }
}

/* ---------------------------------------------------------------- mount */

static void child_mount_tmpfs(void *arg, struct child_result *r) {
    const char *dir = arg;
    /* A private mount namespace keeps even a successful mount off the host's
     * table; without one (e.g. unshare denied) the mount is made where we are
     * and removed right after. */
    int private_ns = unshare(CLONE_NEWNS) == 0 &&
                     mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0;
    if (mount("stockade-probe", dir, "tmpfs", MS_NOSUID | MS_NODEV | MS_NOEXEC,
              "size=64k,mode=700") < 0) {
        r->err = errno;
        snprintf(r->detail, sizeof r->detail, "mount tmpfs on %s failed%s", dir,
                 private_ns ? " (in a private mount namespace)" : "");
        return;
    }
    int un = umount2(dir, 0) == 0 || umount2(dir, MNT_DETACH) == 0;
    snprintf(r->detail, sizeof r->detail, "mounted tmpfs on %s%s, %s", dir,
             private_ns ? " in a private mount namespace" : "",
             un ? "unmounted" : "UNMOUNT FAILED");
}

static void check_mount(void) {
    struct child_result r;
    if (selected("mount.tmpfs")) {
        char dir[4200];
        if (!scratch[0]) {
            emit("mount.tmpfs", INCONCLUSIVE, 0, "no writable scratch directory");
        } else {
            path_join(dir, sizeof dir, scratch, "mnt");
            if (mkdir(dir, 0700) < 0) {
                emit("mount.tmpfs", INCONCLUSIVE, errno, "mkdir %s failed", dir);
            } else {
                static const int passed[] = {0};
                if (in_child(child_mount_tmpfs, dir, 5000, &r) < 0)
                    emit("mount.tmpfs", INCONCLUSIVE, r.err, "%s", r.detail);
                else
                    emit("mount.tmpfs", classify(r.err, passed), r.err, "%s", r.detail);
                if (rmdir(dir) < 0 && errno == EBUSY) {
                    umount2(dir, MNT_DETACH);
                    rmdir(dir);
                }
            }
        }
    }
    if (selected("mount.umount")) {
        /* Aimed at the fresh scratch dir, certainly not a mount point: EINVAL
         * then means the permission check passed. */
        const char *target = scratch[0] ? scratch : NULL;
        if (!target) {
            emit("mount.umount", INCONCLUSIVE, 0, "no scratch directory to aim at");
        } else {
            int rc = umount2(target, UMOUNT_NOFOLLOW);
            int e = rc < 0 ? errno : 0;
            static const int passed[] = {EINVAL, 0};
            emit("mount.umount", classify(e, passed), e, "umount2 of non-mount-point %s %s",
                 target, e == EINVAL ? "passed the permission check" : "failed");
        }
    }
    if (selected("mount.fsopen")) {
        long fd = syscall(SYS_fsopen, "tmpfs", FSOPEN_CLOEXEC);
        int e = fd < 0 ? errno : 0;
        if (fd >= 0) close((int)fd);
        emit("mount.fsopen", classify(e, NULL), e, "fsopen(tmpfs) %s",
             fd >= 0 ? "gave a context (closed unused)" : "failed");
    }
}

/* ---------------------------------------------------------------- mknod */

static void check_mknod(void) {
    char path[4200];
    if (selected("mknod.char_1_3")) {
        if (!scratch[0]) {
            emit("mknod.char_1_3", INCONCLUSIVE, 0, "no writable scratch directory");
        } else {
            path_join(path, sizeof path, scratch, "null");
            int rc = mknod(path, S_IFCHR | 0600, makedev(1, 3));
            int e = rc < 0 ? errno : 0;
            if (rc == 0) unlink(path);
            emit("mknod.char_1_3", classify(e, NULL), e, "mknod c 1:3 in %s %s", scratch,
                 rc == 0 ? "succeeded (unlinked)" : "failed");
        }
    }
    if (selected("mknod.block_device_open")) {
        /* Nodes for real disks, opened read-only (never read): the classic
         * way to reach the host's data when both mknod and the device cgroup
         * let it through. Each listed device is tried until one opens. */
        char buf[8192], tried[400] = "";
        int err, n_tried = 0, made = 0, last_err = 0;
        enum verdict v = INCONCLUSIVE;
        if (!scratch[0]) {
            emit("mknod.block_device_open", INCONCLUSIVE, 0, "no writable scratch directory");
            return;
        }
        if (read_file("/proc/partitions", buf, sizeof buf, &err) < 0) buf[0] = 0;
        path_join(path, sizeof path, scratch, "disk");
        char *save = NULL;
        for (char *line = strtok_r(buf, "\n", &save); line && n_tried < 16;
             line = strtok_r(NULL, "\n", &save)) {
            unsigned maj, min;
            unsigned long long blocks;
            char name[64];
            if (sscanf(line, "%u %u %llu %63s", &maj, &min, &blocks, name) != 4) continue;
            n_tried++;
            int e = 0;
            if (mknod(path, S_IFBLK | 0600, makedev(maj, min)) < 0) {
                e = errno;
                last_err = e;
                v = denied(e) ? FORBIDDEN : INCONCLUSIVE;
                size_t len = strlen(tried);
                snprintf(tried + len, sizeof tried - len, "%s%s: mknod %s", len ? ", " : "", name,
                         errname(e));
                break; /* mknod itself is refused: no other device will differ */
            }
            made++;
            int fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK);
            e = fd < 0 ? errno : 0;
            if (fd >= 0) close(fd);
            unlink(path);
            size_t len = strlen(tried);
            snprintf(tried + len, sizeof tried - len, "%s%s %u:%u: open %s", len ? ", " : "", name,
                     maj, min, e ? errname(e) : "ok");
            if (!e) {
                v = ALLOWED;
                last_err = 0;
                break;
            }
            last_err = e;
            if (denied(e)) v = FORBIDDEN;
        }
        if (!n_tried)
            emit("mknod.block_device_open", INCONCLUSIVE, 0, "no block device in /proc/partitions");
        else
            emit("mknod.block_device_open", v, last_err,
                 "%d block node(s) made in the scratch dir and unlinked; opened read-only, "
                 "nothing read [%s]",
                 made, tried);
    }
}

/* ---------------------------------------------------------------- raw_sockets */

static void raw_socket(const char *check, int domain, int type, int proto, const char *what) {
    if (!selected(check)) return;
    int fd = socket(domain, type | SOCK_CLOEXEC, proto);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0) close(fd);
    static const int passed[] = {0};
    enum verdict v = classify(e, passed);
    if (e == EAFNOSUPPORT || e == EPROTONOSUPPORT || e == ESOCKTNOSUPPORT) v = INCONCLUSIVE;
    emit(check, v, e, "socket(%s) %s", what, fd >= 0 ? "opened (closed)" : "failed");
}

static void check_raw_sockets(void) {
    raw_socket("raw_sockets.inet_raw_icmp", AF_INET, SOCK_RAW, IPPROTO_ICMP,
               "AF_INET, SOCK_RAW, IPPROTO_ICMP");
    raw_socket("raw_sockets.inet6_raw_icmpv6", AF_INET6, SOCK_RAW, IPPROTO_ICMPV6,
               "AF_INET6, SOCK_RAW, IPPROTO_ICMPV6");
    raw_socket("raw_sockets.packet", AF_PACKET, SOCK_RAW, htons(0x0003 /* ETH_P_ALL */),
               "AF_PACKET, SOCK_RAW, ETH_P_ALL");
}

/* ---------------------------------------------------------------- net_admin */

/* One rtnetlink request; returns 0 or the errno the kernel acknowledged. */
static int rtnl_route(int type, int flags, uint32_t table, struct in_addr dst) {
    struct {
        struct nlmsghdr nh;
        struct rtmsg rt;
        char attrs[64];
    } req;
    memset(&req, 0, sizeof req);
    req.nh.nlmsg_type = (uint16_t)type;
    req.nh.nlmsg_flags = (uint16_t)(NLM_F_REQUEST | NLM_F_ACK | flags);
    req.nh.nlmsg_seq = 1;
    req.rt.rtm_family = AF_INET;
    req.rt.rtm_dst_len = 32;
    req.rt.rtm_table = RT_TABLE_UNSPEC; /* the real id goes in RTA_TABLE */
    req.rt.rtm_protocol = RTPROT_BOOT;
    req.rt.rtm_scope = RT_SCOPE_UNIVERSE;
    req.rt.rtm_type = RTN_UNREACHABLE;
    size_t len = NLMSG_LENGTH(sizeof req.rt);
    struct rtattr *ra = (struct rtattr *)((char *)&req + NLMSG_ALIGN(len));
    ra->rta_type = RTA_DST;
    ra->rta_len = RTA_LENGTH(sizeof dst);
    memcpy(RTA_DATA(ra), &dst, sizeof dst);
    len = NLMSG_ALIGN(len) + RTA_ALIGN(ra->rta_len);
    ra = (struct rtattr *)((char *)&req + len);
    ra->rta_type = RTA_TABLE;
    ra->rta_len = RTA_LENGTH(sizeof table);
    memcpy(RTA_DATA(ra), &table, sizeof table);
    len += RTA_ALIGN(ra->rta_len);
    req.nh.nlmsg_len = (uint32_t)len;

    int s = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_ROUTE);
    if (s < 0) return errno;
    struct sockaddr_nl kernel = {.nl_family = AF_NETLINK};
    int err = 0;
    if (sendto(s, &req, len, 0, (struct sockaddr *)&kernel, sizeof kernel) < 0) {
        err = errno;
    } else {
        char buf[1024];
        struct pollfd p = {.fd = s, .events = POLLIN};
        ssize_t n = poll(&p, 1, 2000) == 1 ? recv(s, buf, sizeof buf, 0) : -1;
        struct nlmsghdr *h = (struct nlmsghdr *)buf;
        if (n < 0)
            err = errno ? errno : ETIMEDOUT;
        else if (NLMSG_OK(h, (size_t)n) && h->nlmsg_type == NLMSG_ERROR)
            err = -((struct nlmsgerr *)NLMSG_DATA(h))->error;
        else
            err = EPROTO;
    }
    close(s);
    return err;
}

/* An unreachable host route to a reserved (class E) address, in a routing
 * table of its own that no rule consults: harmless even for the instant it
 * exists on a host, deleted right after. (SIOCADDRT can only write the main
 * table, where any prefix may be someone's real network.) */
static void route_add_check(void) {
    const uint32_t table = 0x5ec0de;
    struct in_addr dst;
    inet_pton(AF_INET, "240.84.84.84", &dst);
    int e = rtnl_route(RTM_NEWROUTE, NLM_F_CREATE | NLM_F_EXCL, table, dst);
    const char *undo = "";
    if (e == 0)
        undo = rtnl_route(RTM_DELROUTE, 0, table, dst) == 0 ? ", deleted" : ", DELETE FAILED";
    static const int passed[] = {EEXIST, ENETUNREACH, ENETDOWN, ESRCH, 0};
    enum verdict v = classify(e, passed);
    if (e == EAFNOSUPPORT || e == EPROTONOSUPPORT) v = INCONCLUSIVE;
    emit("net_admin.route_add", v, e,
         "RTM_NEWROUTE unreachable 240.84.84.84/32 in table 0x%x %s%s", table,
         e == 0 ? "succeeded" : "failed", undo);
}

static void check_net_admin(void) {
    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (s < 0) {
        int e = errno;
        if (selected("net_admin.route_add"))
            emit("net_admin.route_add", INCONCLUSIVE, e, "no AF_INET socket");
        if (selected("net_admin.link_flags"))
            emit("net_admin.link_flags", INCONCLUSIVE, e, "no AF_INET socket");
        return;
    }
    if (selected("net_admin.route_add")) route_add_check();
    if (selected("net_admin.link_flags")) {
        /* Writes back lo's own flags: a no-op that still needs CAP_NET_ADMIN. */
        struct ifreq ifr;
        memset(&ifr, 0, sizeof ifr);
        strcpy(ifr.ifr_name, "lo");
        if (ioctl(s, SIOCGIFFLAGS, &ifr) < 0) {
            emit("net_admin.link_flags", INCONCLUSIVE, errno, "SIOCGIFFLAGS lo failed");
        } else {
            short flags = ifr.ifr_flags;
            int rc = ioctl(s, SIOCSIFFLAGS, &ifr);
            int e = rc < 0 ? errno : 0;
            emit("net_admin.link_flags", classify(e, NULL), e,
                 "SIOCSIFFLAGS lo with its own flags 0x%x %s", (unsigned short)flags,
                 rc == 0 ? "succeeded (unchanged)" : "failed");
        }
    }
    close(s);
}

/* ---------------------------------------------------------------- sysctl */

/* Writes back the value just read from the first candidate that exists. */
static void write_back(const char *check, const char *const *candidates) {
    if (!selected(check)) return;
    char value[256], again[256];
    int err = ENOENT;
    for (const char *const *p = candidates; *p; p++) {
        ssize_t n = read_file(*p, value, sizeof value, &err);
        if (n < 0) continue;
        if (n == 0) {
            emit(check, INCONCLUSIVE, 0, "%s read empty", *p);
            return;
        }
        int fd = open(*p, O_WRONLY | O_CLOEXEC);
        if (fd < 0) {
            int e = errno;
            emit(check, denied(e) ? FORBIDDEN : INCONCLUSIVE, e, "open %s for writing failed", *p);
            return;
        }
        ssize_t w = write(fd, value, (size_t)n);
        int e = w < 0 ? errno : 0;
        close(fd);
        char shown[64];
        snprintf(shown, sizeof shown, "%.60s", value);
        chomp(shown);
        if (w < 0) {
            emit(check, denied(e) ? FORBIDDEN : INCONCLUSIVE, e, "write of %s's own value failed",
                 *p);
            return;
        }
        const char *changed = "";
        if (read_file(*p, again, sizeof again, &err) >= 0 && strcmp(again, value) != 0)
            changed = " (VALUE CHANGED since read)";
        emit(check, ALLOWED, 0, "wrote back %s = %s%s", *p, shown, changed);
        return;
    }
    emit(check, INCONCLUSIVE, err, "no candidate file readable (first: %s)", candidates[0]);
}

static void check_sysctl(void) {
    static const char *const proc_sys[] = {
        "/proc/sys/kernel/printk_ratelimit",
        "/proc/sys/vm/overcommit_ratio",
        NULL,
    };
    static const char *const sys[] = {
        "/sys/kernel/mm/transparent_hugepage/khugepaged/pages_to_scan",
        "/sys/kernel/mm/ksm/pages_to_scan",
        "/sys/module/printk/parameters/time",
        NULL,
    };
    write_back("sysctl.proc_sys", proc_sys);
    write_back("sysctl.sys", sys);
}

/* ---------------------------------------------------------------- chflags */

struct flag_try {
    enum verdict v;
    int err;
    char where[300];
};

/* Sets `flag` on a file of our own in dir and clears it again. */
static void try_flag(const char *dir, int flag, struct flag_try *t) {
    char path[4200];
    snprintf(path, sizeof path, "%s/.stockade-probe-flags-%d", dir, (int)getpid());
    snprintf(t->where, sizeof t->where, "%s", dir);
    int fd = open(path, O_RDONLY | O_CREAT | O_EXCL | O_CLOEXEC | O_NOFOLLOW, 0600);
    if (fd < 0) {
        t->err = errno;
        t->v = INCONCLUSIVE; /* cannot create a file there: says nothing about flags */
        return;
    }
    int flags = 0;
    if (ioctl(fd, PROBE_FS_IOC_GETFLAGS, &flags) < 0) {
        t->err = errno;
        t->v = INCONCLUSIVE;
    } else {
        int set = flags | flag;
        if (ioctl(fd, PROBE_FS_IOC_SETFLAGS, &set) < 0) {
            t->err = errno;
            t->v = denied(t->err) ? FORBIDDEN : INCONCLUSIVE;
        } else {
            t->err = 0;
            t->v = ALLOWED;
            int tries = 0;
            while (ioctl(fd, PROBE_FS_IOC_SETFLAGS, &flags) < 0 && ++tries < 5) usleep(1000);
        }
    }
    close(fd);
    if (unlink(path) < 0) {
        /* Flag stuck: clear everything we may have set, then retry. */
        fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW);
        if (fd >= 0) {
            int zero = 0;
            ioctl(fd, PROBE_FS_IOC_SETFLAGS, &zero);
            close(fd);
        }
        unlink(path);
    }
}

static void check_chflags(void) {
    const char *dirs[MAX_FLAG_DIRS + 2];
    int n = 0;
    for (int i = 0; i < opt.n_flag_dirs; i++) dirs[n++] = opt.flag_dirs[i];
    dirs[n++] = "/tmp";
    dirs[n++] = "/";
    static const struct {
        const char *check;
        int flag;
        const char *name;
    } flags[] = {
        {"chflags.immutable", PROBE_FS_IMMUTABLE_FL, "FS_IMMUTABLE_FL"},
        {"chflags.append", PROBE_FS_APPEND_FL, "FS_APPEND_FL"},
    };
    for (size_t f = 0; f < sizeof flags / sizeof flags[0]; f++) {
        if (!selected(flags[f].check)) continue;
        /* allowed anywhere wins; else forbidden anywhere; else inconclusive */
        struct flag_try best = {.v = INCONCLUSIVE, .err = 0, .where = ""};
        char tried[DETAIL_MAX / 2] = "";
        dev_t seen[MAX_FLAG_DIRS + 2];
        int nseen = 0;
        for (int i = 0; i < n; i++) {
            struct stat st;
            if (stat(dirs[i], &st) < 0) continue;
            int dup = 0;
            for (int j = 0; j < nseen; j++) dup |= seen[j] == st.st_dev;
            if (dup) continue;
            seen[nseen++] = st.st_dev;
            struct flag_try t;
            try_flag(dirs[i], flags[f].flag, &t);
            size_t len = strlen(tried);
            snprintf(tried + len, sizeof tried - len, "%s%s: %s", len ? "; " : "", dirs[i],
                     t.err ? errname(t.err) : "ok");
            if (t.v == ALLOWED || (t.v == FORBIDDEN && best.v == INCONCLUSIVE) ||
                (t.v == INCONCLUSIVE && best.v == INCONCLUSIVE && !best.err))
                best = t;
            if (best.v == ALLOWED) break;
        }
        emit(flags[f].check, best.v, best.err, "set %s on a file of its own (cleared after) "
             "[%s]", flags[f].name, tried);
    }
}

/* ---------------------------------------------------------------- foreign_network */

/* Connects with a timeout; if the peer is there and a token is expected,
 * checks that it is the suite's listener and not a namesake of the instance. */
static void connect_check(const char *check, int domain, struct sockaddr *sa, socklen_t len,
                          const char *what) {
    int s = socket(domain, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
    if (s < 0) {
        int e = errno;
        emit(check, denied(e) ? FORBIDDEN : INCONCLUSIVE, e, "socket for %s failed", what);
        return;
    }
    int e = 0;
    if (connect(s, sa, len) < 0) {
        e = errno;
        if (e == EINPROGRESS) {
            struct pollfd p = {.fd = s, .events = POLLOUT};
            if (poll(&p, 1, 2000) == 1) {
                socklen_t l = sizeof e;
                getsockopt(s, SOL_SOCKET, SO_ERROR, &e, &l);
            } else {
                e = ETIMEDOUT;
            }
        }
    }
    if (e == EAGAIN) {
        close(s);
        emit(check, ALLOWED, e, "%s exists (listen queue full)", what);
        return;
    }
    if (e) {
        close(s);
        emit(check, FORBIDDEN, e, "cannot connect to %s", what);
        return;
    }
    if (!opt.host_token) {
        close(s);
        emit(check, ALLOWED, 0, "connected to %s", what);
        return;
    }
    char buf[256];
    size_t got = 0;
    struct pollfd p = {.fd = s, .events = POLLIN};
    while (got < sizeof buf - 1 && poll(&p, 1, 2000) == 1) {
        ssize_t n = read(s, buf + got, sizeof buf - 1 - got);
        if (n <= 0) break;
        got += (size_t)n;
        buf[got] = 0;
        if (strstr(buf, opt.host_token)) break;
    }
    buf[got] = 0;
    close(s);
    if (strstr(buf, opt.host_token))
        emit(check, ALLOWED, 0, "connected to %s and it is the host's listener (token)", what);
    else
        emit(check, FORBIDDEN, 0, "connected to %s but the peer is not the host's listener", what);
}

static void check_foreign_network(void) {
    if (selected("foreign_network.host_loopback_tcp")) {
        if (opt.host_port <= 0) {
            emit("foreign_network.host_loopback_tcp", INCONCLUSIVE, 0, "no --host-port given");
        } else {
            struct sockaddr_in sin = {.sin_family = AF_INET,
                                      .sin_port = htons((uint16_t)opt.host_port)};
            sin.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
            char what[64];
            snprintf(what, sizeof what, "127.0.0.1:%ld", opt.host_port);
            connect_check("foreign_network.host_loopback_tcp", AF_INET, (struct sockaddr *)&sin,
                          sizeof sin, what);
        }
    }
    if (selected("foreign_network.host_abstract_unix")) {
        if (!opt.host_abstract) {
            emit("foreign_network.host_abstract_unix", INCONCLUSIVE, 0,
                 "no --host-abstract given");
        } else {
            struct sockaddr_un sun;
            memset(&sun, 0, sizeof sun);
            sun.sun_family = AF_UNIX;
            size_t n = strlen(opt.host_abstract);
            if (n > sizeof sun.sun_path - 2) n = sizeof sun.sun_path - 2;
            memcpy(sun.sun_path + 1, opt.host_abstract, n);
            char what[160];
            snprintf(what, sizeof what, "abstract unix socket @%s", opt.host_abstract);
            connect_check("foreign_network.host_abstract_unix", AF_UNIX, (struct sockaddr *)&sun,
                          (socklen_t)(offsetof(struct sockaddr_un, sun_path) + 1 + n), what);
        }
    }
    if (selected("foreign_network.host_interfaces")) {
        /* /proc/net/dev lists the reader's network namespace. A host interface
         * is given as NAME=MAC so an instance's own "eth0" is not mistaken
         * for the host's. */
        char buf[16384], names[1024] = "";
        int err;
        if (read_file("/proc/net/dev", buf, sizeof buf, &err) < 0) {
            emit("foreign_network.host_interfaces", INCONCLUSIVE, err, "cannot read /proc/net/dev");
        } else {
            const char *hit = NULL;
            char *save = NULL;
            for (char *line = strtok_r(buf, "\n", &save); line;
                 line = strtok_r(NULL, "\n", &save)) {
                char *colon = strchr(line, ':');
                if (!colon) continue;
                *colon = 0;
                while (*line == ' ') line++;
                size_t len = strlen(names);
                snprintf(names + len, sizeof names - len, "%s%s", len ? "," : "", line);
                for (int i = 0; i < opt.n_host_ifaces && !hit; i++) {
                    const char *want = opt.host_ifaces[i];
                    const char *eq = strchr(want, '=');
                    size_t nlen = eq ? (size_t)(eq - want) : strlen(want);
                    if (strlen(line) != nlen || strncmp(line, want, nlen) != 0) continue;
                    if (!eq) {
                        hit = want;
                        continue;
                    }
                    char path[300], mac[64];
                    snprintf(path, sizeof path, "/sys/class/net/%s/address", line);
                    int s = socket(AF_INET, SOCK_DGRAM | SOCK_CLOEXEC, 0);
                    struct ifreq ifr;
                    memset(&ifr, 0, sizeof ifr);
                    snprintf(ifr.ifr_name, sizeof ifr.ifr_name, "%s", line);
                    if (s >= 0 && ioctl(s, SIOCGIFHWADDR, &ifr) == 0) {
                        unsigned char *m = (unsigned char *)ifr.ifr_hwaddr.sa_data;
                        snprintf(mac, sizeof mac, "%02x:%02x:%02x:%02x:%02x:%02x", m[0], m[1],
                                 m[2], m[3], m[4], m[5]);
                        if (strcasecmp(mac, eq + 1) == 0) hit = want;
                    } else if (read_file(path, mac, sizeof mac, &err) > 0) {
                        chomp(mac);
                        if (strcasecmp(mac, eq + 1) == 0) hit = want;
                    }
                    if (s >= 0) close(s);
                }
            }
            if (opt.n_host_ifaces == 0)
                emit("foreign_network.host_interfaces", INCONCLUSIVE, 0,
                     "no --host-iface given; visible: %s", names);
            else if (hit)
                emit("foreign_network.host_interfaces", ALLOWED, 0,
                     "host interface %s is visible; visible: %s", hit, names);
            else
                emit("foreign_network.host_interfaces", FORBIDDEN, 0,
                     "no host interface visible; visible: %s", names);
        }
    }
}

/* ---------------------------------------------------------------- connect / serve */

/* Not checks: tools the suite uses to measure a bridged instance's network from
 * inside (docs/probe.md, "Connect and serve"). `--connect ADDR:PORT` ([V6]:PORT)
 * opens every TCP connection at once, waits up to --connect-timeout ms for all of
 * them, reads the first line of each that connected, and reports one record per
 * target: {"connect": TARGET, "errno": null | "ECONNREFUSED" | "ETIMEDOUT" | ...,
 * "read": FIRST-LINE}. The suite decides what the answers mean. */

static long now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (long)ts.tv_sec * 1000 + ts.tv_nsec / 1000000;
}

static void connect_record(const char *target, int err, const char *read) {
    printf("{\"connect\": ");
    json_str(stdout, target);
    printf(", \"errno\": ");
    if (err)
        json_str(stdout, errname(err));
    else
        fputs("null", stdout);
    printf(", \"read\": ");
    json_str(stdout, read);
    printf("}\n");
    fflush(stdout);
}

static int parse_target(const char *t, struct sockaddr_storage *ss, socklen_t *len) {
    char host[128];
    const char *colon, *start = t, *end;
    if (*t == '[') {
        start = t + 1;
        end = strchr(start, ']');
        if (!end || end[1] != ':') return -1;
        colon = end + 1;
    } else {
        colon = strrchr(t, ':');
        if (!colon) return -1;
        end = colon;
    }
    size_t n = (size_t)(end - start);
    if (n == 0 || n >= sizeof host) return -1;
    memcpy(host, start, n);
    host[n] = 0;
    long port = atol(colon + 1);
    if (port <= 0 || port > 65535) return -1;
    memset(ss, 0, sizeof *ss);
    struct sockaddr_in *sin = (struct sockaddr_in *)ss;
    struct sockaddr_in6 *sin6 = (struct sockaddr_in6 *)ss;
    if (inet_pton(AF_INET, host, &sin->sin_addr) == 1) {
        sin->sin_family = AF_INET;
        sin->sin_port = htons((uint16_t)port);
        *len = sizeof *sin;
    } else if (inet_pton(AF_INET6, host, &sin6->sin6_addr) == 1) {
        sin6->sin6_family = AF_INET6;
        sin6->sin6_port = htons((uint16_t)port);
        *len = sizeof *sin6;
    } else {
        return -1;
    }
    return 0;
}

static void run_connects(void) {
    int n = opt.n_connects;
    int fd[MAX_CONNECTS], err[MAX_CONNECTS], done[MAX_CONNECTS];
    char got[MAX_CONNECTS][128];
    size_t have[MAX_CONNECTS];
    for (int i = 0; i < n; i++) {
        struct sockaddr_storage ss;
        socklen_t len = 0;
        fd[i] = -1;
        err[i] = 0;
        done[i] = 0;
        have[i] = 0;
        got[i][0] = 0;
        if (parse_target(opt.connects[i], &ss, &len) < 0) {
            err[i] = EINVAL;
            done[i] = 2;
            continue;
        }
        fd[i] = socket(ss.ss_family, SOCK_STREAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
        if (fd[i] < 0) {
            err[i] = errno;
            done[i] = 2;
            continue;
        }
        if (connect(fd[i], (struct sockaddr *)&ss, len) == 0)
            done[i] = 1; /* connected: read its line */
        else if (errno != EINPROGRESS) {
            err[i] = errno;
            done[i] = 2;
        }
    }
    /* done: 0 connecting, 1 connected and reading, 2 finished */
    long deadline = now_ms() + opt.connect_timeout_ms;
    for (;;) {
        struct pollfd p[MAX_CONNECTS];
        int idx[MAX_CONNECTS], m = 0;
        for (int i = 0; i < n; i++) {
            if (done[i] == 2) continue;
            p[m].fd = fd[i];
            p[m].events = done[i] == 0 ? POLLOUT : POLLIN;
            p[m].revents = 0;
            idx[m++] = i;
        }
        long left = deadline - now_ms();
        if (m == 0 || left <= 0) break;
        if (poll(p, (nfds_t)m, (int)left) < 0 && errno != EINTR) break;
        for (int k = 0; k < m; k++) {
            int i = idx[k];
            if (!p[k].revents) continue;
            if (done[i] == 0) {
                socklen_t l = sizeof err[i];
                getsockopt(fd[i], SOL_SOCKET, SO_ERROR, &err[i], &l);
                done[i] = err[i] ? 2 : 1;
            } else {
                ssize_t r = read(fd[i], got[i] + have[i], sizeof got[i] - 1 - have[i]);
                if (r > 0) have[i] += (size_t)r;
                got[i][have[i]] = 0;
                if (r <= 0 || strchr(got[i], '\n') || have[i] >= sizeof got[i] - 1) done[i] = 2;
            }
        }
    }
    for (int i = 0; i < n; i++) {
        if (done[i] == 0) err[i] = ETIMEDOUT;
        got[i][strcspn(got[i], "\r\n")] = 0;
        connect_record(opt.connects[i], err[i], got[i]);
        if (fd[i] >= 0) close(fd[i]);
    }
}

/* `--serve PORT`: a TCP listener on every address of the instance (:: with v4-mapped,
 * else 0.0.0.0) that writes --serve-token and a newline to each connection; runs
 * until killed. Reports the fact "serving" once it listens. */
static int serve(void) {
    int s = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
    int one = 1, zero = 0;
    int e = 0;
    if (s >= 0) {
        struct sockaddr_in6 a = {.sin6_family = AF_INET6, .sin6_port = htons((uint16_t)opt.serve_port),
                                 .sin6_addr = in6addr_any};
        setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        setsockopt(s, IPPROTO_IPV6, IPV6_V6ONLY, &zero, sizeof zero);
        if (bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) {
            e = errno;
            close(s);
            s = -1;
        }
    }
    if (s < 0) {
        s = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
        struct sockaddr_in a = {.sin_family = AF_INET, .sin_port = htons((uint16_t)opt.serve_port)};
        if (s >= 0) setsockopt(s, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        if (s < 0 || bind(s, (struct sockaddr *)&a, sizeof a) < 0 || listen(s, 64) < 0) {
            fact("serve_error", "cannot listen on port %ld: %s", opt.serve_port,
                 errname(errno ? errno : e));
            return 1;
        }
    }
    fact("serving", "%ld", opt.serve_port);
    const char *token = opt.serve_token ? opt.serve_token : "";
    for (;;) {
        int c = accept4(s, NULL, NULL, SOCK_CLOEXEC);
        if (c < 0) {
            if (errno == EINTR || errno == ECONNABORTED) continue;
            fact("serve_error", "accept: %s", errname(errno));
            return 1;
        }
        dprintf(c, "%s\n", token);
        close(c);
    }
}

/* The fact "net_ifaces": NAME=ADDR,ADDR;... for every interface of this network
 * namespace (getifaddrs: AF_PACKET entries name them, AF_INET/AF_INET6 give addresses). */
static void report_ifaces(void) {
    struct ifaddrs *ifa = NULL;
    if (getifaddrs(&ifa) < 0) {
        fact("net_ifaces", "unknown: getifaddrs: %s", errname(errno));
        return;
    }
    char out[4000] = "";
    const char *names[64];
    int nn = 0;
    for (struct ifaddrs *a = ifa; a; a = a->ifa_next) {
        int seen = 0;
        for (int i = 0; i < nn; i++)
            if (strcmp(names[i], a->ifa_name) == 0) seen = 1;
        if (!seen && nn < 64) names[nn++] = a->ifa_name;
    }
    for (int i = 0; i < nn; i++) {
        size_t len = strlen(out);
        snprintf(out + len, sizeof out - len, "%s%s=", i ? ";" : "", names[i]);
        int first = 1;
        for (struct ifaddrs *a = ifa; a; a = a->ifa_next) {
            if (strcmp(a->ifa_name, names[i]) != 0 || !a->ifa_addr) continue;
            char buf[INET6_ADDRSTRLEN] = "";
            int fam = a->ifa_addr->sa_family;
            if (fam == AF_INET)
                inet_ntop(AF_INET, &((struct sockaddr_in *)a->ifa_addr)->sin_addr, buf, sizeof buf);
            else if (fam == AF_INET6)
                inet_ntop(AF_INET6, &((struct sockaddr_in6 *)a->ifa_addr)->sin6_addr, buf, sizeof buf);
            else
                continue;
            len = strlen(out);
            snprintf(out + len, sizeof out - len, "%s%s", first ? "" : ",", buf);
            first = 0;
        }
    }
    freeifaddrs(ifa);
    fact("net_ifaces", "%s", out);
}

/* ---------------------------------------------------------------- host_processes */

static void check_host_processes(void) {
    if (selected("host_processes.kill")) {
        if (opt.host_pid <= 0) {
            emit("host_processes.kill", INCONCLUSIVE, 0, "no --host-pid given");
        } else {
            int rc = kill((pid_t)opt.host_pid, 0);
            int e = rc < 0 ? errno : 0;
            int tok = pid_has_token(opt.host_pid);
            if (e == ESRCH)
                emit("host_processes.kill", FORBIDDEN, e, "pid %ld does not exist here",
                     opt.host_pid);
            else if ((e == 0 || e == EPERM) && tok == 0)
                emit("host_processes.kill", FORBIDDEN, e,
                     "pid %ld exists here but is another process (no host token)", opt.host_pid);
            else if (e == 0 || e == EPERM)
                emit("host_processes.kill", ALLOWED, e, "kill(%ld, 0) %s: the host process is %s",
                     opt.host_pid, e ? "gave EPERM" : "succeeded",
                     e ? "visible (not signallable)" : "visible and signallable");
            else
                emit("host_processes.kill", INCONCLUSIVE, e, "kill(%ld, 0) failed", opt.host_pid);
        }
    }
    if (selected("host_processes.proc_entry")) {
        if (opt.host_pid <= 0) {
            emit("host_processes.proc_entry", INCONCLUSIVE, 0, "no --host-pid given");
        } else {
            char path[64];
            struct stat st;
            snprintf(path, sizeof path, "/proc/%ld", opt.host_pid);
            int e = stat(path, &st) < 0 ? errno : 0;
            int tok = pid_has_token(opt.host_pid);
            if (access("/proc/self", F_OK) != 0)
                emit("host_processes.proc_entry", INCONCLUSIVE, 0, "/proc is not mounted");
            else if (e == ENOENT)
                emit("host_processes.proc_entry", FORBIDDEN, e, "%s does not exist", path);
            else if (e == 0 && tok == 0)
                emit("host_processes.proc_entry", FORBIDDEN, 0,
                     "%s exists but is another process (no host token)", path);
            else if (e == 0)
                emit("host_processes.proc_entry", ALLOWED, 0, "%s is visible%s", path,
                     tok == 1 ? " and is the host's process (token)" : "");
            else
                emit("host_processes.proc_entry", classify(e, NULL), e, "stat %s failed", path);
        }
    }
}

/* ---------------------------------------------------------------- ptrace */

static void child_seize_host(void *arg, struct child_result *r) {
    (void)arg;
    /* SEIZE sends no signal; this child's exit detaches it again. */
    if (ptrace(PTRACE_SEIZE, (pid_t)opt.host_pid, NULL, NULL) < 0) r->err = errno;
}

static void check_ptrace(void) {
    struct child_result r;
    if (selected("ptrace.host_pid")) {
        int tok = opt.host_pid > 0 ? pid_has_token(opt.host_pid) : -1;
        if (opt.host_pid <= 0) {
            emit("ptrace.host_pid", INCONCLUSIVE, 0, "no --host-pid given");
        } else if (tok == 0) {
            emit("ptrace.host_pid", FORBIDDEN, 0,
                 "pid %ld here is another process (no host token); not attached", opt.host_pid);
        } else if (in_child(child_seize_host, NULL, 5000, &r) < 0) {
            emit("ptrace.host_pid", INCONCLUSIVE, r.err, "%s", r.detail);
        } else {
            static const int passed[] = {0};
            enum verdict v = classify(r.err, passed);
            if (r.err == ESRCH) v = FORBIDDEN; /* not even visible */
            emit("ptrace.host_pid", v, r.err, "PTRACE_SEIZE of host pid %ld %s", opt.host_pid,
                 r.err ? "failed" : "succeeded (detached by the tracer's exit)");
        }
    }
    if (selected("ptrace.own_child")) {
        pid_t c = fork();
        if (c == 0) {
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            for (;;) pause();
        }
        if (c < 0) {
            emit("ptrace.own_child", INCONCLUSIVE, errno, "fork failed");
        } else {
            long rc = ptrace(PTRACE_ATTACH, c, NULL, NULL);
            int e = rc < 0 ? errno : 0;
            if (rc == 0) {
                waitpid(c, NULL, __WALL);
                ptrace(PTRACE_DETACH, c, NULL, NULL);
            }
            kill(c, SIGKILL);
            waitpid(c, NULL, __WALL);
            emit("ptrace.own_child", classify(e, NULL), e,
                 "PTRACE_ATTACH of its own child %s (control: same uid, no capability needed)",
                 rc == 0 ? "succeeded (detached)" : "failed");
        }
    }
    int want_uid = selected("ptrace.other_uid_child") ||
                   selected("ptrace.process_vm_readv_other_uid");
    if (want_uid) {
        /* A child that became another uid is not dumpable: reaching it needs
         * CAP_SYS_PTRACE, which is what the restriction is about. */
        int p[2];
        if (pipe2(p, O_CLOEXEC) < 0) return;
        pid_t c = fork();
        if (c == 0) {
            close(p[0]);
            prctl(PR_SET_PDEATHSIG, SIGKILL);
            int e = 0;
            if (setgroups(0, NULL) < 0 && errno != EPERM) e = errno;
            if (setresgid(65534, 65534, 65534) < 0 || setresuid(65534, 65534, 65534) < 0)
                e = errno;
            if (write(p[1], &e, sizeof e) != sizeof e) _exit(1);
            close(p[1]);
            if (e) _exit(0);
            for (;;) pause();
        }
        close(p[1]);
        int ce = -1;
        struct pollfd pf = {.fd = p[0], .events = POLLIN};
        if (c > 0 && poll(&pf, 1, 5000) == 1 && read(p[0], &ce, sizeof ce) != sizeof ce) ce = -1;
        close(p[0]);
        if (c < 0 || ce != 0) {
            if (selected("ptrace.other_uid_child"))
                emit("ptrace.other_uid_child", INCONCLUSIVE, ce > 0 ? ce : 0,
                     "cannot make a child of another uid (setresuid 65534)");
            if (selected("ptrace.process_vm_readv_other_uid"))
                emit("ptrace.process_vm_readv_other_uid", INCONCLUSIVE, ce > 0 ? ce : 0,
                     "cannot make a child of another uid (setresuid 65534)");
        } else {
            if (selected("ptrace.other_uid_child")) {
                long rc = ptrace(PTRACE_SEIZE, c, NULL, NULL);
                int e = rc < 0 ? errno : 0;
                /* no stop was requested; the child's death below is the detach */
                emit("ptrace.other_uid_child", classify(e, NULL), e,
                     "PTRACE_SEIZE of a uid-65534 child %s",
                     rc == 0 ? "succeeded" : "failed");
            }
            if (selected("ptrace.process_vm_readv_other_uid")) {
                int value = 0;
                struct iovec local = {.iov_base = &value, .iov_len = sizeof value};
                struct iovec remote = {.iov_base = (void *)&probe_marker,
                                       .iov_len = sizeof value};
                ssize_t n = process_vm_readv(c, &local, 1, &remote, 1, 0);
                int e = n < 0 ? errno : 0;
                static const int passed[] = {EFAULT, 0};
                emit("ptrace.process_vm_readv_other_uid", classify(e, passed), e,
                     "process_vm_readv of a uid-65534 child %s", n < 0 ? "failed" : "read memory");
            }
        }
        if (c > 0) {
            kill(c, SIGKILL);
            waitpid(c, NULL, __WALL);
        }
    }
}

/* ---------------------------------------------------------------- keyring */

static void check_keyring(void) {
    long id = syscall(SYS_keyctl, KEYCTL_GET_KEYRING_ID, KEY_SPEC_SESSION_KEYRING, 0);
    int e = id < 0 ? errno : 0;
    if (selected("keyring.syscall")) {
        if (id >= 0)
            emit("keyring.syscall", ALLOWED, 0, "keyctl works; session keyring id %ld", id);
        else if (denied(e))
            emit("keyring.syscall", FORBIDDEN, e, "keyctl denied (filtered)");
        else
            emit("keyring.syscall", INCONCLUSIVE, e,
                 "keyctl failed (ENOSYS: kernel without keys, or filtered with ENOSYS)");
    }
    if (!selected("keyring.host_session")) return;
    if (!opt.have_host_keyring) {
        emit("keyring.host_session", INCONCLUSIVE, e, "no --host-keyring given");
    } else if (id < 0) {
        emit("keyring.host_session", denied(e) ? FORBIDDEN : INCONCLUSIVE, e,
             "keyctl unavailable, the host keyring %ld is out of reach", opt.host_keyring);
    } else if (id == opt.host_keyring) {
        emit("keyring.host_session", ALLOWED, 0, "session keyring %ld is the host's", id);
    } else {
        char desc[256];
        long rc = syscall(SYS_keyctl, KEYCTL_DESCRIBE, opt.host_keyring, desc, sizeof desc);
        int de = rc < 0 ? errno : 0;
        if (rc >= 0)
            emit("keyring.host_session", ALLOWED, 0,
                 "own session keyring %ld, but the host's %ld can be described", id,
                 opt.host_keyring);
        else
            emit("keyring.host_session", FORBIDDEN, de,
                 "own session keyring %ld; the host's %ld is out of reach", id, opt.host_keyring);
    }
}

/* ---------------------------------------------------------------- sys_time, userns */

static void child_unshare_user(void *arg, struct child_result *r) {
    (void)arg;
    if (unshare(CLONE_NEWUSER) < 0) r->err = errno;
}

static void check_misc(void) {
    if (selected("sys_time.settimeofday")) {
        /* With both arguments NULL the kernel checks CAP_SYS_TIME and then
         * does nothing. */
        long rc = syscall(SYS_settimeofday, NULL, NULL);
        int e = rc < 0 ? errno : 0;
        emit("sys_time.settimeofday", classify(e, NULL), e, "settimeofday(NULL, NULL) %s",
             rc == 0 ? "passed the permission check (no-op)" : "failed");
    }
    if (selected("new_userns.unshare")) {
        struct child_result r;
        if (in_child(child_unshare_user, NULL, 5000, &r) < 0) {
            emit("new_userns.unshare", INCONCLUSIVE, r.err, "%s", r.detail);
        } else {
            enum verdict v = classify(r.err, NULL);
            /* max_user_namespaces=0 and the nesting limit are ways to forbid */
            if (r.err == ENOSPC || r.err == EUSERS) v = FORBIDDEN;
            emit("new_userns.unshare", v, r.err, "unshare(CLONE_NEWUSER) in a child %s",
                 r.err ? "failed" : "succeeded");
        }
    }
}

/* ---------------------------------------------------------------- escapes */

/* Writes back a release_agent's own value ("\n" when empty, which stores
 * the same empty string): allowed only with CAP_SYS_ADMIN in the initial user
 * namespace, and changes nothing. */
static int release_agent_writeback(const char *path, int *err) {
    char value[4096];
    ssize_t n = read_file(path, value, sizeof value, err);
    if (n < 0) return -1;
    if (n == 0) {
        strcpy(value, "\n");
        n = 1;
    }
    int fd = open(path, O_WRONLY | O_CLOEXEC);
    if (fd < 0) {
        *err = errno;
        return -1;
    }
    ssize_t w = write(fd, value, (size_t)n);
    *err = w < 0 ? errno : 0;
    close(fd);
    return w < 0 ? -1 : 0;
}

static void unescape_mount_path(char *s) {
    char *o = s;
    for (char *p = s; *p; p++) {
        if (p[0] == '\\' && p[1] >= '0' && p[1] <= '7' && p[2] && p[3]) {
            *o++ = (char)(((p[1] - '0') << 6) | ((p[2] - '0') << 3) | (p[3] - '0'));
            p += 3;
        } else {
            *o++ = *p;
        }
    }
    *o = 0;
}

static void child_mount_cgroup1(void *arg, struct child_result *r) {
    const char *dir = arg;
    int private_ns = unshare(CLONE_NEWNS) == 0 &&
                     mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL) == 0;
    char opts[64], path[4200];
    /* a named hierarchy without controllers: freed again when unmounted */
    snprintf(opts, sizeof opts, "none,name=stockade_probe_%d", (int)getppid());
    if (mount("stockade-probe", dir, "cgroup", MS_NOSUID | MS_NODEV | MS_NOEXEC, opts) < 0) {
        r->err = errno;
        snprintf(r->detail, sizeof r->detail, "no writable release_agent; mount cgroup v1 failed");
        return;
    }
    path_join(path, sizeof path, dir, "release_agent");
    int err = 0;
    int rc = release_agent_writeback(path, &err);
    r->err = rc == 0 ? 0 : err;
    r->extra = 1;
    int un = umount2(dir, 0) == 0 || umount2(dir, MNT_DETACH) == 0;
    snprintf(r->detail, sizeof r->detail, "mounted cgroup v1%s; its release_agent %s; %s",
             private_ns ? " in a private mount namespace" : "",
             rc == 0 ? "is writable (own value written back)" : "is not writable",
             un ? "unmounted" : "UNMOUNT FAILED");
}

static void check_release_agent(void) {
    if (!selected("escape.release_agent")) return;
    char buf[65536];
    int err;
    int tried = 0, last_err = 0;
    char first_denied[300] = "";
    if (read_file("/proc/self/mountinfo", buf, sizeof buf, &err) > 0) {
        char *save = NULL;
        for (char *line = strtok_r(buf, "\n", &save); line; line = strtok_r(NULL, "\n", &save)) {
            char root[1024], mnt[1024];
            char *sep = strstr(line, " - ");
            if (!sep || strncmp(sep + 3, "cgroup ", 7) != 0) continue;
            if (sscanf(line, "%*d %*d %*s %1023s %1023s", root, mnt) != 2) continue;
            if (strcmp(root, "/") != 0) continue; /* release_agent lives at a hierarchy's root */
            unescape_mount_path(mnt);
            char path[1100];
            snprintf(path, sizeof path, "%s/release_agent", mnt);
            if (access(path, F_OK) != 0) continue;
            tried++;
            if (release_agent_writeback(path, &err) == 0) {
                emit("escape.release_agent", ALLOWED, 0,
                     "%s is writable (its own value written back)", path);
                return;
            }
            last_err = err;
            if (!first_denied[0]) snprintf(first_denied, sizeof first_denied, "%.290s", path);
        }
    }
    if (!scratch[0]) {
        emit("escape.release_agent", tried ? FORBIDDEN : INCONCLUSIVE, last_err,
             "%d release_agent files, none writable; no scratch dir to try a cgroup v1 mount",
             tried);
        return;
    }
    char dir[4200];
    path_join(dir, sizeof dir, scratch, "cg");
    if (mkdir(dir, 0700) < 0) {
        emit("escape.release_agent", INCONCLUSIVE, errno, "mkdir %s failed", dir);
        return;
    }
    struct child_result r;
    int rc = in_child(child_mount_cgroup1, dir, 5000, &r);
    rmdir(dir);
    char prefix[400];
    snprintf(prefix, sizeof prefix, "%d mounted release_agent file(s) not writable (%s%s%s); ",
             tried, first_denied[0] ? first_denied : "none", last_err ? ": " : "",
             last_err ? errname(last_err) : "");
    if (rc < 0)
        emit("escape.release_agent", INCONCLUSIVE, r.err, "%s%s", prefix, r.detail);
    else if (r.err == 0)
        emit("escape.release_agent", ALLOWED, 0, "%s%s", prefix, r.detail);
    else if (denied(r.err) || r.extra)
        emit("escape.release_agent", FORBIDDEN, r.err, "%s%s", prefix, r.detail);
    else
        emit("escape.release_agent", INCONCLUSIVE, r.err, "%s%s", prefix, r.detail);
}

/* Is the file open on fd outside our root: its path, seen from here, does not lead to it? */
static int file_outside_root(int fd, const char *target) {
    struct stat st, there;
    if (fstat(fd, &st) < 0) return -1;
    if (!target[0] || strstr(target, " (deleted)")) return 1; /* no path here leads to it */
    return !(stat(target, &there) == 0 && there.st_dev == st.st_dev && there.st_ino == st.st_ino);
}

#ifndef F_SEAL_FUTURE_WRITE
#define F_SEAL_FUTURE_WRITE 0x0010
#endif

/* A memfd sealed against writing (runc's CVE-2019-5736 fix, and stockade's) opens for
 * writing like any file, but every write to it is refused with EPERM. */
static int write_sealed(const char *path) {
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
    if (fd < 0) return 0;
    int seals = fcntl(fd, F_GET_SEALS);
    close(fd);
    return seals > 0 && (seals & (F_SEAL_WRITE | F_SEAL_FUTURE_WRITE));
}

struct exe_watch {
    int seen;       /* new processes seen */
    int refused;    /* of those, the exe or the write-open refused */
    int err;        /* the refusal's errno */
    int inside;     /* exe inside our root (not a runtime binary) */
    int txtbsy;     /* still running at the deadline */
    char ok[400];   /* pid:exe reopened for writing */
    char why[300];  /* the first refusal */
};

/* The runc CVE-2019-5736 attack: a process entering the instance from outside (a
 * runtime's exec, made to run `#!/proc/self/exe`) is caught through /proc; its exe is
 * held with O_PATH, and once the process stops running it the fd is reopened for
 * writing through /proc/self/fd. Watches for `ms` milliseconds; never writes. */
static void watch_exe(long ms, struct exe_watch *w) {
    memset(w, 0, sizeof *w);
    long known[1024];
    int nknown = 0;
    pid_t self = getpid();
    DIR *d = opendir("/proc");
    if (!d) return;
    struct dirent *de;
    while ((de = readdir(d)) && nknown < 1024) { /* already there: not entering */
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (!*end && pid > 0) known[nknown++] = pid;
    }
    closedir(d);
    struct timespec t0, now;
    clock_gettime(CLOCK_MONOTONIC, &t0);
    long elapsed = 0;
    while (elapsed < ms && !w->ok[0]) {
        d = opendir("/proc");
        if (!d) return;
        while ((de = readdir(d)) && !w->ok[0]) {
            char *end;
            long pid = strtol(de->d_name, &end, 10);
            if (*end || pid <= 0 || pid == self) continue;
            int old = 0;
            for (int i = 0; i < nknown; i++) old |= known[i] == pid;
            if (old) continue;
            char path[64], target[256];
            snprintf(path, sizeof path, "/proc/%ld/exe", pid);
            int fd = open(path, O_PATH | O_CLOEXEC);
            if (fd < 0) {
                /* non-dumpable while the runtime sets up: try again after its exec */
                if (denied(errno) && !w->err) {
                    w->err = errno;
                    snprintf(w->why, sizeof w->why, "pid %ld: open %s O_PATH: %s", pid, path,
                             errname(errno));
                }
                continue;
            }
            ssize_t tl = readlink(path, target, sizeof target - 1);
            target[tl > 0 ? tl : 0] = 0;
            if (nknown < 1024) known[nknown++] = pid; /* once it is held, done with it */
            w->seen++;
            if (file_outside_root(fd, target) != 1) {
                w->inside++;
                close(fd);
                continue;
            }
            char again[64];
            snprintf(again, sizeof again, "/proc/self/fd/%d", fd);
            int e = ETXTBSY;
            long until = elapsed + 300;
            while (e == ETXTBSY && elapsed < until) { /* until the process stops running it */
                int wfd = open(again, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
                e = wfd < 0 ? errno : 0;
                if (wfd >= 0) close(wfd); /* nothing written */
                if (e == ETXTBSY) usleep(500);
                clock_gettime(CLOCK_MONOTONIC, &now);
                elapsed = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
            }
            /* Still text-busy: the binary runs elsewhere too (a runtime that stays, or
             * another user of it). The attacker keeps the fd and waits; whether the write
             * would then be let through is the permission check, asked without opening. */
            int busy_but_writable = 0, sealed = 0;
            if ((e == 0 || e == ETXTBSY) && write_sealed(again)) {
                e = EPERM;
                sealed = 1;
            }
            if (e == ETXTBSY) {
                if (faccessat(AT_FDCWD, again, W_OK, AT_EACCESS) == 0)
                    busy_but_writable = 1;
                else if (denied(errno))
                    e = errno;
            }
            close(fd);
            if (e == 0 || busy_but_writable) {
                snprintf(w->ok, sizeof w->ok, "pid %ld: %s%s", pid, target,
                         e == 0 ? " (opened for writing)"
                                : " (still running elsewhere: ETXTBSY; write access granted by "
                                  "faccessat, so writable once it stops)");
            } else if (e == ETXTBSY) {
                w->txtbsy++;
            } else {
                w->refused++;
                w->err = e;
                snprintf(w->why, sizeof w->why, "pid %ld: %s reopened for writing: %s%s", pid,
                         target, errname(e), sealed ? " (sealed against writes)" : "");
            }
        }
        closedir(d);
        usleep(200);
        clock_gettime(CLOCK_MONOTONIC, &now);
        elapsed = (now.tv_sec - t0.tv_sec) * 1000 + (now.tv_nsec - t0.tv_nsec) / 1000000;
    }
}

static void check_proc_exe(void) {
    if (!selected("escape.proc_exe_write")) return;
    if (opt.exe_watch_ms > 0) {
        struct exe_watch w;
        watch_exe(opt.exe_watch_ms, &w);
        if (w.ok[0]) {
            emit("escape.proc_exe_write", ALLOWED, 0,
                 "a binary from outside the root, run by a process entering the instance, is "
                 "held through /proc/PID/exe and writable through /proc/self/fd (closed, "
                 "nothing written): %s",
                 w.ok);
            return;
        }
        /* refused: held and its reopen refused, or a process entered whose exe could
         * never be held at all (non-dumpable, another user) */
        if (w.err && !w.txtbsy && (w.refused || w.seen == w.inside)) {
            emit("escape.proc_exe_write", FORBIDDEN, w.err,
                 "watched %ld ms: %d process(es) held, %d refused for writing, %d running the "
                 "instance's own binaries; %s",
                 opt.exe_watch_ms, w.seen, w.refused, w.inside, w.why);
            return;
        }
        emit("escape.proc_exe_write", INCONCLUSIVE, w.err,
             "watched %ld ms: %d process(es) entered, %d running the instance's own binaries, %d "
             "still running at the end, %d refused%s%s",
             opt.exe_watch_ms, w.seen, w.inside, w.txtbsy, w.refused, w.why[0] ? ": " : "", w.why);
        return;
    }
    DIR *d = opendir("/proc");
    if (!d) {
        emit("escape.proc_exe_write", INCONCLUSIVE, errno, "cannot list /proc");
        return;
    }
    int n_ok = 0, n_denied = 0, n_other = 0, n_txtbsy = 0;
    int first_err = 0;
    char ok[400] = "", other[200] = "";
    struct {
        dev_t dev;
        ino_t ino;
    } seen[512];
    int nseen = 0;
    pid_t self = getpid();
    struct dirent *de;
    while ((de = readdir(d))) {
        char *end;
        long pid = strtol(de->d_name, &end, 10);
        if (*end || pid <= 0 || pid == self) continue;
        char path[64], target[256];
        snprintf(path, sizeof path, "/proc/%ld/exe", pid);
        /* each binary once: keeps the write-open window per file minimal */
        struct stat st;
        if (stat(path, &st) == 0) {
            int dup = 0;
            for (int i = 0; i < nseen; i++)
                dup |= seen[i].dev == st.st_dev && seen[i].ino == st.st_ino;
            if (dup) continue;
            if (nseen < 512) {
                seen[nseen].dev = st.st_dev;
                seen[nseen].ino = st.st_ino;
                nseen++;
            }
        }
        /* open, then close at once: never written */
        int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOCTTY | O_NONBLOCK);
        int e = fd < 0 ? errno : 0;
        if (fd >= 0) close(fd);
        ssize_t tl = readlink(path, target, sizeof target - 1);
        target[tl > 0 ? tl : 0] = 0;
        if (fd >= 0) {
            n_ok++;
            size_t len = strlen(ok);
            snprintf(ok + len, sizeof ok - len, "%s%ld:%s", len ? "," : "", pid, target);
        } else if (e == ETXTBSY || denied(e)) {
            n_denied++;
            if (e == ETXTBSY) n_txtbsy++;
            if (!first_err || e == ETXTBSY) first_err = e;
        } else if (e != ENOENT && e != ESRCH) {
            n_other++;
            size_t len = strlen(other);
            snprintf(other + len, sizeof other - len, "%s%ld:%s", len ? "," : "", pid, errname(e));
        }
    }
    closedir(d);
    if (n_ok)
        emit("escape.proc_exe_write", ALLOWED, 0,
             "%d executable(s) of other processes open for writing (closed, nothing written): %s",
             n_ok, ok);
    else if (n_denied)
        emit("escape.proc_exe_write", FORBIDDEN, first_err,
             "%d executable(s) of other processes refused for writing (%d ETXTBSY, %d "
             "EPERM/EACCES/EROFS)%s%s",
             n_denied, n_txtbsy, n_denied - n_txtbsy, n_other ? "; other errors: " : "", other);
    else
        emit("escape.proc_exe_write", INCONCLUSIVE, 0, "no other process's executable to try%s%s",
             n_other ? "; errors: " : "", other);
}

struct leaked {
    int fd;
    char target[300];
    int outside; /* 1 outside the root, 0 inside, -1 not a file or cannot tell */
};
static struct leaked leaked_fds[64];
static int n_leaked;

/* Is the directory open on fd outside our root? Walking ".." stops at our
 * root for anything beneath it, so a top that is not "/" lies outside. */
static int dir_outside_root(int fd) {
    struct stat root, cur, up;
    if (stat("/", &root) < 0) return -1;
    int d = dup(fd);
    if (d < 0) return -1;
    for (int i = 0; i < 4096; i++) {
        if (fstat(d, &cur) < 0) break;
        if (cur.st_dev == root.st_dev && cur.st_ino == root.st_ino) {
            close(d);
            return 0;
        }
        int u = openat(d, "..", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
        if (u < 0) break;
        if (fstat(u, &up) < 0) {
            close(u);
            break;
        }
        close(d);
        d = u;
        if (up.st_dev == cur.st_dev && up.st_ino == cur.st_ino) {
            close(d);
            return 1; /* reached a top that is not our root */
        }
    }
    close(d);
    return -1;
}

/* Runs first, before the probe opens anything of its own. */
static void scan_inherited_fds(void) {
    int maxfd = 1024;
    for (int fd = 3; fd < maxfd && n_leaked < 64; fd++) {
        if (fcntl(fd, F_GETFD) < 0) continue;
        struct leaked *l = &leaked_fds[n_leaked++];
        l->fd = fd;
        l->outside = -1;
        char link[64];
        snprintf(link, sizeof link, "/proc/self/fd/%d", fd);
        ssize_t n = readlink(link, l->target, sizeof l->target - 1);
        l->target[n > 0 ? n : 0] = 0;
        struct stat st;
        if (fstat(fd, &st) < 0) continue;
        if (S_ISDIR(st.st_mode)) {
            l->outside = dir_outside_root(fd);
            if (!l->target[0]) strcpy(l->target, "(directory)");
        } else if (S_ISREG(st.st_mode) || S_ISCHR(st.st_mode) || S_ISBLK(st.st_mode)) {
            struct stat there;
            if (!l->target[0] || strstr(l->target, " (deleted)"))
                l->outside = -1;
            else
                l->outside = !(stat(l->target, &there) == 0 && there.st_dev == st.st_dev &&
                               there.st_ino == st.st_ino);
        }
    }
}

static void check_leaked_fds(void) {
    if (!selected("escape.leaked_fds")) return;
    char list[DETAIL_MAX - 100] = "";
    int n_out = 0;
    for (int i = 0; i < n_leaked; i++) {
        size_t len = strlen(list);
        const char *where = leaked_fds[i].outside == 1   ? "OUTSIDE root"
                            : leaked_fds[i].outside == 0 ? "inside root"
                                                         : "not a file";
        snprintf(list + len, sizeof list - len, "%sfd %d -> %s (%s)", len ? "; " : "",
                 leaked_fds[i].fd, leaked_fds[i].target[0] ? leaked_fds[i].target : "?", where);
        n_out += leaked_fds[i].outside == 1;
    }
    if (n_out)
        emit("escape.leaked_fds", ALLOWED, 0, "%d inherited fd(s) reach outside the root: %s",
             n_out, list);
    else
        emit("escape.leaked_fds", FORBIDDEN, 0, "no inherited fd reaches outside the root%s%s",
             n_leaked ? ": " : " (none beyond 0-2)", list);
}

static void check_open_by_handle(void) {
    if (!selected("escape.open_by_handle_at")) return;
    struct {
        struct file_handle fh;
        unsigned char data[128];
    } h;
    memset(&h, 0, sizeof h);
    h.fh.handle_bytes = sizeof h.data;
    int mount_id;
    const char *how;
    if (name_to_handle_at(AT_FDCWD, "/", &h.fh, &mount_id, 0) == 0) {
        how = "a handle of / from name_to_handle_at";
    } else {
        /* e.g. overlayfs without nfs_export: the permission check comes before
         * the handle is decoded, so a made-up handle still tells */
        h.fh.handle_bytes = 8;
        h.fh.handle_type = 1; /* FILEID_INO32_GEN */
        uint32_t ino_gen[2] = {2, 0};
        memcpy(h.fh.f_handle, ino_gen, sizeof ino_gen);
        how = "a made-up handle (name_to_handle_at on / failed)";
    }
    int mfd = open("/", O_RDONLY | O_DIRECTORY | O_CLOEXEC);
    if (mfd < 0) {
        emit("escape.open_by_handle_at", INCONCLUSIVE, errno, "cannot open /");
        return;
    }
    int fd = open_by_handle_at(mfd, &h.fh, O_RDONLY | O_CLOEXEC);
    int e = fd < 0 ? errno : 0;
    if (fd >= 0) close(fd);
    /* The "shocker" handle: inode 2 is the root of ext2/3/4 file systems;
     * if the instance's root is a subtree of one, this opens its real root. */
    char shocker[160] = "";
    if (e != EPERM && e != EACCES) {
        struct {
            struct file_handle fh;
            uint32_t data[2];
        } s;
        s.fh.handle_bytes = 8;
        s.fh.handle_type = 1;
        s.data[0] = 2;
        s.data[1] = 0;
        int sfd = open_by_handle_at(mfd, &s.fh, O_RDONLY | O_CLOEXEC);
        if (sfd >= 0) {
            struct stat a, b;
            int out = fstat(sfd, &a) == 0 && stat("/", &b) == 0 &&
                      (a.st_dev != b.st_dev || a.st_ino != b.st_ino);
            snprintf(shocker, sizeof shocker, "; inode-2 handle opened %s",
                     out ? "a directory OUTSIDE the root" : "the root itself");
            close(sfd);
        } else {
            snprintf(shocker, sizeof shocker, "; inode-2 handle: %s", errname(errno));
        }
    }
    close(mfd);
    static const int passed[] = {ESTALE, EINVAL, ENOENT, EOPNOTSUPP, 0};
    emit("escape.open_by_handle_at", classify(e, passed), e, "open_by_handle_at with %s %s%s",
         how, fd >= 0 ? "succeeded (closed)" : "failed", shocker);
}

/* ---------------------------------------------------------------- facts */

static void status_fact(const char *status, const char *key, const char *name) {
    const char *p = strstr(status, key);
    if (!p) return;
    p += strlen(key);
    while (*p == ' ' || *p == '\t') p++;
    char value[256];
    size_t n = strcspn(p, "\n");
    if (n >= sizeof value) n = sizeof value - 1;
    memcpy(value, p, n);
    value[n] = 0;
    for (char *c = value; *c; c++)
        if (*c == '\t') *c = ' ';
    fact(name, "%s", value);
}

static void report_facts(void) {
    char buf[16384];
    int err;
    fact("probe_version", PROBE_VERSION);
    fact("pid", "%d", (int)getpid());
    fact("ppid", "%d", (int)getppid());
    fact("uid", "%d", (int)getuid());
    fact("gid", "%d", (int)getgid());
    struct utsname u;
    if (uname(&u) == 0) {
        fact("hostname", "%s", u.nodename);
        fact("kernel", "%s %s", u.sysname, u.release);
    }
    if (read_file("/proc/self/status", buf, sizeof buf, &err) > 0) {
        status_fact(buf, "\nNSpid:", "nspid");
        status_fact(buf, "\nCapInh:", "cap_inh");
        status_fact(buf, "\nCapPrm:", "cap_prm");
        status_fact(buf, "\nCapEff:", "cap_eff");
        status_fact(buf, "\nCapBnd:", "cap_bnd");
        status_fact(buf, "\nCapAmb:", "cap_amb");
        status_fact(buf, "\nNoNewPrivs:", "no_new_privs");
        status_fact(buf, "\nSeccomp:", "seccomp");
        status_fact(buf, "\nSeccomp_filters:", "seccomp_filters");
    } else {
        fact("proc_status", "unreadable: %s", errname(err));
    }
    /* From prctl too, for when /proc is absent. */
    fact("no_new_privs_prctl", "%d", prctl(PR_GET_NO_NEW_PRIVS, 0, 0, 0, 0));
    fact("seccomp_prctl", "%d", prctl(PR_GET_SECCOMP, 0, 0, 0, 0));
    static const char *ns[] = {"pid", "net", "mnt", "uts", "ipc", "user", "cgroup", "time", NULL};
    for (const char **p = ns; *p; p++) {
        char path[64], target[128], name[32];
        snprintf(path, sizeof path, "/proc/self/ns/%s", *p);
        snprintf(name, sizeof name, "ns_%s", *p);
        ssize_t n = readlink(path, target, sizeof target - 1);
        if (n > 0) {
            target[n] = 0;
            fact(name, "%s", target);
        }
    }
    if (read_file("/proc/self/uid_map", buf, sizeof buf, &err) > 0) {
        chomp(buf);
        fact("uid_map", "%s", buf);
    }
    if (read_file("/proc/self/cgroup", buf, sizeof buf, &err) > 0) {
        chomp(buf);
        fact("cgroup", "%s", buf);
    }
    DIR *d = opendir("/proc");
    if (d) {
        int n = 0;
        struct dirent *de;
        while ((de = readdir(d))) {
            char *end;
            strtol(de->d_name, &end, 10);
            n += *end == 0 && isdigit((unsigned char)de->d_name[0]);
        }
        closedir(d);
        fact("processes_visible", "%d", n);
    } else {
        fact("processes_visible", "unknown: /proc not readable");
    }
    struct stat st;
    if (stat("/", &st) == 0)
        fact("root_dev_ino", "%u:%u %lu", major(st.st_dev), minor(st.st_dev),
             (unsigned long)st.st_ino);
    fact("scratch", "%s", scratch[0] ? scratch : "");
}

/* ---------------------------------------------------------------- main */

static void make_scratch(void) {
    const char *bases[] = {opt.scratch_base, "/tmp", "/var/tmp", "/dev/shm", "/run", "/", NULL};
    for (size_t i = 0; i < sizeof bases / sizeof bases[0] - 1; i++) {
        if (!bases[i]) continue;
        snprintf(scratch, sizeof scratch, "%s%sstockade-probe-XXXXXX", bases[i],
                 bases[i][strlen(bases[i]) - 1] == '/' ? "" : "/");
        if (mkdtemp(scratch)) return;
    }
    scratch[0] = 0;
}

static void usage(void) {
    fprintf(stderr,
            "usage: probe [--host-pid PID] [--host-port PORT] [--host-abstract NAME]\n"
            "             [--host-keyring ID] [--host-token TOKEN] [--host-iface NAME[=MAC]]...\n"
            "             [--scratch DIR] [--flags-dir DIR]... [--only CHECK]... [--exe-watch MS]\n"
            "             [--connect ADDR:PORT]... [--connect-timeout MS]\n"
            "             [--serve PORT [--serve-token TOKEN]] [--list]\n");
    exit(2);
}

int main(int argc, char **argv) {
    /* inherited fds first: anything opened later would pollute the list */
    scan_inherited_fds();
    for (int i = 1; i < argc; i++) {
        const char *a = argv[i];
        const char *v = i + 1 < argc ? argv[i + 1] : NULL;
        if (strcmp(a, "--list") == 0) {
            for (const char **c = all_checks; *c; c++) puts(*c);
            return 0;
        }
        if (!v) usage();
        i++;
        if (strcmp(a, "--host-pid") == 0)
            opt.host_pid = atol(v);
        else if (strcmp(a, "--host-port") == 0)
            opt.host_port = atol(v);
        else if (strcmp(a, "--host-abstract") == 0)
            opt.host_abstract = v;
        else if (strcmp(a, "--host-keyring") == 0) {
            opt.host_keyring = atol(v);
            opt.have_host_keyring = 1;
        } else if (strcmp(a, "--host-token") == 0)
            opt.host_token = v;
        else if (strcmp(a, "--host-iface") == 0 && opt.n_host_ifaces < MAX_IFACES)
            opt.host_ifaces[opt.n_host_ifaces++] = v;
        else if (strcmp(a, "--scratch") == 0)
            opt.scratch_base = v;
        else if (strcmp(a, "--flags-dir") == 0 && opt.n_flag_dirs < MAX_FLAG_DIRS)
            opt.flag_dirs[opt.n_flag_dirs++] = v;
        else if (strcmp(a, "--exe-watch") == 0)
            opt.exe_watch_ms = atol(v);
        else if (strcmp(a, "--only") == 0 && opt.n_only < 32)
            opt.only[opt.n_only++] = v;
        else if (strcmp(a, "--connect") == 0 && opt.n_connects < MAX_CONNECTS)
            opt.connects[opt.n_connects++] = v;
        else if (strcmp(a, "--connect-timeout") == 0)
            opt.connect_timeout_ms = atol(v);
        else if (strcmp(a, "--serve") == 0)
            opt.serve_port = atol(v);
        else if (strcmp(a, "--serve-token") == 0)
            opt.serve_token = v;
        else
            usage();
    }
    signal(SIGPIPE, SIG_IGN);
    umask(077);
    if (opt.serve_port > 0) return serve();
    make_scratch();
    report_facts();
    report_ifaces();

    check_kmod();
    check_kernel_modify();
    check_mount();
    check_mknod();
    check_raw_sockets();
    check_net_admin();
    check_sysctl();
    check_chflags();
    check_foreign_network();
    check_host_processes();
    check_ptrace();
    check_keyring();
    check_misc();
    check_release_agent();
    check_proc_exe();
    check_leaked_fds();
    check_open_by_handle();
    if (opt.n_connects) run_connects();

    if (scratch[0] && rmdir(scratch) < 0)
        fact("scratch_left", "%s: %s", scratch, errname(errno));
    fact("checks_run", "%d", checks_run);
    return 0;
}
