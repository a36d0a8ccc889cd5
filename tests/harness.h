/* tests/harness.h: a tiny test harness shared by the C tests.
 *
 *   static void test_add(void) { CHECK(1 + 1 == 2); CHECK_NEAR(x, 1.0, 1e-6); }
 *   int main(void) { RUN(test_add); return harness_done(); }
 *
 * harness_done() prints "N passed, N failed" and returns 0 only when nothing failed.
 * Return HARNESS_SKIP (77) from main to mark the whole test skipped (ctest SKIP_RETURN_CODE).
 */
#ifndef HYB_TEST_HARNESS_H
#define HYB_TEST_HARNESS_H
#include <math.h>
#include <stddef.h>
#include <stdint.h>
#include <stdio.h>

#define HARNESS_SKIP 77

extern int harness_checks_failed;
extern const char *harness_current;
void harness_run(const char *name, void (*fn)(void));
int harness_done(void);
void harness_fail(const char *file, int line, const char *fmt, ...);

#define RUN(fn) harness_run(#fn, fn)
#define CHECK(cond)                                                                                \
    do {                                                                                           \
        if (!(cond)) harness_fail(__FILE__, __LINE__, "CHECK(%s)", #cond);                         \
    } while (0)
#define CHECK_MSG(cond, ...)                                                                       \
    do {                                                                                           \
        if (!(cond)) harness_fail(__FILE__, __LINE__, __VA_ARGS__);                                \
    } while (0)
#define CHECK_NEAR(a, b, tol)                                                                      \
    do {                                                                                           \
        double ha_ = (double)(a), hb_ = (double)(b);                                               \
        if (!(fabs(ha_ - hb_) <= (tol)) || ha_ != ha_ || hb_ != hb_)                               \
            harness_fail(__FILE__, __LINE__, "%s = %.9g vs %s = %.9g (tol %g)", #a, ha_, #b, hb_,   \
                         (double)(tol));                                                           \
    } while (0)

/* Relative RMS error rms(a - b) / rms(b), the flash-linear-attention metric. */
double harness_rel_rms(const float *a, const float *b, long n);
/* Remove a directory tree (test scratch directories); missing is fine. */
void harness_rm_rf(const char *dir);
/* The whole file, NUL-terminated (heap; *len gets its size when len is non-NULL); NULL when it
 * cannot be read. */
char *harness_read_file(const char *path, size_t *len);
/* max |a-b| / max(|b|, floor) over elements */
double harness_max_rel(const float *a, const float *b, long n, double floor);
/* Make a scratch directory <tmpfs or /tmp>/hyb_test_<tag>_XXXXXX into dir (tmpfs when there is
 * one: the writers fsync, which is slow on a busy disk); 0, or -1 after perror. */
int harness_mkdtemp(char *dir, size_t cap, const char *tag);
/* "<dir>/<name>" in one of four rotating static buffers (so up to four can be used at once). */
const char *harness_sub(const char *dir, const char *name);
/* The test data directory: $HYB_TEST_DATA, else tests/data. */
const char *harness_data_dir(void);
/* "<data dir>/<dir>/<name>" (a static buffer, four in rotation). */
const char *harness_data_file(const char *dir, const char *name);
/* A golden-logits file written by the tests/reference scripts: int32 magic, B, T, V, then
 * int32 ids [B*T] and float32 logits [B*T*V]. harness_read_golden: 0 when it was read whole
 * (free with harness_golden_free), -1 after a harness_fail naming the file. */
typedef struct harness_golden {
    int b, t, v;
    int32_t *ids;
    float *logits;
} harness_golden;
int harness_read_golden(const char *path, int32_t magic, harness_golden *g);
void harness_golden_free(harness_golden *g);
/* f32 -> bf16 rounded to nearest even, NaN kept quiet: the host reference for the CUDA
 * conversion kernels (cuda_ops, the emulator's test). */
uint16_t harness_bf16(float f);
/* Uniform in [-1, 1) from a 64-bit LCG state (the tests' reproducible perturbations). */
float harness_frand(unsigned long long *state);

/* The tiny test models' layer-map pieces: [model] with d_model 32, d_ff 48, norm_eps 1e-5, tied
 * embeddings, max_seq 64; and the mha table `attn` (symbol t, 4 query heads over 2 KV heads of
 * 8). */
#define HARNESS_MAP_MODEL(name, n_layers, vocab)                                                   \
    "[model]\nname = \"" name "\"\nd_model = 32\nn_layers = " #n_layers "\nvocab_size = " #vocab  \
    "\nd_ff = 48\nnorm_eps = 1e-5\ntie_embeddings = true\nmax_seq = 64\n"
#define HARNESS_MAP_ATTN                                                                           \
    "[mixers.attn]\ntype = \"mha\"\nsymbol = \"t\"\nn_heads = 4\nn_kv_heads = 2\nhead_dim = 8\n"

/* ---- model helpers (tests/harness_model.c, in hyb_test_harness: they need hyb_core) ---------- */
struct hyb_model;
struct cJSON;
/* Parse a layer-map text (name: the file name errors give) and build it with seed; NULL after a
 * harness_fail naming the step and hyb_error(). */
struct hyb_model *harness_build_model(const char *map_text, const char *name,
                                      unsigned long long seed);
/* The logits of one forward of ids [b, t] without gradients (heap, b*t*vocab floats, their shape
 * checked); NULL after a harness_fail. */
float *harness_logits(struct hyb_model *m, const int32_t *ids, int b, int t);
/* A JSON file parsed; NULL when it cannot be read or parsed. */
struct cJSON *harness_read_json(const char *path);
/* A member's number (-1 when missing or not a number) / string ("" when missing or not a
 * string). */
double harness_jnum(const struct cJSON *o, const char *key);
const char *harness_jstr(const struct cJSON *o, const char *key);
#endif
