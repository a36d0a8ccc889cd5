/* tests/test_safetensors.c: safetensors reader/writer and the atomic file writer.
 *
 * Round trips (F32/F16/BF16/I32 + metadata), a file written by the Python `safetensors` package
 * (tests/data/st_ref.safetensors, made by tests/reference/make_safetensors.py), and malformed
 * files: truncated at every length, header past EOF, bad JSON, unknown dtype, byte counts that do
 * not match the shape, overlaps, duplicates. Each must give an error naming the file (and the
 * tensor where one is involved), never a crash. The atomic writer must leave no file behind when
 * its writer fails midway, and keep the old target intact. */
#include <dirent.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <sys/wait.h>
#include <unistd.h>

#include "harness.h"
#include "hyb/atomic.h"
#include "hyb/safetensors.h"

static char g_dir[256];

static const char *tmp_path(const char *name) {
    static char buf[4][512];
    static int k;
    k = (k + 1) % 4;
    snprintf(buf[k], sizeof buf[k], "%s/%s", g_dir, name);
    return buf[k];
}

static int count_dir_entries(void) {
    DIR *d = opendir(g_dir);
    int n = 0;
    struct dirent *e;
    while ((e = readdir(d)))
        if (strcmp(e->d_name, ".") && strcmp(e->d_name, "..")) n++;
    closedir(d);
    return n;
}

static void clear_dir(void) {
    DIR *d = opendir(g_dir);
    struct dirent *e;
    char p[600];
    while ((e = readdir(d))) {
        if (!strcmp(e->d_name, ".") || !strcmp(e->d_name, "..")) continue;
        snprintf(p, sizeof p, "%s/%s", g_dir, e->d_name);
        unlink(p);
    }
    closedir(d);
}

static void write_bytes(const char *path, const void *data, size_t n) {
    FILE *f = fopen(path, "wb");
    HYB_ASSERT(f);
    if (n) HYB_ASSERT(fwrite(data, 1, n, f) == n);
    fclose(f);
}

static unsigned char *read_bytes(const char *path, size_t *n) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long sz = ftell(f);
    fseek(f, 0, SEEK_SET);
    unsigned char *p = malloc((size_t)sz + 1);
    HYB_ASSERT(fread(p, 1, (size_t)sz, f) == (size_t)sz);
    fclose(f);
    *n = (size_t)sz;
    return p;
}

/* A raw file: 8-byte LE length, the header text as given, then data. */
static void write_raw(const char *path, const char *header, const void *data, size_t ndata) {
    size_t hl = strlen(header);
    unsigned char *buf = malloc(8 + hl + ndata + 1);
    for (int i = 0; i < 8; i++)
        buf[i] = (unsigned char)((uint64_t)hl >> (8 * i));
    memcpy(buf + 8, header, hl);
    if (ndata) memcpy(buf + 8 + hl, data, ndata);
    write_bytes(path, buf, 8 + hl + ndata);
    free(buf);
}

/* open must fail with `code` and a message containing each of the NULL-terminated needles. */
static void expect_open_error(const char *path, int code, const char *const *needles) {
    hyb_safetensors *st = (hyb_safetensors *)0x1;
    hyb_error_clear();
    int rc = hyb_safetensors_open(path, &st);
    CHECK_MSG(rc == code, "open %s: rc %d, expected %d (%s)", path, rc, code, hyb_error());
    CHECK(st == NULL);
    CHECK_MSG(strstr(hyb_error(), path) != NULL, "message does not name the file: %s", hyb_error());
    for (const char *const *n = needles; n && *n; n++)
        CHECK_MSG(strstr(hyb_error(), *n) != NULL, "message lacks '%s': %s", *n, hyb_error());
    if (rc == HYB_OK) hyb_safetensors_close(st);
}

// ---- round trip --------------------------------------------------------------------------------

