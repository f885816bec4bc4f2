"""The native side of the mm probes: a small C interpreter that runs a probe script
against the running kernel, one forked process per probe.

tests/test_mm_probes.py runs the same script through mm's API and compares the two
outputs line by line. The interpreter knows nothing about any probe: every probe
is data (tests/test_mm_probes.py PROBES), so both sides execute exactly the same
operations.

Script format (one operation per line, `#` starts a comment):

    probe NAME priv|unpriv [MEMLOCK_LIMIT_BYTES]
    map R ADDR LEN PROT FLAGS        mmap(ADDR, ...) anonymous; binds R to the result
    mapf R ADDR LEN PROT FLAGS PATH OFF   mmap of PATH opened O_RDONLY
    munmap ADDR LEN | mprotect ADDR LEN PROT | madvise ADDR LEN ADVICE
    mremap R ADDR OLDLEN NEWLEN FLAGS [NEWADDR]   binds R to the result
    mlock ADDR LEN | munlock ADDR LEN | mlock2 ADDR LEN FLAGS
    mlockall FLAGS | munlockall
    read ADDR | write ADDR BYTE      a user access: ok[:byte], SIGSEGV or SIGBUS
    smaps ADDR FIELD                 the field (kB) of the VMA containing ADDR
    vmflags ADDR                     its VmFlags
    vma ADDR                         its bounds relative to ADDR, and its perms
    maps ADDR                        the rest of its header: offset dev inode [path]
    vmlck                            VmLck of the process (kB)
    fork ... endfork                 run the enclosed operations in a child, whose
                                     lines are numbered on as PROBE/c.N
    end                              end of the probe

ADDR is a number, a register name, or NAME+NUM / NAME-NUM (`noreg` when the
register was never bound, e.g. after a failed mmap). Each operation prints
`PROBE.N OP = RESULT`, where RESULT is `ok`, `-ERRNO` (the errno's number), or the
value. mmap/mremap print `ok` when the result is the address asked for (MAP_FIXED,
MREMAP_FIXED, or an unchanged mremap address) and `ok@other` otherwise.

An `unpriv` probe runs with RLIMIT_MEMLOCK set to the limit and, when started as
root, after setuid(nobody), which drops CAP_IPC_LOCK.
"""

from __future__ import annotations

import os
import shutil
import subprocess
from pathlib import Path

import pytest

