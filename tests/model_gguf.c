/* model_gguf.c: the default model's GGUF file (SmolLM2-135M-Instruct.Q4_1.gguf) read by hyb and
 * compared with the python gguf package's reading of it (tests/data/gguf/smollm2_golden.txt,
 * made by tests/reference/gguf_ref.py --model): every metadata entry, every tensor's type, shape
 * and offset, every dequantised tensor (exact bit checksum, double sums) and the first 4096 values
 * of a few tensors. Skips (77) when the model file is absent.
 *
 * Model path: $HYB_MODEL, else ~/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf
 * (scripts/fetch_model.sh puts it there). */
#define _GNU_SOURCE
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "harness.h"
#include "hyb/gguf.h"

static char g_model[1024], g_dir[1024];
static hyb_gguf *g_g;

static uint64_t fnv1a(const void *p, size_t n, uint64_t h) {
    const uint8_t *b = p;
    for (size_t i = 0; i < n; i++) {
        h ^= b[i];
        h *= 0x100000001B3ull;
    }
    return h;
}

static int vtype_from_name(const char *s) {
    static const char *names[] = {"UINT8",  "INT8",    "UINT16", "INT16",  "UINT32",
                                  "INT32",  "FLOAT32", "BOOL",   "STRING", "ARRAY",
                                  "UINT64", "INT64",   "FLOAT64"};
    for (int i = 0; i < 13; i++)
        if (strcmp(s, names[i]) == 0) return i;
    return -1;
}

static int hexval(char c) {
    return c >= '0' && c <= '9' ? c - '0' : c >= 'a' && c <= 'f' ? c - 'a' + 10 : -1;
}

/* The file's architecture facts, read through the public getters (SPEC.md section 9). */
static void test_model_metadata(void) {
    hyb_gguf *g = g_g;
    const char *arch;
    CHECK(hyb_gguf_get_str(g, "general.architecture", &arch, NULL) == HYB_OK &&
          strcmp(arch, "llama") == 0);
    int64_t v;
    double f;
    CHECK(hyb_gguf_get_int(g, "llama.block_count", &v) == HYB_OK && v == 30);
    CHECK(hyb_gguf_get_int(g, "llama.embedding_length", &v) == HYB_OK && v == 576);
    CHECK(hyb_gguf_get_int(g, "llama.attention.head_count", &v) == HYB_OK && v == 9);
    CHECK(hyb_gguf_get_int(g, "llama.attention.head_count_kv", &v) == HYB_OK && v == 3);
    CHECK(hyb_gguf_get_int(g, "llama.feed_forward_length", &v) == HYB_OK && v == 1536);
    CHECK(hyb_gguf_get_int(g, "llama.vocab_size", &v) == HYB_OK && v == 49152);
    CHECK(hyb_gguf_get_int(g, "llama.rope.dimension_count", &v) == HYB_OK && v == 64);
    float theta, eps;
    CHECK(hyb_gguf_get_f32(g, "llama.rope.freq_base", &theta) == HYB_OK && theta == 100000.0f);
    CHECK(hyb_gguf_get_f32(g, "llama.attention.layer_norm_rms_epsilon", &eps) == HYB_OK &&
          eps == 1e-5f);
    CHECK(hyb_gguf_get_float(g, "llama.attention.layer_norm_rms_epsilon", &f) == HYB_OK &&
          f == (double)1e-5f);
    hyb_gguf_vtype et;
    uint64_t n;
    CHECK(hyb_gguf_get_arr(g, "tokenizer.ggml.tokens", &et, &n) == HYB_OK &&
          et == HYB_GGUF_STRING && n == 49152);
    int64_t kv = hyb_gguf_find_key(g, "tokenizer.ggml.tokens");
    uint64_t len;
    const char *tok = hyb_gguf_kv_arr_str(g, kv, 1, &len);
    CHECK(tok && strcmp(tok, "<|im_start|>") == 0 && len == 12);
    CHECK(hyb_gguf_alignment(g) == 32);
    printf("  %s: GGUF v%u, %lld kv, %lld tensors, arch %s, data at %llu\n", g_model,
           hyb_gguf_version(g), (long long)hyb_gguf_kv_count(g),
           (long long)hyb_gguf_tensor_count(g), arch, (unsigned long long)hyb_gguf_data_offset(g));
}

/* ---- against the golden file ------------------------------------------------------------------*/

