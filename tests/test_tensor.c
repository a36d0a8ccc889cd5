/* tests/test_tensor.c: common.c (errors, allocation) and tensor.c (dtypes, tensors, f16/bf16,
 * conversion, RNG). */
#include <float.h>
#include <pthread.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "hyb/tensor.h"

static float u2f(uint32_t u) {
    float f;
    memcpy(&f, &u, 4);
    return f;
}

// ---- errors, allocation -----------------------------------------------------------------------

static void test_error_buffer(void) {
    hyb_error_clear();
    CHECK(strcmp(hyb_error(), "") == 0);
    CHECK(hyb_error_set(HYB_ERR_FORMAT, "bad %s at %d", "thing", 7) == HYB_ERR_FORMAT);
    CHECK(strcmp(hyb_error(), "bad thing at 7") == 0);
    CHECK(hyb_error_wrap(HYB_ERR_IO, "file %s", "a.toml") == HYB_ERR_IO);
    CHECK(strcmp(hyb_error(), "file a.toml: bad thing at 7") == 0);
    hyb_error_clear();
    hyb_error_wrap(HYB_ERR, "only context");
    CHECK(strcmp(hyb_error(), "only context") == 0);
    /* very long messages are truncated, never overflow */
    char big[5000];
    memset(big, 'x', sizeof big - 1);
    big[sizeof big - 1] = 0;
    hyb_error_set(HYB_ERR, "%s", big);
    hyb_error_wrap(HYB_ERR, "%s", big);
    CHECK(strlen(hyb_error()) > 1000 && strlen(hyb_error()) < 5000);
    hyb_error_clear();
}

static void *thread_err(void *arg) {
    (void)arg;
    CHECK(strcmp(hyb_error(), "") == 0); /* a new thread starts with no message */
    hyb_error_set(HYB_ERR, "from thread");
    return NULL;
}

static void test_error_thread_local(void) {
    hyb_error_set(HYB_ERR, "main thread");
    pthread_t th;
    pthread_create(&th, NULL, thread_err, NULL);
    pthread_join(th, NULL);
    CHECK(strcmp(hyb_error(), "main thread") == 0);
    hyb_error_clear();
}

static void test_malloc(void) {
    for (size_t n = 0; n < 300; n += 37) {
        unsigned char *p = hyb_malloc(n);
        CHECK(p != NULL);
        CHECK(((uintptr_t)p & 63) == 0);
        int zero = 1;
        for (size_t i = 0; i < n; i++)
            zero &= p[i] == 0;
        CHECK(zero);
        hyb_free(p);
    }
    hyb_error_clear();
    void *p = hyb_malloc(SIZE_MAX / 2);
    CHECK(p == NULL);
    CHECK(strstr(hyb_error(), "out of memory") != NULL);
    double t0 = hyb_time_now(), t1 = hyb_time_now();
    CHECK(t1 >= t0 && t0 > 0);
}

/* Capture what hyb_log writes to stderr. */
static void log_capture(char *buf, size_t n, void (*fn)(void)) {
    fflush(stderr);
    FILE *tmp = tmpfile();
    int saved = dup(2);
    dup2(fileno(tmp), 2);
    fn();
    fflush(stderr);
    dup2(saved, 2);
    close(saved);
    rewind(tmp);
    size_t k = fread(buf, 1, n - 1, tmp);
    buf[k] = 0;
    fclose(tmp);
}

static void log_some(void) {
    hyb_log(HYB_LOG_DEBUG, "dbg %d", 1);
    hyb_log(HYB_LOG_INFO, "info %d", 2);
    hyb_log(HYB_LOG_WARN, "warn %d", 3);
    hyb_log(HYB_LOG_ERROR, "err %d\n", 4);
}

static void test_log(void) {
    char buf[1024];
    /* the level comes from HYB_LOG at the first message */
    setenv("HYB_LOG", "warn", 1);
    log_capture(buf, sizeof buf, log_some);
    CHECK(!strstr(buf, "dbg 1") && !strstr(buf, "info 2"));
    CHECK(strstr(buf, "hyb [warn]: warn 3\n") && strstr(buf, "hyb [error]: err 4\n"));
    CHECK(!strstr(buf, "err 4\n\n")); /* a trailing newline is not doubled */
    hyb_log_set_level(HYB_LOG_DEBUG);
    log_capture(buf, sizeof buf, log_some);
    CHECK(strstr(buf, "hyb [debug]: dbg 1") && strstr(buf, "hyb [info]: info 2"));
    hyb_log_set_level(HYB_LOG_INFO);
}

