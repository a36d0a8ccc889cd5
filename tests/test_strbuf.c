/* tests/test_strbuf.c: the internal growing string buffer (core/strbuf.h): appends across the
 * first allocation and past the printf fast path, embedded NULs, and free/reuse. */
#include <string.h>

#include "harness.h"
#include "strbuf.h"

static void test_append(void) {
    hyb_strbuf b = {0};
    hyb_strbuf_puts(&b, "");
    CHECK(b.n == 0 && b.p && b.p[0] == 0);
    hyb_strbuf_puts(&b, "ab");
    hyb_strbuf_printf(&b, "[%d,%s]", 42, "x");
    hyb_strbuf_putn(&b, "c\0d", 3);
    CHECK(b.n == 2 + 6 + 3 && !b.oom);
    CHECK(memcmp(b.p, "ab[42,x]c\0d", 12) == 0); /* and the terminating NUL */
    hyb_strbuf_free(&b);
    CHECK(b.p == NULL && b.n == 0 && b.cap == 0);
}

static void test_grow(void) {
    hyb_strbuf b = {0};
    char big[3000]; /* longer than printf's stack buffer and than one 4096-byte block twice */
    memset(big, 'y', sizeof big - 1);
    big[sizeof big - 1] = 0;
    for (int i = 0; i < 5; i++)
        hyb_strbuf_printf(&b, "%d:%s;", i, big);
    size_t want = 5 * (2 + sizeof big - 1 + 1);
    CHECK(b.n == want && strlen(b.p) == want && b.cap > want && !b.oom);
    CHECK(b.p[0] == '0' && b.p[1] == ':' && b.p[want - 1] == ';' && b.p[want - 2] == 'y');
    CHECK(memcmp(b.p + want - (sizeof big + 2), "4:", 2) == 0);
    hyb_strbuf_free(&b);
    hyb_strbuf_puts(&b, "again"); /* reusable after free */
    CHECK(b.n == 5 && strcmp(b.p, "again") == 0);
    hyb_strbuf_free(&b);
}

static void test_oom_sticks(void) {
    hyb_strbuf b = {0};
    hyb_strbuf_puts(&b, "x");
    hyb_strbuf_putn(&b, "y", (size_t)-1 / 2); /* cannot be allocated */
    CHECK(b.oom);
    hyb_strbuf_puts(&b, "z"); /* later appends are no-ops */
    CHECK(b.n == 1 && strcmp(b.p, "x") == 0);
    hyb_strbuf_free(&b);
    CHECK(!b.oom);
}

int main(void) {
    RUN(test_append);
    RUN(test_grow);
    RUN(test_oom_sticks);
    return harness_done();
}