static void check_kv_line(char *line) {
    hyb_gguf *g = g_g;
    char kind[8], key[256], a[64], b[64];
    if (sscanf(line, "%7s %255s", kind, key) != 2) return;
    int64_t kv = hyb_gguf_find_key(g, key);
    CHECK_MSG(kv >= 0, "key %s missing", key);
    if (kv < 0) return;
    if (strcmp(kind, "num") == 0) {
        double want;
        CHECK(sscanf(line, "%*s %*s %63s %lf", a, &want) == 2);
        int t = vtype_from_name(a);
        CHECK_MSG((int)hyb_gguf_kv_type(g, kv) == t, "%s: type %d want %s", key,
                  (int)hyb_gguf_kv_type(g, kv), a);
        double got;
        if (t == HYB_GGUF_BOOL) {
            int bv;
            CHECK(hyb_gguf_get_bool(g, key, &bv) == HYB_OK && bv == (int)want);
        } else {
            CHECK(hyb_gguf_get_float(g, key, &got) == HYB_OK);
            if (t == HYB_GGUF_F32) want = (double)(float)want;
            CHECK_MSG(got == want, "%s = %.17g, want %.17g", key, got, want);
        }
    } else if (strcmp(kind, "str") == 0) {
        char *hex = line + strlen("str ") + strlen(key) + 1;
        hex[strcspn(hex, "\r\n")] = 0;
        const char *s;
        uint64_t len;
        CHECK_MSG(hyb_gguf_get_str(g, key, &s, &len) == HYB_OK, "%s: %s", key, hyb_error());
        size_t hl = strcmp(hex, "-") == 0 ? 0 : strlen(hex);
        int ok = hl / 2 == len;
        for (size_t i = 0; ok && i < len; i++)
            ok = (hexval(hex[2 * i]) << 4 | hexval(hex[2 * i + 1])) == (uint8_t)s[i];
        CHECK_MSG(ok, "string %s differs", key);
    } else if (strcmp(kind, "arr") == 0) {
        unsigned long long want_n;
        CHECK(sscanf(line, "%*s %*s %63s %llu %63s", a, &want_n, b) == 3);
        uint64_t want_h = strtoull(b, NULL, 16);
        int et = vtype_from_name(a);
        CHECK_MSG((int)hyb_gguf_kv_arr_type(g, kv) == et && hyb_gguf_kv_arr_len(g, kv) == want_n,
                  "array %s", key);
        uint64_t h = 0xCBF29CE484222325ull, n = hyb_gguf_kv_arr_len(g, kv);
        if (et == HYB_GGUF_STRING) {
            for (uint64_t i = 0; i < n; i++) {
                uint64_t len;
                const char *s = hyb_gguf_kv_arr_str(g, kv, i, &len);
                uint8_t l8[8];
                for (int k = 0; k < 8; k++)
                    l8[k] = (uint8_t)(len >> (8 * k));
                h = fnv1a(l8, 8, h);
                h = fnv1a(s, (size_t)len, h);
            }
        } else {
            static const int sz[] = {1, 1, 2, 2, 4, 4, 4, 1, 0, 0, 8, 8, 8};
            h = fnv1a(hyb_gguf_kv_arr_data(g, kv), (size_t)(n * (uint64_t)sz[et]), h);
        }
        CHECK_MSG(h == want_h, "array %s: hash %016llx want %016llx", key, (unsigned long long)h,
                  (unsigned long long)want_h);
    }
}

static uint64_t bits_checksum(const float *x, int64_t n) {
    uint64_t s = 0;
    for (int64_t i = 0; i < n; i++) {
        uint32_t u;
        memcpy(&u, &x[i], 4);
        s += ((uint64_t)u + 1) * (2 * (uint64_t)i + 1);
    }
    return s;
}