static void test_round_trip(void) {
    clear_dir();
    float a[6] = {1.5f, -2.25f, 3e-8f, 1e30f, -0.0f, 7.0f};
    int64_t sa[2] = {2, 3};
    uint16_t h[4], bf[4];
    const float hv[4] = {0.5f, -1.0f, 65504.0f, 0.000061035156f}; /* exact in f16 */
    const float bv[4] = {1.0f, -3.0f, 1.5f, 2.0e20f};             /* 2e20 is not exact in bf16 */
    for (int i = 0; i < 4; i++) {
        h[i] = hyb_f32_to_f16(hv[i]);
        bf[i] = hyb_f32_to_bf16(bv[i]);
    }
    int32_t ints[3] = {-7, 0, 123456};
    int64_t s4[1] = {4}, s3[1] = {3}, s0[2] = {0, 5};
    hyb_st_writer *w = hyb_st_writer_new();
    CHECK(hyb_st_writer_add(w, "model.a", HYB_F32, 2, sa, a) == HYB_OK);
    CHECK(hyb_st_writer_add(w, "half \"quoted\"\\name", HYB_F16, 1, s4, h) == HYB_OK);
    CHECK(hyb_st_writer_add(w, "b", HYB_BF16, 1, s4, bf) == HYB_OK);
    CHECK(hyb_st_writer_add(w, "ints", HYB_I32, 1, s3, ints) == HYB_OK);
    CHECK(hyb_st_writer_add(w, "empty", HYB_F32, 2, s0, NULL) == HYB_OK);
    CHECK(hyb_st_writer_add(w, "model.a", HYB_F32, 2, sa, a) == HYB_ERR_ARG); /* duplicate */
    CHECK(strstr(hyb_error(), "model.a") != NULL);
    CHECK(hyb_st_writer_add(w, "q", HYB_Q8_0, 1, s4, a) == HYB_ERR_UNSUPPORTED);
    CHECK(hyb_st_writer_add(w, "nodata", HYB_F32, 1, s4, NULL) == HYB_ERR_ARG);
    CHECK(hyb_st_writer_meta(w, "format", "pt") == HYB_OK);
    CHECK(hyb_st_writer_meta(w, "note", "line1\nline2 \"x\"") == HYB_OK);
    CHECK(hyb_st_writer_meta(w, "format", "pt2") == HYB_OK); /* replaces */
    const char *path = tmp_path("rt.safetensors");
    CHECK(hyb_st_writer_save(w, path) == HYB_OK);
    hyb_st_writer_free(w);
    CHECK(count_dir_entries() == 1); /* no temporary left */

    size_t n;
    unsigned char *raw = read_bytes(path, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | raw[i];
    CHECK((8 + hl) % 8 == 0); /* data section 8-byte aligned */
    CHECK(n == 8 + hl + 24 + 8 + 8 + 12);
    free(raw);

    hyb_safetensors *st;
    CHECK(hyb_safetensors_open(path, &st) == HYB_OK);
    if (!st) return;
    CHECK(hyb_safetensors_count(st) == 5);
    CHECK(strcmp(hyb_safetensors_meta(st, "format"), "pt2") == 0);
    CHECK(strcmp(hyb_safetensors_meta(st, "note"), "line1\nline2 \"x\"") == 0);
    CHECK(hyb_safetensors_meta(st, "absent") == NULL);
    CHECK(hyb_safetensors_meta_count(st) == 2);
    const hyb_st_tensor *t = hyb_safetensors_find(st, "model.a");
    CHECK(t && t->dtype == HYB_ST_F32 && t->ndim == 2 && t->shape[0] == 2 && t->shape[1] == 3 &&
          t->numel == 6);
    float out[6];
    CHECK(hyb_safetensors_read_f32(st, t, out, 6) == HYB_OK);
    CHECK(memcmp(out, a, sizeof a) == 0);
    CHECK(hyb_safetensors_read_f32(st, t, out, 5) == HYB_ERR_ARG);
    t = hyb_safetensors_find(st, "half \"quoted\"\\name");
    CHECK(t && t->dtype == HYB_ST_F16);
    if (t) {
        CHECK(hyb_safetensors_read_f32(st, t, out, 4) == HYB_OK);
        for (int i = 0; i < 4; i++)
            CHECK(out[i] == hv[i]);
    }
    t = hyb_safetensors_find(st, "b");
    CHECK(t && t->dtype == HYB_ST_BF16);
    if (t) {
        CHECK(hyb_safetensors_read_f32(st, t, out, 4) == HYB_OK);
        for (int i = 0; i < 4; i++)
            CHECK(out[i] == hyb_bf16_to_f32(bf[i]));
        CHECK(out[0] == 1.0f && out[1] == -3.0f && out[2] == 1.5f);
        CHECK_NEAR(out[3] / 2.0e20, 1.0, 1.0 / 128);
    }
    t = hyb_safetensors_find(st, "ints");
    CHECK(t && t->dtype == HYB_ST_I32);
    if (t) {
        CHECK(hyb_safetensors_read_f32(st, t, out, 3) == HYB_OK);
        CHECK(out[0] == -7.0f && out[1] == 0.0f && out[2] == 123456.0f);
    }
    t = hyb_safetensors_find(st, "empty");
    CHECK(t && t->numel == 0 && t->nbytes == 0);
    hyb_tensor *ten = hyb_safetensors_load_f32(st, hyb_safetensors_find(st, "model.a"));
    CHECK(ten && ten->ndim == 2 && ten->shape[1] == 3 && strcmp(ten->name, "model.a") == 0);
    if (ten) CHECK(memcmp(ten->data, a, sizeof a) == 0);
    hyb_tensor_free(ten);
    CHECK(hyb_safetensors_find(st, "nope") == NULL);
    hyb_safetensors_close(st);

    /* the same bytes from memory */
    raw = read_bytes(path, &n);
    CHECK(hyb_safetensors_open_memory(raw, n, "mem.safetensors", &st) == HYB_OK);
    if (st) {
        t = hyb_safetensors_find(st, "model.a");
        CHECK(t && hyb_safetensors_read_f32(st, t, out, 6) == HYB_OK &&
              memcmp(out, a, sizeof a) == 0);
        CHECK(hyb_safetensors_count(st) == 5);
        hyb_safetensors_close(st);
    }
    CHECK(hyb_safetensors_open_memory(raw, n - 1, "mem.safetensors", &st) == HYB_ERR_FORMAT);
    CHECK(st == NULL && strstr(hyb_error(), "mem.safetensors") != NULL);
    free(raw);
}

/* A file written by the reference implementation (Python safetensors). */
static void test_reference_file(void) {
    const char *dir = getenv("HYB_TEST_DATA");
    char path[1024];
    snprintf(path, sizeof path, "%s/st_ref.safetensors", dir ? dir : "tests/data");
    hyb_safetensors *st;
    int rc = hyb_safetensors_open(path, &st);
    CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
    if (rc != HYB_OK) return;
    /* make_safetensors.py: x[i] = (i - 5) * 0.25 in each dtype, shapes below */
    static const struct {
        const char *name;
        hyb_st_dtype dt;
        int ndim;
        int64_t shape[3];
    } want[] = {
        {"f32", HYB_ST_F32, 2, {3, 4}},      {"f16", HYB_ST_F16, 1, {10}},
        {"bf16", HYB_ST_BF16, 3, {2, 3, 2}}, {"i32", HYB_ST_I32, 1, {5}},
        {"f64", HYB_ST_F64, 1, {4}},         {"i64", HYB_ST_I64, 1, {4}},
    };
    CHECK(hyb_safetensors_count(st) == 6);
    for (size_t k = 0; k < sizeof want / sizeof want[0]; k++) {
        const hyb_st_tensor *t = hyb_safetensors_find(st, want[k].name);
        CHECK_MSG(t != NULL, "missing %s", want[k].name);
        if (!t) continue;
        CHECK(t->dtype == want[k].dt && t->ndim == want[k].ndim);
        int64_t numel = 1;
        for (int d = 0; d < t->ndim; d++) {
            CHECK(t->shape[d] == want[k].shape[d]);
            numel *= want[k].shape[d];
        }
        float *x = malloc((size_t)numel * sizeof(float));
        CHECK(hyb_safetensors_read_f32(st, t, x, numel) == HYB_OK);
        int integer = want[k].dt == HYB_ST_I32 || want[k].dt == HYB_ST_I64;
        for (int64_t i = 0; i < numel; i++) {
            float e = integer ? (float)(i - 5) : (float)((double)(i - 5) * 0.25);
            CHECK_MSG(x[i] == e, "%s[%lld] = %g, expected %g", want[k].name, (long long)i, x[i], e);
        }
        free(x);
    }
    const char *fmt = hyb_safetensors_meta(st, "format");
    CHECK(fmt && strcmp(fmt, "pt") == 0);
    hyb_safetensors_close(st);
}

// ---- malformed files ---------------------------------------------------------------------------

static void test_truncated_every_length(void) {
    clear_dir();
    float a[8] = {1, 2, 3, 4, 5, 6, 7, 8};
    int64_t s[1] = {8};
    hyb_st_writer *w = hyb_st_writer_new();
    hyb_st_writer_add(w, "t.weight", HYB_F32, 1, s, a);
    hyb_st_writer_add(w, "u.bias", HYB_F32, 1, s, a);
    const char *good = tmp_path("good.safetensors");
    CHECK(hyb_st_writer_save(w, good) == HYB_OK);
    hyb_st_writer_free(w);
    size_t n;
    unsigned char *raw = read_bytes(good, &n);
    uint64_t hl = 0;
    for (int i = 7; i >= 0; i--)
        hl = (hl << 8) | raw[i];
    const char *bad = tmp_path("trunc.safetensors");
    int failures_ok = 1;
    for (size_t len = 0; len < n; len++) {
        write_bytes(bad, raw, len);
        hyb_safetensors *st = NULL;
        int rc = hyb_safetensors_open(bad, &st);
        if (rc != HYB_ERR_FORMAT || st || !strstr(hyb_error(), bad)) {
            failures_ok = 0;
            fprintf(stderr, "len %zu: rc %d: %s\n", len, rc, hyb_error());
            hyb_safetensors_close(st);
        }
    }
    CHECK(failures_ok);
    /* specific messages */
    write_bytes(bad, raw, 5);
    expect_open_error(bad, HYB_ERR_FORMAT, (const char *[]){"too short", NULL});
    write_bytes(bad, raw, 8 + hl / 2);
    expect_open_error(bad, HYB_ERR_FORMAT, (const char *[]){"exceeds the file", NULL});
    write_bytes(bad, raw, n - 4); /* the last tensor loses its tail */
    expect_open_error(bad, HYB_ERR_FORMAT,
                      (const char *[]){"'u.bias'", "past the end", "truncated", NULL});
    free(raw);
}

static void test_header_errors(void) {
    clear_dir();
    const char *p = tmp_path("bad.safetensors");
    float d[4] = {0};
    /* each header is rejected with a message naming the file and these words */
    static const struct {
        size_t data_bytes;
        const char *needles[3]; /* NULL-terminated */
        const char *header;
    } bad[] = {
        {16,
         {"tensor 'x'", "past the end", NULL},
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[0,32]}}"},
        {16, {"not valid JSON", NULL}, "{\"x\": {\"dtype\": \"F32\", \"shape\": [4"},
        {16, {"not a JSON object", NULL}, "[1, 2]"},
        {16,
         {"tensor 'x'", "unknown dtype 'F7'", NULL},
         "{\"x\":{\"dtype\":\"F7\",\"shape\":[4],\"data_offsets\":[0,16]}}"},
        {16,
         {"tensor 'x'", "needs 12 bytes", NULL},
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[3],\"data_offsets\":[0,16]}}"},
        {16,
         {"tensor 'x'", "shape[0]", NULL},
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[-4],\"data_offsets\":[0,16]}}"},
        {16,
         {"tensor 'x'", NULL},
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[2.5],\"data_offsets\":[0,16]}}"},
        {16,
         {"tensor 'x'", NULL},
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[4],\"data_offsets\":[16,0]}}"},
        {16, {"tensor 'x'", "data_offsets", NULL}, "{\"x\":{\"dtype\":\"F32\",\"shape\":[4]}}"},
        {16, {"tensor 'x'", "dtype", NULL}, "{\"x\":{\"shape\":[4],\"data_offsets\":[0,16]}}"},
        {16,
         {"overlap", NULL},
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"y\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[4,12]}}"},
        {16,
         {"'x'", "twice", NULL},
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[0,8]},"
         "\"x\":{\"dtype\":\"F32\",\"shape\":[2],\"data_offsets\":[8,16]}}"},
        {0, {"__metadata__", NULL}, "{\"__metadata__\":{\"a\":1}}"},
        {16,
         {"tensor 'x'", NULL},
         "{\"x\":{\"dtype\":\"F32\",\"shape\":[4294967296,4294967296,4294967296],"
         "\"data_offsets\":[0,16]}}"},
        {0, {"trailing", NULL}, "{} garbage"},
    };
    for (size_t i = 0; i < sizeof bad / sizeof bad[0]; i++) {
        write_raw(p, bad[i].header, d, bad[i].data_bytes);
        expect_open_error(p, HYB_ERR_FORMAT, bad[i].needles);
    }
    /* a huge header length */
    unsigned char big[16] = {0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0xff, 0x7f, '{', '}'};
    write_bytes(p, big, sizeof big);
    expect_open_error(p, HYB_ERR_FORMAT, (const char *[]){"header length", NULL});
    expect_open_error(tmp_path("does-not-exist"), HYB_ERR_IO,
                      (const char *[]){"cannot open", NULL});
    /* valid edge cases: empty header object, padding spaces, F8 is readable but not convertible */
    write_raw(p, "{}      ", d, 0);
    hyb_safetensors *st;
    CHECK(hyb_safetensors_open(p, &st) == HYB_OK);
    if (st) {
        CHECK(hyb_safetensors_count(st) == 0);
        hyb_safetensors_close(st);
    }
    write_raw(p, "{\"f8\":{\"dtype\":\"F8_E4M3\",\"shape\":[4],\"data_offsets\":[0,4]}}", d, 4);
    CHECK(hyb_safetensors_open(p, &st) == HYB_OK);
    if (st) {
        float o[4];
        CHECK(hyb_safetensors_read_f32(st, hyb_safetensors_find(st, "f8"), o, 4) ==
              HYB_ERR_UNSUPPORTED);
        CHECK(strstr(hyb_error(), "'f8'") != NULL);
        hyb_safetensors_close(st);
    }
}