NATIVE_SOURCE = r"""
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <setjmp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

#define MAXOPS 4096
#define MAXREGS 64

static char script[1 << 20];
static char *ops[MAXOPS];
static int nops;
static char probe_name[128];
static int op_index;
static char regname[MAXREGS][32];
static unsigned long regval[MAXREGS];
static int nregs;
static char procbuf[1 << 20];
static sigjmp_buf jb;
static volatile int in_access;

static void out(const char *fmt, ...) {
    char buf[4096];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(buf, sizeof buf, fmt, ap);
    va_end(ap);
    if (n > (int)sizeof buf - 1) n = sizeof buf - 1;
    int off = 0;
    while (off < n) { int w = write(1, buf + off, n - off); if (w <= 0) _exit(3); off += w; }
}

static void on_signal(int sig) { if (in_access) siglongjmp(jb, sig); _exit(100 + sig); }

static void setreg(const char *name, unsigned long v) {
    for (int i = 0; i < nregs; i++) if (!strcmp(regname[i], name)) { regval[i] = v; return; }
    if (nregs < MAXREGS) { snprintf(regname[nregs], 32, "%s", name); regval[nregs++] = v; }
}

static int noreg;

static unsigned long eval(const char *s) {
    char name[64]; int i = 0;
    if ((s[0] >= '0' && s[0] <= '9')) return strtoul(s, NULL, 0);
    while (s[i] && s[i] != '+' && s[i] != '-' && i < 63) { name[i] = s[i]; i++; }
    name[i] = 0;
    unsigned long base = 0; int found = 0;
    for (int r = 0; r < nregs; r++) if (!strcmp(regname[r], name)) { base = regval[r]; found = 1; }
    if (!found) noreg = 1;
    if (s[i] == '+') return base + strtoul(s + i + 1, NULL, 0);
    if (s[i] == '-') return base - strtoul(s + i + 1, NULL, 0);
    return base;
}

static int read_proc(const char *path) {
    int fd = open(path, O_RDONLY);
    if (fd < 0) return -1;
    int n = 0, r;
    while ((r = read(fd, procbuf + n, sizeof procbuf - 1 - n)) > 0) n += r;
    close(fd);
    procbuf[n] = 0;
    return n;
}

static char header_rest[1024];      /* offset dev inode [path] of the last block found */

/* Find the smaps block of the VMA containing addr; returns its start in procbuf. */
static char *smaps_block(unsigned long addr, unsigned long *s, unsigned long *e, char *perms) {
    if (read_proc("/proc/self/smaps") < 0) return NULL;
    char *p = procbuf;
    while (*p) {
        char *nl = strchr(p, '\n');
        unsigned long a, b; char pr[8], off[32], dev[32], ino[32];
        int used = 0;
        if (sscanf(p, "%lx-%lx %4s %31s %31s %31s %n", &a, &b, pr, off, dev, ino, &used) >= 6
                && strchr(p, '-') < p + 17 && p[0] != 'V') {
            if (a <= addr && addr < b) {
                *s = a; *e = b; strcpy(perms, pr);
                if (nl && p + used > nl) used = (int)(nl - p);   /* no path: stop at the line's end */
                size_t n = nl ? (size_t)(nl - (p + used)) : strlen(p + used);
                char path[900];
                if (n > sizeof path - 1) n = sizeof path - 1;
                memcpy(path, p + used, n); path[n] = 0;
                snprintf(header_rest, sizeof header_rest, "%s %s %s%s%s", off, dev, ino,
                         n ? " " : "", path);
                return nl ? nl + 1 : p;
            }
        }
        if (!nl) break;
        p = nl + 1;
    }
    return NULL;
}

static const char *field_in_block(char *blk, const char *field) {
    static char val[512];
    size_t fl = strlen(field);
    char *p = blk;
    while (p && *p) {
        char *nl = strchr(p, '\n');
        unsigned long a, b;
        if (sscanf(p, "%lx-%lx", &a, &b) == 2 && strchr(p, '-') < p + 17 && p[0] != 'V') break;
        if (!strncmp(p, field, fl) && p[fl] == ':') {
            char *v = p + fl + 1;
            while (*v == ' ' || *v == '\t') v++;
            size_t n = nl ? (size_t)(nl - v) : strlen(v);
            if (n > sizeof val - 1) n = sizeof val - 1;
            memcpy(val, v, n); val[n] = 0;
            while (n && (val[n - 1] == ' ')) val[--n] = 0;
            if (n > 3 && !strcmp(val + n - 3, " kB")) { val[n - 3] = 0; n -= 3; while (n && val[n - 1] == ' ') val[--n] = 0; }
            return val;
        }
        p = nl ? nl + 1 : NULL;
    }
    return "nofield";
}

static const char *access_mem(unsigned long addr, int wr, int val) {
    static char res[32];
    int sig;
    in_access = 1;
    if ((sig = sigsetjmp(jb, 1)) != 0) {
        in_access = 0;
        snprintf(res, sizeof res, "%s", sig == SIGSEGV ? "SIGSEGV" : sig == SIGBUS ? "SIGBUS" : "SIG?");
        return res;
    }
    if (wr) { *(volatile unsigned char *)addr = (unsigned char)val; in_access = 0; return "ok"; }
    unsigned char b = *(volatile unsigned char *)addr;
    in_access = 0;
    snprintf(res, sizeof res, "ok:%u", b);
    return res;
}

static void result_addr(const char *reg, long r, unsigned long want) {
    if (r == -1) { out("-%d\n", errno); return; }
    setreg(reg, (unsigned long)r);
    out((unsigned long)r == want ? "ok\n" : "ok@other\n");
}

static void result_int(long r) { if (r == -1) out("-%d\n", errno); else out("%ld\n", r); }

static int run_ops(int from, int child);

static int run_op(int i) {
    char line[512], *t[10];
    int n = 0;
    snprintf(line, sizeof line, "%s", ops[i]);
    for (char *tok = strtok(line, " \t"); tok && n < 10; tok = strtok(NULL, " \t")) t[n++] = tok;
    if (!strcmp(t[0], "fork")) {
        int depth = 0, j;
        for (j = i + 1; j < nops; j++) {
            if (!strncmp(ops[j], "fork", 4) && (ops[j][4] == 0 || ops[j][4] == ' ')) depth++;
            if (!strcmp(ops[j], "endfork")) { if (!depth) break; depth--; }
        }
        out("%s.%d %s = ", probe_name, op_index++, ops[i]);
        pid_t pid = fork();
        if (pid < 0) { out("-%d\n", errno); return j; }
        if (pid == 0) {
            out("ok\n");
            strcat(probe_name, "/c");           /* the child's lines: PROBE/c.N */
            run_ops(i + 1, 1);
            _exit(0);
        }
        int st; waitpid(pid, &st, 0);
        /* the child printed its own lines; the parent continues after endfork */
        return j;
    }
    out("%s.%d %s = ", probe_name, op_index++, ops[i]);
    /* Evaluate every address/number operand first: an unbound register skips the op. */
    static const struct { const char *op; int first, last; } operands[] = {
        {"map", 2, 5}, {"mapf", 2, 5}, {"munmap", 1, 2}, {"mprotect", 1, 3}, {"madvise", 1, 3},
        {"mremap", 2, 6}, {"mlock", 1, 2}, {"munlock", 1, 2}, {"mlock2", 1, 3}, {"mlockall", 1, 1},
        {"read", 1, 1}, {"write", 1, 2}, {"smaps", 1, 1}, {"vmflags", 1, 1}, {"vma", 1, 1},
        {"maps", 1, 1},
    };
    noreg = 0;
    for (size_t o = 0; o < sizeof operands / sizeof operands[0]; o++)
        if (!strcmp(t[0], operands[o].op))
            for (int k = operands[o].first; k <= operands[o].last && k < n; k++) eval(t[k]);
    if (noreg) { out("noreg\n"); return i; }
    errno = 0;
    if (!strcmp(t[0], "map") && n == 6) {
        unsigned long want = eval(t[2]);
        void *r = mmap((void *)want, eval(t[3]), (int)eval(t[4]), (int)eval(t[5]), -1, 0);
        result_addr(t[1], r == MAP_FAILED ? -1 : (long)r, want);
    } else if (!strcmp(t[0], "mapf") && n == 8) {
        unsigned long want = eval(t[2]);
        int fd = open(t[6], O_RDONLY);
        if (fd < 0) { out("open-failed\n"); return i; }
        void *r = mmap((void *)want, eval(t[3]), (int)eval(t[4]), (int)eval(t[5]), fd, eval(t[7]));
        int e = errno;
        close(fd);
        errno = e;
        result_addr(t[1], r == MAP_FAILED ? -1 : (long)r, want);
    } else if (!strcmp(t[0], "munmap") && n == 3) {
        result_int(munmap((void *)eval(t[1]), eval(t[2])));
    } else if (!strcmp(t[0], "mprotect") && n == 4) {
        result_int(mprotect((void *)eval(t[1]), eval(t[2]), (int)eval(t[3])));
    } else if (!strcmp(t[0], "madvise") && n == 4) {
        result_int(madvise((void *)eval(t[1]), eval(t[2]), (int)eval(t[3])));
    } else if (!strcmp(t[0], "mremap") && (n == 6 || n == 7)) {
        unsigned long old = eval(t[2]), na = n == 7 ? eval(t[6]) : 0;
        int fl = (int)eval(t[5]);
        void *r = mremap((void *)old, eval(t[3]), eval(t[4]), fl, (void *)na);
        result_addr(t[1], r == MAP_FAILED ? -1 : (long)r, (fl & MREMAP_FIXED) ? na : old);
    } else if (!strcmp(t[0], "mlock") && n == 3) {
        result_int(mlock((void *)eval(t[1]), eval(t[2])));
    } else if (!strcmp(t[0], "munlock") && n == 3) {
        result_int(munlock((void *)eval(t[1]), eval(t[2])));
    } else if (!strcmp(t[0], "mlock2") && n == 4) {
        result_int(mlock2((void *)eval(t[1]), eval(t[2]), (unsigned)eval(t[3])));
    } else if (!strcmp(t[0], "mlockall") && n == 2) {
        result_int(mlockall((int)eval(t[1])));
    } else if (!strcmp(t[0], "munlockall") && n == 1) {
        result_int(munlockall());
    } else if (!strcmp(t[0], "read") && n == 2) {
        out("%s\n", access_mem(eval(t[1]), 0, 0));
    } else if (!strcmp(t[0], "write") && n == 3) {
        out("%s\n", access_mem(eval(t[1]), 1, (int)eval(t[2])));
    } else if ((!strcmp(t[0], "smaps") && n == 3) || (!strcmp(t[0], "vmflags") && n == 2)
               || (!strcmp(t[0], "vma") && n == 2) || (!strcmp(t[0], "maps") && n == 2)) {
        unsigned long s, e, a = eval(t[1]); char perms[8];
        char *blk = smaps_block(a, &s, &e, perms);
        if (!blk) out("novma\n");
        else if (t[0][0] == 's') out("%s\n", field_in_block(blk, t[2]));
        else if (!strcmp(t[0], "vmflags")) out("%s\n", field_in_block(blk, "VmFlags"));
        else if (!strcmp(t[0], "maps")) out("%s\n", header_rest);
        else out("-%#lx +%#lx %s\n", a - s, e - a, perms);
    } else if (!strcmp(t[0], "vmlck") && n == 1) {
        if (read_proc("/proc/self/status") < 0) { out("noproc\n"); return i; }
        char *p = strstr(procbuf, "VmLck:");
        out("%ld\n", p ? strtol(p + 6, NULL, 10) : -1L);
    } else {
        out("bad-op\n");
    }
    return i;
}

static int run_ops(int from, int child) {
    for (int i = from; i < nops; i++) {
        if (!strcmp(ops[i], "endfork")) { if (child) return i; continue; }
        i = run_op(i);
    }
    return nops;
}

int main(void) {
    int n = 0, r;
    while ((r = read(0, script + n, sizeof script - 1 - n)) > 0) n += r;
    script[n] = 0;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_signal;
    sa.sa_flags = SA_NODEFER;
    sigaction(SIGSEGV, &sa, NULL);
    sigaction(SIGBUS, &sa, NULL);
    char *p = script;
    while (p && *p) {
        char *nl = strchr(p, '\n');
        if (nl) *nl = 0;
        char *hash = strchr(p, '#');
        if (hash) *hash = 0;
        while (*p == ' ' || *p == '\t') p++;
        size_t len = strlen(p);
        while (len && (p[len - 1] == ' ' || p[len - 1] == '\t' || p[len - 1] == '\r')) p[--len] = 0;
        if (len && nops < MAXOPS) ops[nops++] = p;
        p = nl ? nl + 1 : NULL;
    }
    for (int i = 0; i < nops; i++) {
        char kind[16] = ""; unsigned long limit = 0;
        if (sscanf(ops[i], "probe %127s %15s %lu", probe_name, kind, &limit) < 2) continue;
        int end = i + 1;
        while (end < nops && strcmp(ops[end], "end")) end++;
        pid_t pid = fork();
        if (pid == 0) {
            if (!strcmp(kind, "unpriv")) {
                struct rlimit rl = {limit, limit};
                if (setrlimit(RLIMIT_MEMLOCK, &rl)) { out("%s.setup = -%d\n", probe_name, errno); _exit(2); }
                if (geteuid() == 0 && (setgid(65534) || setuid(65534))) { out("%s.setup = -%d\n", probe_name, errno); _exit(2); }
            }
            nops = end;
            op_index = 0;
            nregs = 0;
            run_ops(i + 1, 0);
            _exit(0);
        }
        int st;
        waitpid(pid, &st, 0);
        if (!WIFEXITED(st) || WEXITSTATUS(st)) out("%s.exit = %d\n", probe_name, st);
        i = end;
    }
    return 0;
}
"""