static void test_model_golden(void) {
    hyb_gguf *g = g_g;
    char p[1200];
    snprintf(p, sizeof p, "%s/gguf/smollm2_golden.txt", g_dir);
    FILE *f = fopen(p, "r");
    CHECK_MSG(f != NULL, "cannot open %s", p);
    if (!f) return;
    char *line = NULL;
    size_t cap = 0;
    int n_kv = 0, n_tensor = 0, n_slice = 0, type_count[64] = {0};
    int64_t max_numel = 0;
    for (int64_t i = 0; i < hyb_gguf_tensor_count(g); i++)
        if (hyb_gguf_tensor_at(g, i)->numel > max_numel)
            max_numel = hyb_gguf_tensor_at(g, i)->numel;
    float *buf = malloc((size_t)max_numel * sizeof(float));
    CHECK(buf != NULL);
    double t0 = hyb_time_now(), t_dq = 0;
    int64_t last = -1;
    while (buf && getline(&line, &cap, f) > 0) {
        if (line[0] == '#') continue;
        if (strncmp(line, "tensor ", 7) == 0) {
            char name[256], tname[32], shape[128];
            unsigned long long off, want_ck;
            double want_sum, want_sq;
            char ck[32];
            CHECK(sscanf(line, "tensor %255s %31s %llu %127s %lf %lf %31s", name, tname, &off,
                         shape, &want_sum, &want_sq, ck) == 7);
            want_ck = strtoull(ck, NULL, 16);
            int64_t ti = hyb_gguf_find_tensor(g, name);
            const hyb_gguf_tensor *t = hyb_gguf_tensor_at(g, ti);
            CHECK_MSG(t != NULL, "tensor %s missing", name);
            if (!t) continue;
            n_tensor++;
            if (t->type >= 0 && t->type < 64) type_count[t->type]++;
            CHECK_MSG(strcmp(hyb_ggml_type_name(t->type), tname) == 0, "%s: type %s want %s", name,
                      hyb_ggml_type_name(t->type), tname);
            CHECK_MSG(t->file_offset == off, "%s: offset %llu want %llu", name,
                      (unsigned long long)t->file_offset, off);
            char got_shape[128];
            size_t k = 0;
            for (int d = 0; d < t->ndim; d++)
                k += (size_t)snprintf(got_shape + k, sizeof got_shape - k, "%s%lld", d ? "," : "",
                                      (long long)t->shape[d]);
            CHECK_MSG(strcmp(got_shape, shape) == 0, "%s: shape %s want %s", name, got_shape,
                      shape);
            double t1 = hyb_time_now();
            int rc = hyb_gguf_tensor_to_f32(g, ti, buf);
            t_dq += hyb_time_now() - t1;
            CHECK_MSG(rc == HYB_OK, "%s: %s", name, hyb_error());
            last = ti;
            double sum = 0, sq = 0, sabs = 0;
            for (int64_t i = 0; i < t->numel; i++) {
                sum += buf[i];
                sq += (double)buf[i] * buf[i];
                sabs += fabs(buf[i]);
            }
            uint64_t c = bits_checksum(buf, t->numel);
            CHECK_MSG(c == want_ck, "%s: f32 bit checksum %016llx want %016llx", name,
                      (unsigned long long)c, want_ck);
            /* summation order differs (numpy pairwise, here sequential in double): the sequential
             * rounding error is up to ~n eps sum|x| (3e-9 relative for 28M terms); 1e-8 covers it.
             * The bit checksum above is the exact check. */
            CHECK_MSG(fabs(sum - want_sum) <= 1e-8 * sabs, "%s: sum %.17g want %.17g", name, sum,
                      want_sum);
            CHECK_MSG(fabs(sq - want_sq) <= 1e-8 * want_sq, "%s: sumsq %.17g want %.17g", name, sq,
                      want_sq);
        } else if (strncmp(line, "slice ", 6) == 0) {
            char name[256], file[128];
            int cnt;
            CHECK(sscanf(line, "slice %255s %127s %d", name, file, &cnt) == 3);
            CHECK_MSG(last == hyb_gguf_find_tensor(g, name), "slice %s out of order", name);
            snprintf(p, sizeof p, "%s/gguf/%s", g_dir, file);
            FILE *sf = fopen(p, "rb");
            CHECK_MSG(sf != NULL, "cannot open %s", p);
            if (!sf) continue;
            float *want = malloc((size_t)cnt * sizeof(float));
            CHECK(fread(want, sizeof(float), (size_t)cnt, sf) == (size_t)cnt);
            fclose(sf);
            int bad = 0;
            for (int i = 0; i < cnt; i++)
                bad += memcmp(&want[i], &buf[i], 4) != 0;
            CHECK_MSG(bad == 0, "%s: %d of the first %d values differ", name, bad, cnt);
            free(want);
            n_slice++;
        } else {
            check_kv_line(line);
            n_kv++;
        }
    }
    free(line);
    free(buf);
    fclose(f);
    CHECK_MSG(n_tensor == hyb_gguf_tensor_count(g), "golden lists %d tensors, file has %lld",
              n_tensor, (long long)hyb_gguf_tensor_count(g));
    CHECK_MSG(n_kv == hyb_gguf_kv_count(g), "golden lists %d kv, file has %lld", n_kv,
              (long long)hyb_gguf_kv_count(g));
    CHECK(n_slice == 5);
    printf("  tensor types:");
    for (int t = 0; t < 64; t++)
        if (type_count[t]) printf(" %s x%d", hyb_ggml_type_name(t), type_count[t]);
    printf("\n  dequantised all %d tensors in %.2f s (total %.2f s)\n", n_tensor, t_dq,
           hyb_time_now() - t0);
    /* the model's own layout (SPEC.md section 9) */
    CHECK(type_count[HYB_GGML_Q4_1] == 210 && type_count[HYB_GGML_F32] == 61 &&
          type_count[HYB_GGML_Q8_0] == 1);
}