/* Flip bytes of the header of a valid file: every variant opens or fails cleanly. */
static void test_header_fuzz(void) {
    clear_dir();
    float a[6] = {1, 2, 3, 4, 5, 6};
    int64_t s[2] = {2, 3};
    hyb_st_writer *w = hyb_st_writer_new();
    hyb_st_writer_add(w, "layer.0.w", HYB_F32, 2, s, a);
    hyb_st_writer_add(w, "layer.1.w", HYB_F32, 2, s, a);
    hyb_st_writer_meta(w, "format", "pt");
    const char *good = tmp_path("fz.safetensors");
    CHECK(hyb_st_writer_save(w, good) == HYB_OK);
    hyb_st_writer_free(w);
    size_t n;
    unsigned char *raw = read_bytes(good, &n);
    const char *bad = tmp_path("fz2.safetensors");
    hyb_rng r;
    hyb_rng_seed(&r, 7);
    static const unsigned char subs[] = {'"', '{', '}', '[', ']', ',', ':',
                                         '0', '9', '-', 'e', ' ', 0,   0xff};
    int opened = 0, failed = 0;
    for (int it = 0; it < 3000; it++) {
        unsigned char *c = malloc(n);
        memcpy(c, raw, n);
        int flips = 1 + (int)(hyb_rng_next(&r) % 3);
        for (int f = 0; f < flips; f++) {
            size_t at = (size_t)(hyb_rng_next(&r) % (n < 8 + 160 ? n : 8 + 160));
            c[at] = subs[hyb_rng_next(&r) % sizeof subs];
        }
        write_bytes(bad, c, n);
        free(c);
        hyb_safetensors *st = NULL;
        if (hyb_safetensors_open(bad, &st) == HYB_OK) {
            opened++;
            /* whatever it says must be readable within the file */
            for (int i = 0; i < hyb_safetensors_count(st); i++) {
                const hyb_st_tensor *t = hyb_safetensors_tensor(st, i);
                if (t->numel > 0 && t->numel < 1000 && t->dtype != HYB_ST_F8_E4M3 &&
                    t->dtype != HYB_ST_F8_E5M2) {
                    float *x = malloc((size_t)t->numel * sizeof(float));
                    CHECK(hyb_safetensors_read_f32(st, t, x, t->numel) == HYB_OK);
                    free(x);
                }
            }
            hyb_safetensors_close(st);
        } else {
            failed++;
            CHECK(st == NULL && hyb_error()[0] != 0);
        }
    }
    CHECK(failed > 0);
    printf("  fuzz: %d opened, %d rejected\n", opened, failed);
    free(raw);
}

