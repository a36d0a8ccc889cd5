/* test_gguf.c: the GGUF reader and the dequantisers against files written by the python `gguf`
 * package (tests/reference/gguf_ref.py -> tests/data/gguf/), plus malformed and truncated files.
 *
 * Dequantisation must be bit-identical to gguf.quants.dequantize (NaN inputs: any NaN). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "harness.h"
#include "hyb/gguf.h"

static char g_dir[1024];

static const char *data_path(const char *name, char *buf, size_t n) {
    snprintf(buf, n, "%s/gguf/%s", g_dir, name);
    return buf;
}

/* Whole file into memory (malloc); NULL on failure. */
static uint8_t *slurp(const char *name, size_t *size) {
    char p[1200];
    FILE *f = fopen(data_path(name, p, sizeof p), "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    uint8_t *b = malloc((size_t)n ? (size_t)n : 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    fclose(f);
    *size = (size_t)n;
    return b;
}

static int open_data(const char *name, hyb_gguf **g) {
    char p[1200];
    int rc = hyb_gguf_open(data_path(name, p, sizeof p), g);
    if (rc != HYB_OK) fprintf(stderr, "  open %s: %s\n", name, hyb_error());
    return rc;
}

static uint32_t f32_bits(float f) {
    uint32_t u;
    memcpy(&u, &f, 4);
    return u;
}

static int contains(const char *hay, const char *needle) {
    return strstr(hay, needle) != NULL;
}

/* ---- metadata --------------------------------------------------------------------------------*/

static void test_meta_scalars(void) {
    hyb_gguf *g;
    CHECK(open_data("meta.gguf", &g) == HYB_OK);
    if (!g) return;
    CHECK(hyb_gguf_version(g) == 3);
    CHECK(hyb_gguf_alignment(g) == 32);
    CHECK(hyb_gguf_data_offset(g) % 32 == 0);
    /* general.architecture + 14 scalars + 11 numeric arrays + string array + nested array */
    CHECK(hyb_gguf_kv_count(g) == 28);

    uint8_t u8;
    int8_t i8;
    uint16_t u16;
    int16_t i16;
    uint32_t u32;
    int32_t i32;
    uint64_t u64;
    int64_t i64;
    float f32;
    double f64;
    int b;
    CHECK(hyb_gguf_get_u8(g, "test.u8", &u8) == HYB_OK && u8 == 200);
    CHECK(hyb_gguf_get_i8(g, "test.i8", &i8) == HYB_OK && i8 == -100);
    CHECK(hyb_gguf_get_u16(g, "test.u16", &u16) == HYB_OK && u16 == 60000);
    CHECK(hyb_gguf_get_i16(g, "test.i16", &i16) == HYB_OK && i16 == -30000);
    CHECK(hyb_gguf_get_u32(g, "test.u32", &u32) == HYB_OK && u32 == 4000000000u);
    CHECK(hyb_gguf_get_i32(g, "test.i32", &i32) == HYB_OK && i32 == -2000000000);
    CHECK(hyb_gguf_get_u64(g, "test.u64", &u64) == HYB_OK && u64 == 18000000000000000000ull);
    CHECK(hyb_gguf_get_i64(g, "test.i64", &i64) == HYB_OK && i64 == -9000000000000000000ll);
    CHECK(hyb_gguf_get_f32(g, "test.f32", &f32) == HYB_OK && f32 == 3.14159265358979f);
    CHECK(hyb_gguf_get_f64(g, "test.f64", &f64) == HYB_OK && f64 == 2.718281828459045);
    CHECK(hyb_gguf_get_bool(g, "test.bool_t", &b) == HYB_OK && b == 1);
    CHECK(hyb_gguf_get_bool(g, "test.bool_f", &b) == HYB_OK && b == 0);

    const char *s;
    uint64_t len;
    CHECK(hyb_gguf_get_str(g, "general.architecture", &s, &len) == HYB_OK &&
          strcmp(s, "testarch") == 0 && len == 8);
    CHECK(hyb_gguf_get_str(g, "test.str", &s, &len) == HYB_OK &&
          strcmp(s, "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93") == 0 && len == 17);
    CHECK(hyb_gguf_get_str(g, "test.str_empty", &s, &len) == HYB_OK && s[0] == 0 && len == 0);

    /* lenient getters */
    int64_t v;
    double d;
    static const struct {
        const char *key;
        int64_t want;
    } ints[] = {{"test.u8", 200},          {"test.i8", -100},
                {"test.u16", 60000},       {"test.i16", -30000},
                {"test.u32", 4000000000ll}, {"test.i32", -2000000000},
                {"test.i64", -9000000000000000000ll}, {"test.bool_t", 1}};
    for (size_t i = 0; i < sizeof ints / sizeof ints[0]; i++)
        CHECK_MSG(hyb_gguf_get_int(g, ints[i].key, &v) == HYB_OK && v == ints[i].want,
                  "get_int %s: %lld", ints[i].key, (long long)v);
    CHECK(hyb_gguf_get_int(g, "test.u64", &v) == HYB_ERR_FORMAT && contains(hyb_error(), "int64"));
    CHECK(hyb_gguf_get_int(g, "test.f32", &v) == HYB_ERR_FORMAT && contains(hyb_error(), "f32"));
    CHECK(hyb_gguf_get_float(g, "test.f32", &d) == HYB_OK && d == (double)3.14159265358979f);
    CHECK(hyb_gguf_get_float(g, "test.f64", &d) == HYB_OK && d == 2.718281828459045);
    CHECK(hyb_gguf_get_float(g, "test.u32", &d) == HYB_OK && d == 4e9);
    CHECK(hyb_gguf_get_float(g, "test.str", &d) == HYB_ERR_FORMAT);

    /* wrong type / missing key: clear errors */
    CHECK(hyb_gguf_get_u32(g, "test.u8", &u32) == HYB_ERR_FORMAT);
    CHECK(contains(hyb_error(), "test.u8") && contains(hyb_error(), "u8") &&
          contains(hyb_error(), "u32") && contains(hyb_error(), "meta.gguf"));
    CHECK(hyb_gguf_get_str(g, "test.arr.str", &s, NULL) == HYB_ERR_FORMAT &&
          contains(hyb_error(), "array"));
    CHECK(hyb_gguf_get_u32(g, "no.such.key", &u32) == HYB_ERR_NOTFOUND &&
          contains(hyb_error(), "no.such.key"));
    CHECK(hyb_gguf_find_key(g, "no.such.key") == -1);
    int64_t k = hyb_gguf_find_key(g, "test.f64");
    CHECK(k >= 0 && strcmp(hyb_gguf_kv_key(g, k), "test.f64") == 0 &&
          hyb_gguf_kv_type(g, k) == HYB_GGUF_F64);
    CHECK(hyb_gguf_kv_key(g, 999) == NULL && hyb_gguf_kv_key(g, -1) == NULL);
    hyb_gguf_close(g);
}

static void test_meta_arrays(void) {
    hyb_gguf *g;
    CHECK(open_data("meta.gguf", &g) == HYB_OK);
    if (!g) return;
    const int N = 100;
    static const struct {
        const char *key;
        hyb_gguf_vtype t;
    } arrs[] = {{"test.arr.u8", HYB_GGUF_U8},    {"test.arr.i8", HYB_GGUF_I8},
                {"test.arr.u16", HYB_GGUF_U16},  {"test.arr.i16", HYB_GGUF_I16},
                {"test.arr.u32", HYB_GGUF_U32},  {"test.arr.i32", HYB_GGUF_I32},
                {"test.arr.u64", HYB_GGUF_U64},  {"test.arr.i64", HYB_GGUF_I64},
                {"test.arr.f32", HYB_GGUF_F32},  {"test.arr.f64", HYB_GGUF_F64},
                {"test.arr.bool", HYB_GGUF_BOOL}};
    for (size_t a = 0; a < sizeof arrs / sizeof arrs[0]; a++) {
        hyb_gguf_vtype et;
        uint64_t n;
        CHECK_MSG(hyb_gguf_get_arr(g, arrs[a].key, &et, &n) == HYB_OK && et == arrs[a].t &&
                      n == (uint64_t)N,
                  "%s: type %d len %llu", arrs[a].key, (int)et, (unsigned long long)n);
        int64_t kv = hyb_gguf_find_key(g, arrs[a].key);
        CHECK(hyb_gguf_kv_type(g, kv) == HYB_GGUF_ARRAY &&
              hyb_gguf_kv_arr_type(g, kv) == arrs[a].t);
        CHECK(hyb_gguf_kv_arr_len(g, kv) == (uint64_t)N);
        const uint8_t *raw = hyb_gguf_kv_arr_data(g, kv);
        CHECK(raw != NULL);
        int bad = 0;
        for (int i = 0; i < N && raw; i++) {
            int64_t iv = 0;
            double fv = 0;
            int rci = hyb_gguf_kv_arr_int(g, kv, (uint64_t)i, &iv);
            int rcf = hyb_gguf_kv_arr_float(g, kv, (uint64_t)i, &fv);
            switch (arrs[a].t) {
            case HYB_GGUF_U8:
                bad += rci || iv != (i * 37) % 256 || raw[i] != (i * 37) % 256;
                break;
            case HYB_GGUF_I8:
                bad += rci || iv != (i * 37) % 256 - 128;
                break;
            case HYB_GGUF_U16:
                bad += rci || iv != (i * 1000) % 65536;
                break;
            case HYB_GGUF_I16:
                bad += rci || iv != i * 600 - 30000;
                break;
            case HYB_GGUF_U32:
                bad += rci || iv != (int64_t)i * 40000000;
                break;
            case HYB_GGUF_I32:
                bad += rci || iv != (int64_t)i * 40000000 - 2000000000;
                break;
            case HYB_GGUF_U64: {
                uint64_t want = (uint64_t)i * 180000000000000000ull, got;
                memcpy(&got, raw + 8 * i, 8);
                bad += got != want || (want <= (uint64_t)INT64_MAX ? (rci || (uint64_t)iv != want)
                                                                   : rci == HYB_OK);
                break;
            }
            case HYB_GGUF_I64: /* the value fits; the products on the way do not: unsigned wraps */
                bad += rci || iv != (int64_t)((uint64_t)i * 180000000000000000ull -
                                              9000000000000000000ull);
                break;
            case HYB_GGUF_F32:
                bad += rcf || (float)fv != (float)i / 7.0f || rci == HYB_OK;
                break;
            case HYB_GGUF_F64:
                bad += rcf || fv != (double)i / 7.0;
                break;
            case HYB_GGUF_BOOL:
                bad += rci || iv != (i % 3 == 0);
                break;
            default:
                bad++;
            }
            (void)rcf;
        }
        CHECK_MSG(bad == 0, "%s: %d wrong elements", arrs[a].key, bad);
        int64_t iv;
        CHECK(hyb_gguf_kv_arr_int(g, kv, (uint64_t)N, &iv) == HYB_ERR_ARG &&
              contains(hyb_error(), "out of range"));
    }

    /* strings, incl. empty, embedded NUL, non-ASCII and long */
    int64_t kv = hyb_gguf_find_key(g, "test.arr.str");
    CHECK(kv >= 0 && hyb_gguf_kv_arr_type(g, kv) == HYB_GGUF_STRING &&
          hyb_gguf_kv_arr_len(g, kv) == 6);
    uint64_t len = 99;
    const char *s = hyb_gguf_kv_arr_str(g, kv, 0, &len);
    CHECK(s && len == 0 && s[0] == 0);
    s = hyb_gguf_kv_arr_str(g, kv, 1, &len);
    CHECK(s && len == 1 && strcmp(s, "a") == 0);
    s = hyb_gguf_kv_arr_str(g, kv, 2, &len);
    CHECK(s && len == 17 && strcmp(s, "h\xc3\xa9llo w\xc3\xb6rld \xe2\x9c\x93") == 0);
    s = hyb_gguf_kv_arr_str(g, kv, 3, &len);
    CHECK(s && len == 12 && strcmp(s, "tab\tnew\nline") == 0);
    s = hyb_gguf_kv_arr_str(g, kv, 4, &len);
    CHECK(s && len == 12 && memcmp(s, "embedded\0nul", 13) == 0);
    s = hyb_gguf_kv_arr_str(g, kv, 5, &len);
    CHECK(s && len == 300 && s[0] == 'x' && s[299] == 'x' && s[300] == 0);
    CHECK(hyb_gguf_kv_arr_str(g, kv, 6, &len) == NULL);
    CHECK(hyb_gguf_kv_arr_data(g, kv) == NULL);
    CHECK(hyb_gguf_kv_arr_str(g, hyb_gguf_find_key(g, "test.arr.u8"), 0, &len) == NULL);

    /* nested arrays: visible, skipped correctly (the keys after it parse), not decodable */
    kv = hyb_gguf_find_key(g, "test.arr.nested");
    CHECK(kv >= 0 && hyb_gguf_kv_arr_type(g, kv) == HYB_GGUF_ARRAY &&
          hyb_gguf_kv_arr_len(g, kv) == 3);
    int64_t iv;
    CHECK(hyb_gguf_kv_arr_int(g, kv, 0, &iv) == HYB_ERR_ARG);
    CHECK(hyb_gguf_kv_arr_data(g, kv) == NULL);
    hyb_gguf_close(g);
}

/* ---- tensors ----------------------------------------------------------------------------------*/

static void test_meta_tensors(void) {
    hyb_gguf *g;
    CHECK(open_data("meta.gguf", &g) == HYB_OK);
    if (!g) return;
    CHECK(hyb_gguf_tensor_count(g) == 4);
    int64_t i = hyb_gguf_find_tensor(g, "t4d");
    const hyb_gguf_tensor *t = hyb_gguf_tensor_at(g, i);
    CHECK(t && t->ndim == 4 && t->shape[0] == 2 && t->shape[1] == 3 && t->shape[2] == 4 &&
          t->shape[3] == 5);
    CHECK(t && t->type == HYB_GGML_F32 && t->numel == 120 && t->nbytes == 480);
    CHECK(t && t->file_offset == hyb_gguf_data_offset(g) + t->offset && t->offset % 32 == 0);
    float buf[128];
    CHECK(hyb_gguf_tensor_to_f32(g, i, buf) == HYB_OK);
    /* element [a][b][c][d] (PyTorch order) is at ((a*3+b)*4+c)*5+d and equals that index */
    int bad = 0;
    for (int a = 0; a < 2; a++)
        for (int b = 0; b < 3; b++)
            for (int c = 0; c < 4; c++)
                for (int d = 0; d < 5; d++) {
                    int k = ((a * 3 + b) * 4 + c) * 5 + d;
                    bad += buf[k] != (float)k;
                }
    CHECK(bad == 0);

    t = hyb_gguf_tensor_at(g, hyb_gguf_find_tensor(g, "t3d"));
    CHECK(t && t->ndim == 3 && t->shape[0] == 3 && t->shape[1] == 2 && t->shape[2] == 8 &&
          t->shape[3] == 1);
    CHECK(hyb_gguf_tensor_to_f32(g, hyb_gguf_find_tensor(g, "t3d"), buf) == HYB_OK &&
          buf[47] == 23.5f);

    t = hyb_gguf_tensor_at(g, hyb_gguf_find_tensor(g, "vec"));
    CHECK(t && t->ndim == 1 && t->shape[0] == 7);
    CHECK(hyb_gguf_tensor_to_f32(g, hyb_gguf_find_tensor(g, "vec"), buf) == HYB_OK &&
          buf[0] == -3.0f && buf[6] == 3.0f);

    i = hyb_gguf_find_tensor(g, "mat_i32");
    t = hyb_gguf_tensor_at(g, i);
    CHECK(t && t->type == HYB_GGML_I32 && t->ndim == 2 && t->shape[0] == 3 && t->shape[1] == 4);
    CHECK(hyb_gguf_tensor_to_f32(g, i, buf) == HYB_OK && buf[11] == -33.0f && buf[1] == -3.0f);

    CHECK(hyb_gguf_find_tensor(g, "nope") == -1);
    CHECK(hyb_gguf_tensor_at(g, 4) == NULL && hyb_gguf_tensor_at(g, -1) == NULL);
    CHECK(hyb_gguf_tensor_to_f32(g, 4, buf) == HYB_ERR_ARG &&
          contains(hyb_error(), "out of range"));

    /* hyb_tensor load (needs core's hyb_tensor_new) */
    hyb_tensor *x = NULL;
    CHECK(hyb_gguf_tensor_load(g, hyb_gguf_find_tensor(g, "t4d"), HYB_F32, &x) == HYB_OK);
    CHECK(x && x->ndim == 4 && x->shape[0] == 2 && x->shape[3] == 5 &&
          strcmp(x->name, "t4d") == 0 && ((float *)x->data)[119] == 119.0f);
    hyb_tensor_free(x);
    CHECK(hyb_gguf_tensor_load(g, 0, HYB_Q8_0, &x) == HYB_ERR_ARG && x == NULL);
    hyb_gguf_close(g);
}

static void test_align64(void) {
    hyb_gguf *g;
    CHECK(open_data("align64.gguf", &g) == HYB_OK);
    if (!g) return;
    CHECK(hyb_gguf_alignment(g) == 64 && hyb_gguf_data_offset(g) % 64 == 0);
    float buf[16];
    for (int64_t i = 0; i < hyb_gguf_tensor_count(g); i++) {
        const hyb_gguf_tensor *t = hyb_gguf_tensor_at(g, i);
        CHECK(t->offset % 64 == 0 && t->file_offset % 64 == 0);
    }
    CHECK(hyb_gguf_tensor_to_f32(g, hyb_gguf_find_tensor(g, "a"), buf) == HYB_OK && buf[4] == 4.0f);
    const hyb_gguf_tensor *b = hyb_gguf_tensor_at(g, hyb_gguf_find_tensor(g, "b"));
    CHECK(b && b->type == HYB_GGML_F16 && b->shape[0] == 3 && b->shape[1] == 3);
    CHECK(hyb_gguf_tensor_to_f32(g, hyb_gguf_find_tensor(g, "b"), buf) == HYB_OK &&
          buf[5] == 1.25f && buf[8] == 2.0f);
    CHECK(hyb_gguf_tensor_to_f32(g, hyb_gguf_find_tensor(g, "c"), buf) == HYB_OK &&
          buf[2] == 102.0f);
    hyb_gguf_close(g);
}

/* ---- dequantisation: every type against gguf.quants.dequantize --------------------------------*/

static uint16_t ref_bf16(float f) { /* round to nearest even, NaN quiet (ggml's rule) */
    uint32_t u = f32_bits(f);
    if ((u & 0x7fffffffu) > 0x7f800000u) return (uint16_t)((u >> 16) | 64);
    return (uint16_t)((u + 0x7fffu + ((u >> 16) & 1u)) >> 16);
}

static void test_quants(void) {
    hyb_gguf *g;
    CHECK(open_data("quants.gguf", &g) == HYB_OK);
    if (!g) return;
    char p[1200];
    FILE *f = fopen(data_path("quants.txt", p, sizeof p), "r");
    CHECK(f != NULL);
    if (!f) {
        hyb_gguf_close(g);
        return;
    }
    char line[512];
    int n_checked = 0, types_seen[64] = {0};
    while (fgets(line, sizeof line, f)) {
        if (line[0] == '#') continue;
        char name[64], tname[32];
        int64_t shape[4] = {1, 1, 1, 1};
        int nd = sscanf(line, "%63s %31s %ld %ld %ld %ld", name, tname, (long *)&shape[0],
                        (long *)&shape[1], (long *)&shape[2], (long *)&shape[3]) -
                 2;
        if (nd < 1) continue;
        int64_t ti = hyb_gguf_find_tensor(g, name);
        const hyb_gguf_tensor *t = hyb_gguf_tensor_at(g, ti);
        CHECK_MSG(t != NULL, "tensor %s missing", name);
        if (!t) continue;
        CHECK_MSG(strcmp(hyb_ggml_type_name(t->type), tname) == 0, "%s: type %s, want %s", name,
                  hyb_ggml_type_name(t->type), tname);
        CHECK_MSG(t->ndim == nd, "%s: ndim %d want %d", name, t->ndim, nd);
        for (int d = 0; d < nd; d++)
            CHECK_MSG(t->shape[d] == shape[d], "%s: shape[%d]", name, d);
        if (t->type >= 0 && t->type < 64) types_seen[t->type] = 1;

        char ename[96];
        snprintf(ename, sizeof ename, "expect_%s.f32", name);
        size_t esz;
        float *want = (float *)slurp(ename, &esz);
        CHECK_MSG(want && esz == (size_t)t->numel * 4, "%s: expected file", ename);
        float *got = malloc((size_t)t->numel * sizeof(float));
        uint16_t *bf = malloc((size_t)t->numel * sizeof(uint16_t));
        int rc = hyb_gguf_tensor_to_f32(g, ti, got);
        CHECK_MSG(rc == HYB_OK, "%s: %s", name, hyb_error());
        if (want && rc == HYB_OK) {
            int64_t bad = 0, first = -1;
            for (int64_t k = 0; k < t->numel; k++) {
                int same = (want[k] != want[k]) ? (got[k] != got[k])
                                                : f32_bits(got[k]) == f32_bits(want[k]);
                if (!same && bad++ == 0) first = k;
            }
            CHECK_MSG(
                bad == 0,
                "%s: %lld of %lld values differ, first at %lld: %.9g vs %.9g (bits %08x vs %08x)",
                name, (long long)bad, (long long)t->numel, (long long)first,
                first >= 0 ? got[first] : 0.0, first >= 0 ? want[first] : 0.0,
                first >= 0 ? f32_bits(got[first]) : 0, first >= 0 ? f32_bits(want[first]) : 0);
            /* the same through hyb_dequantize for types that have a hyb dtype */
            hyb_dtype dt;
            if (hyb_ggml_type_to_dtype(t->type, &dt) == HYB_OK) {
                memset(got, 0, (size_t)t->numel * 4);
                CHECK(hyb_dequantize(dt, t->data, got, t->numel) == HYB_OK);
                bad = 0;
                for (int64_t k = 0; k < t->numel; k++)
                    bad += !((want[k] != want[k]) ? (got[k] != got[k])
                                                  : f32_bits(got[k]) == f32_bits(want[k]));
                CHECK_MSG(bad == 0, "%s: hyb_dequantize differs in %lld values", name,
                          (long long)bad);
            }
            /* bf16 output: round to nearest even of the f32 values */
            CHECK(hyb_gguf_tensor_to_bf16(g, ti, bf) == HYB_OK);
            bad = 0;
            for (int64_t k = 0; k < t->numel; k++) {
                uint16_t r = ref_bf16(want[k]);
                if (want[k] != want[k])
                    bad += (bf[k] & 0x7f80) != 0x7f80 || !(bf[k] & 0x7f);
                else
                    bad += bf[k] != r;
            }
            CHECK_MSG(bad == 0, "%s: bf16 differs in %lld values", name, (long long)bad);
            n_checked++;
        }
        free(want);
        free(got);
        free(bf);
    }
    fclose(f);
    CHECK_MSG(n_checked >= 24, "only %d tensors checked", n_checked);
    static const int required[] = {HYB_GGML_F32,  HYB_GGML_F16,  HYB_GGML_BF16, HYB_GGML_Q8_0,
                                   HYB_GGML_Q4_0, HYB_GGML_Q4_1, HYB_GGML_Q4_K, HYB_GGML_Q6_K,
                                   HYB_GGML_Q5_0, HYB_GGML_Q5_1, HYB_GGML_Q5_K, HYB_GGML_Q8_K,
                                   HYB_GGML_Q2_K, HYB_GGML_Q3_K};
    for (size_t k = 0; k < sizeof required / sizeof required[0]; k++)
        CHECK_MSG(types_seen[required[k]], "type %s not covered", hyb_ggml_type_name(required[k]));
    hyb_gguf_close(g);
}

static void test_dequant_args(void) {
    uint8_t blk[292] = {0};
    float out[256];
    CHECK(hyb_ggml_dequantize(HYB_GGML_Q4_0, blk, out, 31) == HYB_ERR_ARG &&
          contains(hyb_error(), "block size 32"));
    CHECK(hyb_ggml_dequantize(HYB_GGML_Q6_K, blk, out, 32) == HYB_ERR_ARG);
    CHECK(hyb_ggml_dequantize(HYB_GGML_Q4_0, blk, out, -32) == HYB_ERR_ARG);
    CHECK(hyb_ggml_dequantize(99, blk, out, 32) == HYB_ERR_UNSUPPORTED &&
          contains(hyb_error(), "99"));
    CHECK(hyb_ggml_dequantize(16 /* IQ2_XXS */, blk, out, 256) == HYB_ERR_UNSUPPORTED &&
          contains(hyb_error(), "IQ2_XXS"));
    CHECK(hyb_ggml_dequantize(HYB_GGML_Q4_0, NULL, NULL, 0) == HYB_OK);
    CHECK(hyb_dequantize(HYB_DTYPE_COUNT, blk, out, 1) == HYB_ERR_UNSUPPORTED);
    /* zero scale block gives zeros; a hand-made Q8_0 block: d = 0.5 (f16 0x3800), q = -3 -> -1.5 */
    blk[0] = 0x00;
    blk[1] = 0x38;
    for (int j = 0; j < 32; j++)
        blk[2 + j] = (uint8_t)(int8_t)(j - 16);
    CHECK(hyb_dequantize(HYB_Q8_0, blk, out, 32) == HYB_OK && out[0] == -8.0f && out[13] == -1.5f &&
          out[31] == 7.5f);
    /* hand-made Q4_1: d = 1, m = -2 (0xC000), nibbles j & 15 / j >> 4 */
    memset(blk, 0, sizeof blk);
    blk[1] = 0x3C;
    blk[3] = 0xC0;
    for (int j = 0; j < 16; j++)
        blk[4 + j] = (uint8_t)(j | ((15 - j) << 4));
    CHECK(hyb_dequantize(HYB_Q4_1, blk, out, 32) == HYB_OK && out[0] == -2.0f && out[5] == 3.0f &&
          out[16] == 13.0f && out[31] == -2.0f);
    CHECK(hyb_ggml_block_elems(HYB_GGML_Q4_K) == 256 && hyb_ggml_block_bytes(HYB_GGML_Q4_K) == 144);
    CHECK(hyb_ggml_block_bytes(HYB_GGML_Q6_K) == 210 && hyb_ggml_block_bytes(HYB_GGML_Q4_1) == 20);
    CHECK(hyb_ggml_type_name(4) == NULL && hyb_ggml_block_elems(4) == 0);
    CHECK(hyb_ggml_type_from_dtype(HYB_Q4_K) == HYB_GGML_Q4_K &&
          hyb_ggml_type_from_dtype(HYB_BF16) == HYB_GGML_BF16);
}

/* ---- malformed files --------------------------------------------------------------------------*/

/* Open a private exact-size copy (so ASan sees any read past the end). */
static int open_copy(const uint8_t *buf, size_t n, hyb_gguf **g) {
    uint8_t *c = malloc(n ? n : 1);
    memcpy(c, buf, n);
    int rc = hyb_gguf_open_memory(c, n, "bad.gguf", g);
    if (rc == HYB_OK) {
        /* touch every tensor */
        for (int64_t i = 0; i < hyb_gguf_tensor_count(*g); i++) {
            const hyb_gguf_tensor *t = hyb_gguf_tensor_at(*g, i);
            if (hyb_ggml_can_dequantize(t->type) && t->numel <= (1 << 20)) {
                float *o = malloc((size_t)t->numel * 4 + 4);
                hyb_gguf_tensor_to_f32(*g, i, o);
                free(o);
            }
        }
        hyb_gguf_close(*g);
        *g = NULL;
    }
    free(c);
    return rc;
}

static void put_u32(uint8_t *p, uint32_t v) {
    for (int i = 0; i < 4; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}
static void put_u64(uint8_t *p, uint64_t v) {
    for (int i = 0; i < 8; i++)
        p[i] = (uint8_t)(v >> (8 * i));
}

/* Offset of the u64 length prefix of the first string `s` in buf. */
static size_t find_str(const uint8_t *buf, size_t n, const char *s) {
    size_t L = strlen(s);
    for (size_t i = 8; i + L <= n; i++) {
        uint64_t len = 0;
        for (int k = 0; k < 8; k++)
            len |= (uint64_t)buf[i - 8 + k] << (8 * k);
        if (len == L && memcmp(buf + i, s, L) == 0) return i - 8;
    }
    return 0;
}

/* Expect failure with a message naming the file, an offset and `what`. */
#define EXPECT_BAD(buf, n, code, what)                                                             \
    do {                                                                                           \
        hyb_gguf *g_ = NULL;                                                                       \
        int rc_ = open_copy((buf), (n), &g_);                                                      \
        CHECK_MSG(rc_ == (code), "expected %d, got %d (%s)", (code), rc_, hyb_error());            \
        CHECK_MSG(contains(hyb_error(), "bad.gguf") && contains(hyb_error(), "offset") &&          \
                      contains(hyb_error(), (what)),                                               \
                  "message '%s' lacks '%s'", hyb_error(), (what));                                 \
        CHECK(g_ == NULL);                                                                         \
    } while (0)

static void test_truncated_every_length(void) {
    size_t n;
    uint8_t *buf = slurp("meta.gguf", &n);
    CHECK(buf != NULL);
    if (!buf) return;
    hyb_gguf *g;
    CHECK(hyb_gguf_open_memory(buf, n, "meta.gguf", &g) == HYB_OK);
    if (!g) {
        free(buf);
        return;
    }
    /* the file is complete once the last tensor's data is there (the rest is padding) */
    uint64_t need = 0;
    for (int64_t i = 0; i < hyb_gguf_tensor_count(g); i++) {
        const hyb_gguf_tensor *t = hyb_gguf_tensor_at(g, i);
        if (t->file_offset + t->nbytes > need) need = t->file_offset + t->nbytes;
    }
    hyb_gguf_close(g);
    int wrong = 0, unclear = 0;
    for (size_t len = 0; len < n; len++) {
        hyb_gguf *h = NULL;
        int rc = open_copy(buf, len, &h);
        int should_fail = len < need;
        if (should_fail != (rc != HYB_OK)) wrong++;
        if (rc != HYB_OK &&
            (rc != HYB_ERR_FORMAT || !contains(hyb_error(), "bad.gguf: offset") ||
             !(contains(hyb_error(), "truncated") || contains(hyb_error(), "beyond the end") ||
               contains(hyb_error(), "bytes left")))) {
            if (unclear++ < 20)
                fprintf(stderr, "  length %zu: unclear message: %s\n", len, hyb_error());
        }
    }
    CHECK_MSG(wrong == 0, "%d truncation lengths gave the wrong verdict", wrong);
    CHECK_MSG(unclear == 0, "%d truncation messages unclear", unclear);
    free(buf);
}

static void test_malformed(void) {
    size_t n;
    uint8_t *orig = slurp("meta.gguf", &n);
    CHECK(orig != NULL);
    if (!orig) return;
    uint8_t *b = malloc(n);
    hyb_gguf *g = NULL;

    /* the pristine copy opens; a v2 header opens too (same layout) */
    CHECK(open_copy(orig, n, &g) == HYB_OK);
    memcpy(b, orig, n);
    put_u32(b + 4, 2);
    CHECK(open_copy(b, n, &g) == HYB_OK);

    memcpy(b, orig, n);
    b[0] = 'G', b[1] = 'G', b[2] = 'M', b[3] = 'L';
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "bad magic");
    memcpy(b, orig, n);
    put_u32(b + 4, 1);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "version 1");
    put_u32(b + 4, 99);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "unsupported GGUF version 99");
    put_u32(b + 4, 0x03000000u);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "big-endian");

    /* absurd counts: errors, not allocations */
    memcpy(b, orig, n);
    put_u64(b + 16, 1ull << 60);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "kv count");
    memcpy(b, orig, n);
    put_u64(b + 8, 1ull << 60);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "tensor count");
    memcpy(b, orig, n);
    put_u64(b + 8, UINT64_MAX);
    put_u64(b + 16, UINT64_MAX);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "count");
    /* more kvs than written: the tensor infos are read as kvs and fail somewhere, cleanly */
    memcpy(b, orig, n);
    put_u64(b + 16, 29);
    {
        hyb_gguf *h = NULL;
        CHECK(open_copy(b, n, &h) != HYB_OK && contains(hyb_error(), "bad.gguf: offset"));
    }

    /* bad string length in the first key */
    memcpy(b, orig, n);
    put_u64(b + 24, 1ull << 62);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "bad string length");
    memcpy(b, orig, n);
    put_u64(b + 24, 0);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "empty key");

    /* unknown value type / array element type, bool not 0/1, array length too large */
    size_t k = find_str(orig, n, "test.u8");
    CHECK(k > 0);
    memcpy(b, orig, n);
    put_u32(b + k + 8 + 7, 77);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "unknown value type 77");
    k = find_str(orig, n, "test.bool_t");
    memcpy(b, orig, n);
    b[k + 8 + 11 + 4] = 2;
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "bool");
    k = find_str(orig, n, "test.arr.u16");
    CHECK(k > 0);
    memcpy(b, orig, n);
    put_u32(b + k + 8 + 12 + 4, 13);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "unknown array element type 13");
    memcpy(b, orig, n);
    put_u64(b + k + 8 + 12 + 8, 1ull << 61);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "array length");
    k = find_str(orig, n, "test.arr.str");
    memcpy(b, orig, n);
    put_u64(b + k + 8 + 12 + 8, 1ull << 59);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "array length");
    /* a string inside the string array claims too many bytes */
    memcpy(b, orig, n);
    put_u64(b + k + 8 + 12 + 16, 1ull << 40);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "bad string length");
    /* duplicate key: rename test.i8 -> test.u8 */
    k = find_str(orig, n, "test.i8");
    memcpy(b, orig, n);
    b[k + 8 + 5] = 'u';
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "duplicate key 'test.u8'");

    /* tensor infos: name, n_dims, ne[], type, offset */
    size_t t4 = find_str(orig, n, "t4d");
    size_t t3 = find_str(orig, n, "t3d");
    CHECK(t4 > 0 && t3 > 0);
    size_t t4_type = t4 + 8 + 3 + 4 + 4 * 8, t4_off = t4_type + 4;
    size_t t3_type = t3 + 8 + 3 + 4 + 3 * 8, t3_off = t3_type + 4;
    memcpy(b, orig, n);
    put_u32(b + t4_type, 1000);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "unknown tensor type 1000");
    memcpy(b, orig, n);
    put_u32(b + t4 + 11, 5);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "5 dimensions");
    memcpy(b, orig, n);
    put_u32(b + t4 + 11, 0);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "0 dimensions");
    memcpy(b, orig, n);
    put_u64(b + t4 + 15, 1ull << 62); /* ne[0] huge: numel overflows or data beyond EOF */
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "t4d");
    memcpy(b, orig, n);
    put_u64(b + t4 + 15, 1ull << 63);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "too large");
    memcpy(b, orig, n);
    put_u32(b + t4_type, HYB_GGML_Q4_0); /* ne[0] = 5 is not a multiple of 32 */
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "not a multiple of the Q4_0 block size");
    memcpy(b, orig, n);
    put_u64(b + t4_off, 1ull << 40);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "beyond the end of the file");
    memcpy(b, orig, n);
    put_u64(b + t4_off, UINT64_MAX - 31);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "beyond the end of the file");
    memcpy(b, orig, n);
    put_u64(b + t4_off, 4);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "not a multiple of the alignment");
    memcpy(b, orig, n);
    put_u64(b + t3_off, 0); /* t3d on top of t4d */
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "overlaps");
    memcpy(b, orig, n);
    b[t3 + 9] = '4'; /* t3d -> t4d */
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "two tensors are named 't4d'");
    memcpy(b, orig, n);
    put_u64(b + t4, 0);
    EXPECT_BAD(b, n, HYB_ERR_FORMAT, "empty name");

    /* alignment must be a power of two */
    free(b);
    free(orig);
    orig = slurp("align64.gguf", &n);
    CHECK(orig != NULL);
    if (orig) {
        b = malloc(n);
        k = find_str(orig, n, "general.alignment");
        CHECK(k > 0);
        memcpy(b, orig, n);
        put_u32(b + k + 8 + 17 + 4, 48);
        EXPECT_BAD(b, n, HYB_ERR_FORMAT, "power of two");
        memcpy(b, orig, n);
        put_u32(b + k + 8 + 17, HYB_GGUF_I32);
        EXPECT_BAD(b, n, HYB_ERR_FORMAT, "general.alignment has type i32");
        free(b);
        free(orig);
    }
}