static void test_model_tensor_list(void) {
    hyb_gguf *g = g_g;
    /* every tensor is decodable and named as llama.cpp names llama tensors */
    int bad = 0;
    for (int64_t i = 0; i < hyb_gguf_tensor_count(g); i++) {
        const hyb_gguf_tensor *t = hyb_gguf_tensor_at(g, i);
        bad += !hyb_ggml_can_dequantize(t->type);
        if (getenv("HYB_VERBOSE"))
            printf("  %-28s %-5s [%lld%s%lld]\n", t->name, hyb_ggml_type_name(t->type),
                   (long long)t->shape[0], t->ndim > 1 ? ", " : "",
                   t->ndim > 1 ? (long long)t->shape[1] : 0LL);
    }
    CHECK(bad == 0);
    const hyb_gguf_tensor *e = hyb_gguf_tensor_at(g, hyb_gguf_find_tensor(g, "token_embd.weight"));
    CHECK(e && e->ndim == 2 && e->shape[0] == 49152 && e->shape[1] == 576 &&
          e->type == HYB_GGML_Q8_0);
    const hyb_gguf_tensor *q =
        hyb_gguf_tensor_at(g, hyb_gguf_find_tensor(g, "blk.29.attn_k.weight"));
    CHECK(q && q->ndim == 2 && q->shape[0] == 192 && q->shape[1] == 576 &&
          q->type == HYB_GGML_Q4_1);
    const hyb_gguf_tensor *d =
        hyb_gguf_tensor_at(g, hyb_gguf_find_tensor(g, "blk.7.ffn_down.weight"));
    CHECK(d && d->shape[0] == 576 && d->shape[1] == 1536);
    CHECK(hyb_gguf_find_tensor(g, "output.weight") < 0); /* tied embeddings */
    /* bf16 load of a norm through the hyb_tensor path */
    hyb_tensor *x = NULL;
    CHECK(hyb_gguf_tensor_load(g, hyb_gguf_find_tensor(g, "output_norm.weight"), HYB_BF16, &x) ==
          HYB_OK);
    CHECK(x && x->dtype == HYB_BF16 && x->ndim == 1 && x->shape[0] == 576);
    hyb_tensor_free(x);
}

int main(void) {
    const char *m = getenv("HYB_MODEL"), *home = getenv("HOME"), *d = getenv("HYB_TEST_DATA");
    if (m && m[0])
        snprintf(g_model, sizeof g_model, "%s", m);
    else
        snprintf(g_model, sizeof g_model, "%s/.cache/hyb/models/SmolLM2-135M-Instruct.Q4_1.gguf",
                 home ? home : "");
    snprintf(g_dir, sizeof g_dir, "%s", d && d[0] ? d : "tests/data");
    if (access(g_model, R_OK) != 0) {
        printf("skip: model file %s not found (run scripts/fetch_model.sh or set HYB_MODEL)\n",
               g_model);
        return HARNESS_SKIP;
    }
    if (hyb_gguf_open(g_model, &g_g) != HYB_OK) {
        fprintf(stderr, "cannot open the model: %s\n", hyb_error());
        return 1;
    }
    RUN(test_model_metadata);
    RUN(test_model_tensor_list);
    RUN(test_model_golden);
    hyb_gguf_close(g_g);
    return harness_done();
}