// ---- atomic writer -----------------------------------------------------------------------------

typedef struct {
    int fail_after; /* chunks */
} fail_ctx;

static int failing_writer(hyb_atomic_file *f, void *vctx) {
    fail_ctx *c = vctx;
    char chunk[4096];
    memset(chunk, 'x', sizeof chunk);
    for (int i = 0;; i++) {
        if (i == c->fail_after)
            return hyb_error_set(HYB_ERR_IO, "simulated failure after %d chunks", i);
        HYB_TRY(hyb_atomic_write(f, chunk, sizeof chunk));
    }
}

static void test_atomic_failure_leaves_nothing(void) {
    clear_dir();
    const char *p = tmp_path("ckpt.bin");
    fail_ctx c = {3};
    CHECK(hyb_atomic_write_file(p, failing_writer, &c) == HYB_ERR_IO);
    CHECK(strstr(hyb_error(), "simulated") != NULL);
    CHECK(access(p, F_OK) != 0);
    CHECK(count_dir_entries() == 0); /* no target, no temporary */

    /* an existing target survives a failed rewrite untouched */
    CHECK(hyb_atomic_write_buf(p, "old", 3) == HYB_OK);
    CHECK(hyb_atomic_write_file(p, failing_writer, &c) == HYB_ERR_IO);
    size_t n;
    unsigned char *got = read_bytes(p, &n);
    CHECK(got && n == 3 && memcmp(got, "old", 3) == 0);
    free(got);
    CHECK(count_dir_entries() == 1);

    /* explicit abort */
    hyb_atomic_file *f;
    CHECK(hyb_atomic_open(p, &f) == HYB_OK);
    CHECK(hyb_atomic_write(f, "partial", 7) == HYB_OK);
    CHECK(hyb_atomic_size(f) == 7);
    CHECK(count_dir_entries() == 2); /* the temporary exists while writing ... */
    hyb_atomic_abort(f);
    CHECK(count_dir_entries() == 1); /* ... and is gone after abort */
    got = read_bytes(p, &n);
    CHECK(got && n == 3 && memcmp(got, "old", 3) == 0);
    free(got);

    /* commit replaces */
    CHECK(hyb_atomic_open(p, &f) == HYB_OK);
    CHECK(hyb_atomic_write(f, "new content", 11) == HYB_OK);
    CHECK(hyb_atomic_commit(f) == HYB_OK);
    got = read_bytes(p, &n);
    CHECK(got && n == 11 && memcmp(got, "new content", 11) == 0);
    free(got);
    CHECK(count_dir_entries() == 1);

    /* a directory that does not exist: clear error naming the path */
    CHECK(hyb_atomic_write_buf(tmp_path("no/such/dir/x"), "a", 1) == HYB_ERR_IO);
    CHECK(strstr(hyb_error(), "no/such/dir/x") != NULL);
    /* a failing safetensors save leaves nothing either: target is a directory */
    char sub[600];
    snprintf(sub, sizeof sub, "%s/adir", g_dir);
    CHECK(hyb_mkdir_p(sub) == HYB_OK);
    float a[2] = {1, 2};
    int64_t s[1] = {2};
    hyb_st_writer *w = hyb_st_writer_new();
    hyb_st_writer_add(w, "a", HYB_F32, 1, s, a);
    CHECK(hyb_st_writer_save(w, sub) == HYB_ERR_IO); /* rename over a directory fails */
    hyb_st_writer_free(w);
    CHECK(count_dir_entries() == 2); /* ckpt.bin and adir, no temporary */
    rmdir(sub);
}