// ---- dtypes and tensors ---------------------------------------------------------------------

static void test_dtypes(void) {
    struct {
        hyb_dtype t;
        const char *name;
        int64_t be, bb;
    } want[] = {
        {HYB_F32, "f32", 1, 4},     {HYB_F16, "f16", 1, 2},       {HYB_BF16, "bf16", 1, 2},
        {HYB_I32, "i32", 1, 4},     {HYB_Q8_0, "q8_0", 32, 34},   {HYB_Q4_0, "q4_0", 32, 18},
        {HYB_Q4_1, "q4_1", 32, 20}, {HYB_Q4_K, "q4_k", 256, 144}, {HYB_Q6_K, "q6_k", 256, 210}};
    for (size_t i = 0; i < sizeof want / sizeof want[0]; i++) {
        CHECK(strcmp(hyb_dtype_name(want[i].t), want[i].name) == 0);
        CHECK(hyb_dtype_block_elems(want[i].t) == want[i].be);
        CHECK(hyb_dtype_block_bytes(want[i].t) == want[i].bb);
        hyb_dtype d;
        CHECK(hyb_dtype_from_name(want[i].name, &d) == HYB_OK && d == want[i].t);
    }
    hyb_dtype d;
    CHECK(hyb_dtype_from_name("BF16", &d) == HYB_OK && d == HYB_BF16);
    CHECK(hyb_dtype_from_name("float32", &d) == HYB_OK && d == HYB_F32);
    CHECK(hyb_dtype_from_name("f64", &d) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "f64") != NULL);
}

static void test_tensor_basics(void) {
    int64_t shape[3] = {2, 3, 4};
    hyb_tensor *t = hyb_tensor_new(HYB_F32, 3, shape);
    CHECK(t != NULL);
    CHECK(hyb_tensor_numel(t) == 24 && hyb_tensor_nbytes(t) == 96);
    CHECK(t->stride[0] == 12 && t->stride[1] == 4 && t->stride[2] == 1);
    CHECK(hyb_tensor_is_contiguous(t));
    CHECK(((uintptr_t)t->data & 63) == 0);
    char buf[64];
    CHECK(strcmp(hyb_tensor_shape_str(t, buf, sizeof buf), "[2, 3, 4] f32") == 0);
    float *p = hyb_tensor_f32(t);
    for (int i = 0; i < 24; i++) {
        CHECK(p[i] == 0.0f);
        p[i] = (float)i;
    }
    int64_t vs[2] = {6, 4};
    hyb_tensor *v = hyb_tensor_view(t, 2, vs);
    CHECK(v && v->owner == HYB_OWN_VIEW && v->data == t->data && hyb_tensor_f32(v)[23] == 23.0f);
    int64_t bad[2] = {5, 5};
    CHECK(hyb_tensor_view(t, 2, bad) == NULL);
    CHECK(strstr(hyb_error(), "[2, 3, 4]") && strstr(hyb_error(), "[5, 5]"));
    hyb_tensor *c = hyb_tensor_clone(t);
    CHECK(c && c->data != t->data && memcmp(c->data, t->data, 96) == 0 &&
          hyb_tensor_same_shape(c, t));
    CHECK(!hyb_tensor_same_shape(c, v));
    /* a strided (transposed) tensor clones element by element */
    hyb_tensor *w = hyb_tensor_view(t, 2, vs);
    w->shape[0] = 4;
    w->shape[1] = 6;
    w->stride[0] = 1;
    w->stride[1] = 4; /* w[i][j] = t[j*4 + i] */
    CHECK(!hyb_tensor_is_contiguous(w));
    hyb_tensor *wc = hyb_tensor_clone(w);
    CHECK(wc && hyb_tensor_f32(wc)[1 * 6 + 2] == 2 * 4 + 1);
    hyb_tensor_free(wc);
    hyb_tensor_free(w);
    float ext[6] = {1, 2, 3, 4, 5, 6};
    int64_t es[1] = {6};
    hyb_tensor *e = hyb_tensor_wrap(HYB_F32, 1, es, ext);
    CHECK(e && e->owner == HYB_OWN_EXTERNAL && e->data == ext);
    hyb_tensor_free(e); /* must not free ext */
    hyb_tensor_free(v);
    hyb_tensor_free(c);
    hyb_tensor_free(t);
    hyb_tensor_free(NULL);
}