static void test_open_errors(void) {
    hyb_gguf *g = (hyb_gguf *)1;
    CHECK(hyb_gguf_open("/nonexistent/dir/x.gguf", &g) == HYB_ERR_IO && g == NULL);
    CHECK(contains(hyb_error(), "/nonexistent/dir/x.gguf"));
    CHECK(hyb_gguf_open(g_dir, &g) == HYB_ERR_IO && contains(hyb_error(), "not a regular file"));
    char p[256];
    snprintf(p, sizeof p, "/tmp/hyb_test_gguf_%d.gguf", (int)getpid());
    FILE *f = fopen(p, "wb");
    CHECK(f != NULL);
    if (f) {
        fwrite("GGUF", 1, 4, f);
        fclose(f);
        CHECK(hyb_gguf_open(p, &g) == HYB_ERR_FORMAT && contains(hyb_error(), "truncated") &&
              contains(hyb_error(), p));
        f = fopen(p, "wb");
        fclose(f);
        CHECK(hyb_gguf_open(p, &g) == HYB_ERR_FORMAT && contains(hyb_error(), "truncated"));
        remove(p);
    }
    CHECK(hyb_gguf_open_memory(NULL, 0, "empty", &g) == HYB_ERR_FORMAT &&
          contains(hyb_error(), "empty: offset 0"));
    hyb_gguf_close(NULL);
}