/* What a kill -9 leaves ("<target>.tmp.<pid>.<n>" of a dead process) is removed by the next save
 * in that directory; a live process's temporary (this one's) and look-alikes are kept. */
static void write_plain(const char *name, const char *text) {
    FILE *f = fopen(tmp_path(name), "wb");
    CHECK(f != NULL);
    if (f) fputs(text, f), fclose(f);
}

static void test_atomic_stale_cleanup(void) {
    clear_dir();
    pid_t child = fork();
    if (child == 0) _exit(0);
    CHECK(child > 0 && waitpid(child, NULL, 0) == child); /* child's pid: no process now */
    char name[200];
    const char *keep[] = {"notes.tmp.txt", "a.tmp.12x.3", "b.tmp.5.", ".tmp.7.1"};
    for (size_t i = 0; i < sizeof keep / sizeof keep[0]; i++)
        write_plain(keep[i], "k");
    snprintf(name, sizeof name, "ckpt.safetensors.tmp.%ld.0", (long)child);
    write_plain(name, "stale"); /* as a writer killed mid-save leaves it */
    snprintf(name, sizeof name, "data.bin.tmp.%ld.17", (long)child);
    write_plain(name, "stale");
    snprintf(name, sizeof name, "mine.tmp.%ld.3", (long)getpid());
    write_plain(name, "live");
    write_plain("init.tmp.1.0", "live"); /* pid 1 is alive */
    CHECK(count_dir_entries() == 8);
    CHECK(hyb_atomic_write_buf(tmp_path("ckpt.safetensors"), "new", 3) == HYB_OK);
    CHECK_MSG(count_dir_entries() == 7, "%d entries (want 4 look-alikes, 2 live, the target)",
              count_dir_entries());
    snprintf(name, sizeof name, "ckpt.safetensors.tmp.%ld.0", (long)child);
    CHECK(access(tmp_path(name), F_OK) != 0);
    snprintf(name, sizeof name, "mine.tmp.%ld.3", (long)getpid());
    CHECK(access(tmp_path(name), F_OK) == 0);
    CHECK(hyb_atomic_clean_stale(g_dir) == 0);
    CHECK(hyb_atomic_clean_stale("/no/such/dir") == HYB_ERR_IO);
}