static void test_tensor_errors(void) {
    int64_t neg[2] = {2, -1};
    CHECK(hyb_tensor_new(HYB_F32, 2, neg) == NULL);
    CHECK(strstr(hyb_error(), "[2, -1]") != NULL);
    int64_t s5[5] = {1, 1, 1, 1, 1};
    CHECK(hyb_tensor_new(HYB_F32, 5, s5) == NULL);
    int64_t q[2] = {4, 33};
    CHECK(hyb_tensor_new(HYB_Q8_0, 2, q) == NULL);
    CHECK(strstr(hyb_error(), "[4, 33]") && strstr(hyb_error(), "32"));
    int64_t q2[2] = {4, 512};
    hyb_tensor *t = hyb_tensor_new(HYB_Q4_K, 2, q2);
    CHECK(t && hyb_tensor_nbytes(t) == 4 * 2 * 144);
    hyb_tensor_free(t);
    int64_t q3[1] = {64};
    t = hyb_tensor_new(HYB_Q8_0, 1, q3);
    CHECK(t && hyb_tensor_nbytes(t) == 68);
    hyb_tensor_free(t);
    int64_t huge[4] = {INT64_C(1) << 20, INT64_C(1) << 20, INT64_C(1) << 20, 1 << 10};
    CHECK(hyb_tensor_new(HYB_F32, 4, huge) == NULL);
}

// ---- f16 / bf16 -----------------------------------------------------------------------------

/* is h the f16 nearest to x (ties to even)? checked against both same-sign neighbours in double */
static int f16_is_nearest(float x, uint16_t h) {
    uint16_t mag = h & 0x7fff, s = h & 0x8000;
    if ((s != 0) != (x < 0 || (x == 0 && signbit(x)))) return 0;
    if (mag == 0x7c00) return fabs((double)x) >= 65520.0; /* inf only from >= 65520 */
    double d = fabs((double)x - hyb_f16_to_f32(h));
    for (int dir = -1; dir <= 1; dir += 2) {
        int nm = (int)mag + dir;
        if (nm < 0 || nm >= 0x7c00) continue;
        double dn = fabs((double)x - hyb_f16_to_f32((uint16_t)(s | nm)));
        if (dn < d) return 0;
        if (dn == d && (h & 1)) return 0; /* a tie must pick the even one */
    }
    return 1;
}

static void test_f16(void) {
    /* every f16 survives f16 -> f32 -> f16 exactly (NaNs stay NaN) */
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = hyb_f16_to_f32((uint16_t)h);
        uint16_t back = hyb_f32_to_f16(f);
        if ((h & 0x7c00) == 0x7c00 && (h & 0x3ff)) {
            bad += !(f != f) || !((back & 0x7c00) == 0x7c00 && (back & 0x3ff));
        } else {
            bad += back != h;
        }
    }
    CHECK(bad == 0);
    /* known values */
    CHECK(hyb_f16_to_f32(0x3c00) == 1.0f);
    CHECK(hyb_f16_to_f32(0xc000) == -2.0f);
    CHECK(hyb_f16_to_f32(0x7bff) == 65504.0f);
    CHECK(hyb_f16_to_f32(0x0001) == 0x1p-24f);
    CHECK(hyb_f16_to_f32(0x0400) == 0x1p-14f);
    CHECK(hyb_f16_to_f32(0x7c00) == INFINITY && hyb_f16_to_f32(0xfc00) == -INFINITY);
    CHECK(hyb_f32_to_f16(65504.0f) == 0x7bff);
    CHECK(hyb_f32_to_f16(65519.996f) == 0x7bff);
    CHECK(hyb_f32_to_f16(65520.0f) == 0x7c00);
    CHECK(hyb_f32_to_f16(1e10f) == 0x7c00 && hyb_f32_to_f16(-1e10f) == 0xfc00);
    CHECK(hyb_f32_to_f16(0x1p-25f) == 0x0000);        /* tie between 0 and 2^-24: even = 0 */
    CHECK(hyb_f32_to_f16(0x1.8p-25f) == 0x0001);      /* above the tie */
    CHECK(hyb_f32_to_f16(0x1.8p-24f) == 0x0002);      /* tie between 1 and 2: even = 2 */
    CHECK(hyb_f32_to_f16(1.0f + 0x1p-11f) == 0x3c00); /* tie, round down to even */
    CHECK(hyb_f32_to_f16(1.0f + 0x3p-11f) == 0x3c02); /* tie, round up to even */
    CHECK(hyb_f32_to_f16(0x1.ffcp-15f) == 0x0400);    /* subnormal rounding up into normal */
    CHECK(hyb_f32_to_f16(-0.0f) == 0x8000);
    CHECK(hyb_f32_to_f16(1e-30f) == 0 && hyb_f32_to_f16(FLT_TRUE_MIN) == 0);
    uint16_t n = hyb_f32_to_f16(NAN);
    CHECK((n & 0x7c00) == 0x7c00 && (n & 0x3ff));
    /* random f32 bit patterns: the result is the nearest f16 */
    hyb_rng r;
    hyb_rng_seed(&r, 7);
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)hyb_rng_next(&r);
        /* focus on the f16 range: exponents 100..145 */
        u = (u & 0x807fffffu) | ((uint32_t)(100 + (u >> 23) % 46) << 23);
        float x = u2f(u);
        bad += !f16_is_nearest(x, hyb_f32_to_f16(x));
    }
    CHECK_MSG(bad == 0, "%d f32 values not rounded to the nearest f16", bad);
}

