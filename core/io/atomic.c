/* core/io/atomic.c: tmp file + fsync + rename + fsync(dir). See hyb/atomic.h. */
#include "hyb/atomic.h"

#include <dirent.h>
#include <errno.h>
#include <fcntl.h>
#include <signal.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

struct hyb_atomic_file {
    int fd;
    uint64_t size;
    char *path; /* target */
    char *tmp;  /* temporary file beside it */
};

static atomic_uint g_tmp_counter;

/* Directory part of path ("." when none) into buf. */
static void dir_of(const char *path, char *buf, size_t n) {
    const char *slash = strrchr(path, '/');
    if (!slash) {
        snprintf(buf, n, ".");
    } else if (slash == path) {
        snprintf(buf, n, "/");
    } else {
        size_t len = (size_t)(slash - path);
        if (len >= n) len = n - 1;
        memcpy(buf, path, len);
        buf[len] = 0;
    }
}

static int fsync_dir(const char *path) {
    char dir[4096];
    dir_of(path, dir, sizeof dir);
    int fd = open(dir, O_RDONLY | O_DIRECTORY);
    if (fd < 0)
        return hyb_error_set(HYB_ERR_IO, "%s: cannot open directory for fsync: %s", dir,
                             strerror(errno));
    int rc = fsync(fd);
    int e = errno;
    close(fd);
    /* Some file systems do not support fsync on directories (EINVAL); the rename is done. */
    if (rc != 0 && e != EINVAL && e != EROFS)
        return hyb_error_set(HYB_ERR_IO, "%s: fsync of directory failed: %s", dir, strerror(e));
    return HYB_OK;
}

/* The pid in a temporary's name "<target>.tmp.<pid>.<n>", or -1 when name is not one. */
static long tmp_pid(const char *name) {
    const char *t = NULL;
    for (const char *p = strstr(name, ".tmp."); p; p = strstr(p + 1, ".tmp."))
        t = p;
    if (!t || t == name) return -1;
    const char *p = t + 5, *d1 = p;
    while (*p >= '0' && *p <= '9')
        p++;
    if (p == d1 || p - d1 > 9 || *p != '.') return -1;
    const char *d2 = ++p;
    while (*p >= '0' && *p <= '9')
        p++;
    if (p == d2 || *p) return -1;
    return strtol(d1, NULL, 10);
}

int hyb_atomic_clean_stale(const char *dir) {
    if (!dir || !*dir) dir = ".";
    DIR *d = opendir(dir);
    if (!d) return hyb_error_set(HYB_ERR_IO, "%s: cannot list: %s", dir, strerror(errno));
    const long me = (long)getpid();
    int removed = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        long pid = tmp_pid(e->d_name);
        if (pid <= 0 || pid == me) continue;
        /* only a process that no longer exists: a live one may be writing it right now */
        if (kill((pid_t)pid, 0) == 0 || errno != ESRCH) continue;
        struct stat sb;
        if (fstatat(dirfd(d), e->d_name, &sb, AT_SYMLINK_NOFOLLOW) != 0 || !S_ISREG(sb.st_mode))
            continue;
        if (unlinkat(dirfd(d), e->d_name, 0) == 0) {
            removed++;
            hyb_log(HYB_LOG_INFO, "%s/%s: removed a stale temporary file of process %ld (gone)",
                    dir, e->d_name, pid);
        }
    }
    closedir(d);
    return removed;
}

int hyb_atomic_open(const char *path, hyb_atomic_file **out) {
    *out = NULL;
    if (!path || !*path) return hyb_error_set(HYB_ERR_ARG, "hyb_atomic_open: empty path");
    {   /* a save in a directory first removes what killed writers left there (best effort) */
        char dir[4096];
        dir_of(path, dir, sizeof dir);
        if (hyb_atomic_clean_stale(dir) < 0) hyb_error_clear();
    }
    hyb_atomic_file *f = calloc(1, sizeof *f);
    size_t n = strlen(path) + 64;
    if (!f || !(f->path = strdup(path)) || !(f->tmp = malloc(n))) {
        if (f) free(f->path);
        free(f);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", path);
    }
    unsigned k = atomic_fetch_add(&g_tmp_counter, 1u);
    snprintf(f->tmp, n, "%s.tmp.%ld.%u", path, (long)getpid(), k);
    f->fd = open(f->tmp, O_WRONLY | O_CREAT | O_EXCL | O_CLOEXEC, 0644);
    if (f->fd < 0) {
        int e = errno;
        int rc = hyb_error_set(HYB_ERR_IO, "%s: cannot create temporary file %s: %s", path, f->tmp,
                               strerror(e));
        free(f->tmp);
        free(f->path);
        free(f);
        return rc;
    }
    *out = f;
    return HYB_OK;
}