def build_native(directory: Path) -> Path:
    """Compile the interpreter with gcc; skips the calling test when gcc is missing."""
    gcc = shutil.which("gcc")
    if gcc is None:
        pytest.skip("gcc is not installed: the native side of the mm probes cannot be built")
    src = directory / "mm_probe.c"
    src.write_text(NATIVE_SOURCE)
    exe = directory / "mm_probe"
    proc = subprocess.run([gcc, "-O1", "-Wall", "-o", str(exe), str(src)],
                          capture_output=True, text=True)
    if proc.returncode != 0:
        raise AssertionError(f"gcc failed:\n{proc.stderr}")
    return exe


def run_native(exe: Path, script: str) -> list[str]:
    proc = subprocess.run([str(exe)], input=script, capture_output=True, text=True, timeout=120)
    assert proc.returncode == 0, proc.stderr
    return proc.stdout.splitlines()


def kernel_release() -> tuple[int, int]:
    rel = os.uname().release.split("-")[0].split(".")
    return int(rel[0]), int(rel[1])


def test_native_interpreter_reports_faults_and_errnos(tmp_path):
    """The interpreter itself: a fixed mapping, a user read of a never-touched
    page (zero), a write to a read-only page (SIGSEGV), a read past the end of a
    file mapping's last page (SIGBUS), and an errno."""
    exe = build_native(tmp_path)
    f = tmp_path / "one-byte"
    f.write_bytes(b"x")
    script = f"""
probe self priv
map A 0x100000000000 8192 1 0x100022
read A
write A 1
mapf F 0x100000100000 8192 1 0x100002 {f} 0
read F
read F+4096
munmap A+1 4096
end
"""
    lines = run_native(exe, script)
    assert lines == [
        "self.0 map A 0x100000000000 8192 1 0x100022 = ok",
        "self.1 read A = ok:0",
        "self.2 write A 1 = SIGSEGV",
        f"self.3 mapf F 0x100000100000 8192 1 0x100002 {f} 0 = ok",
        "self.4 read F = ok:120",
        "self.5 read F+4096 = SIGBUS",
        "self.6 munmap A+1 4096 = -22",
    ]