static void test_bf16(void) {
    int bad = 0;
    for (uint32_t h = 0; h < 65536; h++) {
        float f = hyb_bf16_to_f32((uint16_t)h);
        uint16_t back = hyb_f32_to_bf16(f);
        if ((h & 0x7f80) == 0x7f80 && (h & 0x7f))
            bad += !(f != f) || !((back & 0x7f80) == 0x7f80 && (back & 0x7f));
        else
            bad += back != h;
    }
    CHECK(bad == 0);
    CHECK(hyb_f32_to_bf16(1.0f) == 0x3f80);
    CHECK(hyb_f32_to_bf16(u2f(0x3f808000u)) == 0x3f80); /* tie -> even (down) */
    CHECK(hyb_f32_to_bf16(u2f(0x3f818000u)) == 0x3f82); /* tie -> even (up) */
    CHECK(hyb_f32_to_bf16(u2f(0x3f808001u)) == 0x3f81);
    CHECK(hyb_f32_to_bf16(FLT_MAX) == 0x7f80); /* rounds past the largest bf16 */
    CHECK(hyb_f32_to_bf16(-INFINITY) == 0xff80);
    uint16_t n = hyb_f32_to_bf16(u2f(0x7f800001u)); /* NaN whose payload is in the low bits */
    CHECK((n & 0x7f80) == 0x7f80 && (n & 0x7f));
    /* random: result equals the nearest in double arithmetic */
    hyb_rng r;
    hyb_rng_seed(&r, 11);
    bad = 0;
    for (int i = 0; i < 200000; i++) {
        uint32_t u = (uint32_t)hyb_rng_next(&r);
        if ((u & 0x7f800000u) == 0x7f800000u) continue;
        float x = u2f(u);
        uint16_t h = hyb_f32_to_bf16(x);
        double d = fabs((double)x - hyb_bf16_to_f32(h));
        double lo = fabs((double)x - hyb_bf16_to_f32((uint16_t)(u >> 16)));
        double hi = fabs((double)x - hyb_bf16_to_f32((uint16_t)((u >> 16) + 1)));
        if ((((u >> 16) + 1) & 0x7f80) == 0x7f80) continue; /* next is inf/NaN */
        bad += d > lo || d > hi || (lo == hi && (h & 1));
    }
    CHECK(bad == 0);
}

