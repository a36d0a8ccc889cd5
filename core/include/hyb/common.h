/* hyb/common.h: status codes, the error message, assertions and logging.
 *
 *   if (hyb_layermap_load("graphs/smollm2-135m.toml", &map) != HYB_OK)
 *       fprintf(stderr, "hyb: %s\n", hyb_error());
 *
 * Errors come in two tiers (DESIGN.md, convention 3):
 *  - HYB_ASSERT(cond): a programmer error inside hyb; prints file:line and aborts.
 *  - anything a user can cause (bad file, bad config, bad argument, out of memory) returns a
 *    negative hyb_status and leaves a message in the calling thread's error buffer, set with
 *    hyb_error_set(). The message names the file:line:col, or the tensor and its shape.
 */
#ifndef HYB_COMMON_H
#define HYB_COMMON_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

typedef enum hyb_status {
    HYB_OK = 0,
    HYB_ERR = -1,        /* generic failure, message in hyb_error() */
    HYB_ERR_IO = -2,     /* file could not be opened/read/written */
    HYB_ERR_FORMAT = -3, /* malformed file or config */
    HYB_ERR_ARG = -4,    /* bad argument (shape, dtype, range) */
    HYB_ERR_NOMEM = -5,  /* allocation failed */
    HYB_ERR_NOTFOUND = -6,
    HYB_ERR_UNSUPPORTED = -7,
} hyb_status;

/* Set the calling thread's error message (printf-style). Returns `code` so callers can write
 * `return hyb_error_set(HYB_ERR_FORMAT, "%s:%d:%d: ...", ...);` */
int hyb_error_set(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Prefix the current message with more context: "ctx: <old message>". Returns `code`. */
int hyb_error_wrap(int code, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* The calling thread's last error message ("" when none). Valid until the next set. */
const char *hyb_error(void);
void hyb_error_clear(void);

/* Programmer errors only: never for something user input can cause. */
#define HYB_ASSERT(cond)                                                                           \
    do {                                                                                           \
        if (!(cond)) hyb_assert_fail(__FILE__, __LINE__, #cond);                                   \
    } while (0)
void hyb_assert_fail(const char *file, int line, const char *expr);

/* Propagate a non-OK status. */
#define HYB_TRY(expr)                                                                              \
    do {                                                                                           \
        int hyb_try_rc_ = (expr);                                                                  \
        if (hyb_try_rc_ != HYB_OK) return hyb_try_rc_;                                             \
    } while (0)

typedef enum hyb_log_level { HYB_LOG_DEBUG = 0, HYB_LOG_INFO, HYB_LOG_WARN, HYB_LOG_ERROR } hyb_log_level;
void hyb_log(int level, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Messages below this level are dropped (default INFO; env HYB_LOG=debug|info|warn|error). */
void hyb_log_set_level(int level);

/* 64-byte aligned allocation (zeroed). Returns NULL and sets the error on failure. */
void *hyb_malloc(size_t nbytes);
void hyb_free(void *p);

/* Monotonic wall clock in seconds. */
double hyb_time_now(void);

#ifdef __cplusplus
}
#endif
#endif