/* Random byte corruption: must never crash or read out of bounds (run under ASan in CI). */
static void test_fuzz_mutations(void) {
    const char *files[] = {"meta.gguf", "quants.gguf", "align64.gguf"};
    uint64_t s = 0x9E3779B97F4A7C15ull;
    int opened = 0, failed = 0;
    for (size_t fi = 0; fi < 3; fi++) {
        size_t n;
        uint8_t *orig = slurp(files[fi], &n);
        CHECK(orig != NULL);
        if (!orig) continue;
        /* mutate mostly the header + metadata + tensor infos, where the parser works */
        hyb_gguf *g;
        hyb_gguf_open_memory(orig, n, files[fi], &g);
        size_t meta_end = g ? (size_t)hyb_gguf_data_offset(g) : n;
        hyb_gguf_close(g);
        uint8_t *b = malloc(n);
        for (int it = 0; it < 600; it++) {
            memcpy(b, orig, n);
            int nmut = 1 + (int)(s % 4);
            for (int m = 0; m < nmut; m++) {
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                size_t pos = (size_t)(s >> 8) % meta_end;
                s ^= s << 13, s ^= s >> 7, s ^= s << 17;
                b[pos] = (s & 1) ? (uint8_t)(s >> 16) : (uint8_t)(b[pos] ^ (1u << ((s >> 8) & 7)));
            }
            s ^= s << 13, s ^= s >> 7, s ^= s << 17;
            size_t len = (s % 5 == 0) ? (size_t)(s >> 20) % (n + 1) : n;
            hyb_gguf *h = NULL;
            if (open_copy(b, len, &h) == HYB_OK)
                opened++;
            else {
                failed++;
                CHECK_MSG(hyb_error()[0] != 0, "failure without a message");
            }
        }
        free(b);
        free(orig);
    }
    fprintf(stderr, "  fuzz: %d mutated files opened, %d rejected\n", opened, failed);
    CHECK(failed > 0);
}

int main(void) {
    const char *d = getenv("HYB_TEST_DATA");
    snprintf(g_dir, sizeof g_dir, "%s", d && d[0] ? d : "tests/data");
    RUN(test_meta_scalars);
    RUN(test_meta_arrays);
    RUN(test_meta_tensors);
    RUN(test_align64);
    RUN(test_quants);
    RUN(test_dequant_args);
    RUN(test_truncated_every_length);
    RUN(test_malformed);
    RUN(test_open_errors);
    RUN(test_fuzz_mutations);
    return harness_done();
}