int hyb_atomic_write(hyb_atomic_file *f, const void *data, size_t n) {
    HYB_ASSERT(f && f->fd >= 0);
    const char *p = data;
    while (n > 0) {
        size_t chunk = n > ((size_t)1 << 30) ? ((size_t)1 << 30) : n;
        ssize_t w = write(f->fd, p, chunk);
        if (w < 0) {
            if (errno == EINTR) continue;
            return hyb_error_set(HYB_ERR_IO, "%s: write failed after %llu bytes: %s", f->path,
                                 (unsigned long long)f->size, strerror(errno));
        }
        if (w == 0)
            return hyb_error_set(HYB_ERR_IO, "%s: write made no progress after %llu bytes", f->path,
                                 (unsigned long long)f->size);
        p += w;
        n -= (size_t)w;
        f->size += (uint64_t)w;
    }
    return HYB_OK;
}

uint64_t hyb_atomic_size(const hyb_atomic_file *f) {
    return f->size;
}

static void atomic_free(hyb_atomic_file *f) {
    free(f->tmp);
    free(f->path);
    free(f);
}

void hyb_atomic_abort(hyb_atomic_file *f) {
    if (!f) return;
    if (f->fd >= 0) close(f->fd);
    unlink(f->tmp);
    atomic_free(f);
}

int hyb_atomic_commit(hyb_atomic_file *f) {
    HYB_ASSERT(f && f->fd >= 0);
    int rc = HYB_OK;
    if (fsync(f->fd) != 0) {
        rc = hyb_error_set(HYB_ERR_IO, "%s: fsync failed: %s", f->path, strerror(errno));
    }
    int crc = close(f->fd);
    f->fd = -1;
    if (rc == HYB_OK && crc != 0)
        rc = hyb_error_set(HYB_ERR_IO, "%s: close failed: %s", f->path, strerror(errno));
    if (rc == HYB_OK && rename(f->tmp, f->path) != 0)
        rc = hyb_error_set(HYB_ERR_IO, "%s: rename from %s failed: %s", f->path, f->tmp,
                           strerror(errno));
    if (rc != HYB_OK) {
        unlink(f->tmp);
        atomic_free(f);
        return rc;
    }
    rc = fsync_dir(f->path);
    atomic_free(f);
    return rc;
}

int hyb_atomic_write_file(const char *path, hyb_atomic_write_fn fn, void *ctx) {
    hyb_atomic_file *f;
    HYB_TRY(hyb_atomic_open(path, &f));
    int rc = fn(f, ctx);
    if (rc != HYB_OK) {
        hyb_atomic_abort(f);
        return rc < 0 ? rc : hyb_error_set(HYB_ERR, "%s: writer callback failed (%d)", path, rc);
    }
    return hyb_atomic_commit(f);
}

typedef struct {
    const void *data;
    size_t n;
} buf_ctx;

static int write_buf_cb(hyb_atomic_file *f, void *ctx) {
    buf_ctx *b = ctx;
    return hyb_atomic_write(f, b->data, b->n);
}

int hyb_atomic_write_buf(const char *path, const void *data, size_t n) {
    buf_ctx b = {data, n};
    return hyb_atomic_write_file(path, write_buf_cb, &b);
}

int hyb_mkdir_p(const char *dir) {
    if (!dir || !*dir) return hyb_error_set(HYB_ERR_ARG, "hyb_mkdir_p: empty path");
    size_t n = strlen(dir);
    char *p = malloc(n + 1);
    if (!p) return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", dir);
    memcpy(p, dir, n + 1);
    for (size_t i = 1; i <= n; i++) {
        if (p[i] != '/' && p[i] != 0) continue;
        char c = p[i];
        p[i] = 0;
        if (mkdir(p, 0755) != 0 && errno != EEXIST) {
            int rc = hyb_error_set(HYB_ERR_IO, "%s: cannot create directory %s: %s", dir, p,
                                   strerror(errno));
            free(p);
            return rc;
        }
        p[i] = c;
    }
    struct stat st;
    int ok = stat(p, &st) == 0 && S_ISDIR(st.st_mode);
    free(p);
    if (!ok) return hyb_error_set(HYB_ERR_IO, "%s: exists and is not a directory", dir);
    return HYB_OK;
}
