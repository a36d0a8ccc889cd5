/* core/strbuf.h: a growing, always NUL-terminated string buffer (internal to libhyb).
 *
 *   hyb_strbuf b = {0};
 *   hyb_strbuf_puts(&b, "{");
 *   hyb_strbuf_printf(&b, "\"n\":%d}", 3);
 *   if (b.oom) { hyb_strbuf_free(&b); return hyb_error_set(HYB_ERR_NOMEM, "..."); }
 *   use(b.p, b.n);
 *   hyb_strbuf_free(&b);
 *
 * An allocation failure sets `oom` and turns every later append into a no-op, so a writer checks
 * once at the end. Used by the safetensors header writer and the layer-map TOML serialiser.
 */
#ifndef HYB_STRBUF_H
#define HYB_STRBUF_H

#include <stddef.h>

typedef struct hyb_strbuf {
    char *p;    /* the text, NUL-terminated once anything was appended (NULL before) */
    size_t n;   /* its length, without the NUL */
    size_t cap; /* bytes allocated at p */
    int oom;    /* an append failed: the contents are incomplete */
} hyb_strbuf;

/* Append n bytes of s (which may contain NULs). */
void hyb_strbuf_putn(hyb_strbuf *b, const char *s, size_t n);
/* Append the C string s. */
void hyb_strbuf_puts(hyb_strbuf *b, const char *s);
/* Append printf-formatted text (any length). */
void hyb_strbuf_printf(hyb_strbuf *b, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Free the text and reset b to empty (safe on a zeroed buffer). */
void hyb_strbuf_free(hyb_strbuf *b);

#endif
