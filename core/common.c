/* core/common.c: the per-thread error message, assertions, logging, aligned allocation, clock. */
#include "hyb/common.h"

#include <ctype.h>
#include <errno.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <time.h>

// ---- errors ---------------------------------------------------------------------------------

#define HYB_ERROR_CAP 2048
static _Thread_local char g_error[HYB_ERROR_CAP];

int hyb_error_set(int code, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(g_error, sizeof g_error, fmt, ap);
    va_end(ap);
    return code;
}

int hyb_error_wrap(int code, const char *fmt, ...) {
    char ctx[HYB_ERROR_CAP];
    char old[HYB_ERROR_CAP];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(ctx, sizeof ctx, fmt, ap);
    va_end(ap);
    memcpy(old, g_error, sizeof old);
    /* "ctx: old", truncated to the buffer */
    size_t k = 0, cap = sizeof g_error - 1;
    for (const char *p = ctx; *p && k < cap; p++)
        g_error[k++] = *p;
    if (old[0]) {
        for (const char *p = ": "; *p && k < cap; p++)
            g_error[k++] = *p;
        for (const char *p = old; *p && k < cap; p++)
            g_error[k++] = *p;
    }
    g_error[k] = '\0';
    return code;
}

const char *hyb_error(void) {
    return g_error;
}

void hyb_error_clear(void) {
    g_error[0] = '\0';
}

void hyb_assert_fail(const char *file, int line, const char *expr) {
    fprintf(stderr, "hyb: %s:%d: internal assertion failed: %s\n", file, line, expr);
    fflush(stderr);
    abort();
}

// ---- logging --------------------------------------------------------------------------------

static int g_log_level = -1; /* -1: not yet read from HYB_LOG */

static int log_level_from_env(void) {
    const char *e = getenv("HYB_LOG");
    if (!e || !*e) return HYB_LOG_INFO;
    if (!strcasecmp(e, "debug")) return HYB_LOG_DEBUG;
    if (!strcasecmp(e, "info")) return HYB_LOG_INFO;
    if (!strcasecmp(e, "warn") || !strcasecmp(e, "warning")) return HYB_LOG_WARN;
    if (!strcasecmp(e, "error")) return HYB_LOG_ERROR;
    if (isdigit((unsigned char)e[0])) {
        int v = atoi(e);
        if (v >= HYB_LOG_DEBUG && v <= HYB_LOG_ERROR) return v;
    }
    fprintf(stderr, "hyb [warn]: HYB_LOG=%s not one of debug|info|warn|error; using info\n", e);
    return HYB_LOG_INFO;
}

void hyb_log_set_level(int level) {
    if (level < HYB_LOG_DEBUG) level = HYB_LOG_DEBUG;
    if (level > HYB_LOG_ERROR) level = HYB_LOG_ERROR;
    g_log_level = level;
}

void hyb_log(int level, const char *fmt, ...) {
    static const char *names[] = {"debug", "info", "warn", "error"};
    if (g_log_level < 0) g_log_level = log_level_from_env();
    if (level < g_log_level) return;
    if (level < HYB_LOG_DEBUG) level = HYB_LOG_DEBUG;
    if (level > HYB_LOG_ERROR) level = HYB_LOG_ERROR;
    char msg[4096];
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(msg, sizeof msg, fmt, ap);
    va_end(ap);
    size_t n = strlen(msg);
    /* one fprintf call so lines from several threads do not interleave */
    fprintf(stderr, "hyb [%s]: %s%s", names[level], msg, (n && msg[n - 1] == '\n') ? "" : "\n");
}

// ---- memory ---------------------------------------------------------------------------------

void *hyb_malloc(size_t nbytes) {
    size_t n = nbytes ? nbytes : 1;
    /* round up to the alignment: aligned_alloc requires a multiple, and it lets SIMD loops
     * touch a whole last cache line */
    /* beyond the 47-bit user address space nothing can succeed (and sanitizers abort on it) */
    if (n > ((size_t)1 << 47)) {
        hyb_error_set(HYB_ERR_NOMEM, "out of memory: cannot allocate %zu bytes", nbytes);
        return NULL;
    }
    n = (n + 63) & ~(size_t)63;
    void *p = NULL;
    if (posix_memalign(&p, 64, n) != 0 || !p) {
        hyb_error_set(HYB_ERR_NOMEM, "out of memory: cannot allocate %zu bytes", nbytes);
        return NULL;
    }
    memset(p, 0, n);
    return p;
}

void hyb_free(void *p) {
    free(p);
}

double hyb_time_now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}