static void test_mkdir_p(void) {
    clear_dir();
    char p[600];
    snprintf(p, sizeof p, "%s/a/b/c", g_dir);
    CHECK(hyb_mkdir_p(p) == HYB_OK);
    CHECK(hyb_mkdir_p(p) == HYB_OK);
    struct stat sb;
    CHECK(stat(p, &sb) == 0 && S_ISDIR(sb.st_mode));
    rmdir(p);
    snprintf(p, sizeof p, "%s/a/b", g_dir);
    rmdir(p);
    snprintf(p, sizeof p, "%s/a", g_dir);
    rmdir(p);
    CHECK(hyb_atomic_write_buf(tmp_path("file"), "x", 1) == HYB_OK);
    CHECK(hyb_mkdir_p(tmp_path("file")) == HYB_ERR_IO);
    CHECK(hyb_mkdir_p(tmp_path("file/sub")) == HYB_ERR_IO);
}

int main(void) {
    /* tmpfs when there is one: the writers fsync, which is slow on a busy disk */
    snprintf(g_dir, sizeof g_dir, "%s/hyb_test_st_XXXXXX",
             access("/dev/shm", W_OK) == 0 ? "/dev/shm" : "/tmp");
    if (!mkdtemp(g_dir)) {
        perror("mkdtemp");
        return 1;
    }
    RUN(test_round_trip);
    RUN(test_reference_file);
    RUN(test_truncated_every_length);
    RUN(test_header_errors);
    RUN(test_header_fuzz);
    RUN(test_atomic_failure_leaves_nothing);
    RUN(test_atomic_stale_cleanup);
    RUN(test_mkdir_p);
    clear_dir();
    rmdir(g_dir);
    return harness_done();
}
