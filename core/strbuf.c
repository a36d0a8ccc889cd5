/* core/strbuf.c: the growing string buffer of strbuf.h. */
#include "strbuf.h"

#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

void hyb_strbuf_putn(hyb_strbuf *b, const char *s, size_t n) {
    if (b->oom) return;
    if (n > (size_t)-1 / 2 - b->n - 1) {
        b->oom = 1;
        return;
    }
    if (b->n + n + 1 > b->cap) {
        size_t cap = b->cap ? b->cap : 4096;
        while (cap < b->n + n + 1)
            cap *= 2;
        char *p = realloc(b->p, cap);
        if (!p) {
            b->oom = 1;
            return;
        }
        b->p = p;
        b->cap = cap;
    }
    if (n) memcpy(b->p + b->n, s, n);
    b->n += n;
    b->p[b->n] = 0;
}

void hyb_strbuf_puts(hyb_strbuf *b, const char *s) {
    hyb_strbuf_putn(b, s, strlen(s));
}

void hyb_strbuf_printf(hyb_strbuf *b, const char *fmt, ...) {
    char tmp[512];
    va_list ap;
    va_start(ap, fmt);
    int k = vsnprintf(tmp, sizeof tmp, fmt, ap);
    va_end(ap);
    if (k < 0) {
        b->oom = 1; /* an encoding error: the text would be incomplete */
        return;
    }
    if ((size_t)k < sizeof tmp) {
        hyb_strbuf_putn(b, tmp, (size_t)k);
        return;
    }
    char *big = malloc((size_t)k + 1);
    if (!big) {
        b->oom = 1;
        return;
    }
    va_start(ap, fmt);
    vsnprintf(big, (size_t)k + 1, fmt, ap);
    va_end(ap);
    hyb_strbuf_putn(b, big, (size_t)k);
    free(big);
}

void hyb_strbuf_free(hyb_strbuf *b) {
    free(b->p);
    b->p = NULL;
    b->n = b->cap = 0;
    b->oom = 0;
}