static void test_convert(void) {
    float src[5] = {1.0f, -2.5f, 0.1f, 65504.0f, -0.0f};
    uint16_t h[5], b[5];
    float back[5];
    CHECK(hyb_convert_from_f32(HYB_F16, src, h, 5) == HYB_OK);
    CHECK(hyb_convert_to_f32(HYB_F16, h, back, 5) == HYB_OK);
    for (int i = 0; i < 5; i++)
        CHECK(back[i] == hyb_f16_to_f32(hyb_f32_to_f16(src[i])));
    CHECK(fabsf(back[2] - 0.1f) < 1e-4f);
    CHECK(hyb_convert_from_f32(HYB_BF16, src, b, 5) == HYB_OK);
    CHECK(hyb_convert_to_f32(HYB_BF16, b, back, 5) == HYB_OK);
    for (int i = 0; i < 5; i++)
        CHECK(back[i] == hyb_bf16_to_f32(hyb_f32_to_bf16(src[i])));
    int32_t iv[3] = {-7, 0, 123456};
    CHECK(hyb_convert_to_f32(HYB_I32, iv, back, 3) == HYB_OK);
    CHECK(back[0] == -7.0f && back[1] == 0.0f && back[2] == 123456.0f);
    CHECK(hyb_convert_to_f32(HYB_F32, src, back, 5) == HYB_OK && memcmp(src, back, 20) == 0);
    unsigned char q[34 * 2] = {0};
    float out[64];
    CHECK(hyb_convert_to_f32(HYB_Q8_0, q, out, 33) == HYB_ERR_ARG); /* not whole blocks */
    CHECK(strstr(hyb_error(), "q8_0") != NULL);
    CHECK(hyb_convert_from_f32(HYB_Q4_K, src, q, 5) == HYB_ERR_UNSUPPORTED);
}

// ---- RNG ------------------------------------------------------------------------------------

static void test_rng(void) {
    hyb_rng r, r2;
    hyb_rng_seed(&r, 42);
    /* reference values from an independent Python transcription of splitmix64 + xoshiro256** */
    CHECK(hyb_rng_next(&r) == UINT64_C(0x15780b2e0c2ec716));
    CHECK(hyb_rng_next(&r) == UINT64_C(0x6104d9866d113a7e));
    CHECK(hyb_rng_next(&r) == UINT64_C(0xae17533239e499a1));
    hyb_rng_seed(&r, 5);
    hyb_rng_seed(&r2, 5);
    for (int i = 0; i < 100; i++)
        CHECK(hyb_rng_next(&r) == hyb_rng_next(&r2));
    /* uniform: in [0, 1), mean 1/2 */
    double s = 0;
    int out = 0;
    for (int i = 0; i < 100000; i++) {
        float u = hyb_rng_uniform(&r);
        out += !(u >= 0.0f && u < 1.0f);
        s += u;
    }
    CHECK(out == 0);
    CHECK_NEAR(s / 100000, 0.5, 0.005); /* std of the mean 0.29/316 = 0.0009: 5 sigma */
    /* normal: mean 0, var 1, both via single draws and fill */
    enum { N = 200000 };
    float *x = malloc(sizeof(float) * N);
    hyb_rng_fill_normal(&r, x, N, 2.0f, 3.0f);
    double m = 0, v = 0;
    for (int i = 0; i < N; i++)
        m += x[i];
    m /= N;
    for (int i = 0; i < N; i++)
        v += (x[i] - m) * (x[i] - m);
    v /= N;
    CHECK_NEAR(m, 2.0, 0.035); /* std of the mean 3/447 = 0.0067: 5 sigma */
    CHECK_NEAR(v, 9.0, 0.15);  /* std of the variance 9*sqrt(2/N) = 0.028: 5 sigma */
    double m4 = 0;
    for (int i = 0; i < N; i++)
        m4 += pow((x[i] - m) / 3.0, 4);
    CHECK_NEAR(m4 / N, 3.0, 0.1); /* Gaussian kurtosis */
    m = 0;
    for (int i = 0; i < N; i++)
        m += hyb_rng_normal(&r);
    CHECK_NEAR(m / N, 0.0, 0.012);
    hyb_rng_fill_uniform(&r, x, N, -0.5f, 0.25f);
    out = 0;
    for (int i = 0; i < N; i++)
        out += !(x[i] >= -0.5f && x[i] < 0.25f);
    CHECK(out == 0);
    free(x);
}

int main(void) {
    RUN(test_error_buffer);
    RUN(test_error_thread_local);
    RUN(test_malloc);
    RUN(test_log);
    RUN(test_dtypes);
    RUN(test_tensor_basics);
    RUN(test_tensor_errors);
    RUN(test_f16);
    RUN(test_bf16);
    RUN(test_convert);
    RUN(test_rng);
    return harness_done();
}
