/* bench/quant_bench.c: quantized CPU inference (issue 22) against the f32 computation over the same
 * dequantised weights, in one process, interleaved.
 *
 *   quant_bench MODEL.gguf TEXT [POSITIONS [DECODE_STEPS [ROUNDS [JSON]]]]
 *
 * Loads MODEL twice: "f32" (HYB_QUANT off: every weight dequantised to f32 at load, today's path)
 * and "quant" (HYB_QUANT=precise: the token embedding / lm_head and MLP weights stay in their GGUF
 * blocks; attention projections stay f32, they go to the mha plugin as f32).
 *  1. speed: ROUNDS (default 5) rounds of {f32, precise, fast} in turn, each DECODE_STEPS (default
 *     32) batch-1 decode steps after a 32-token prefill; prints the median tokens/s and CPU ms per
 *     token (user + system of all threads) and the ratios to f32 from the same rounds.
 *  2. accuracy: the first POSITIONS + 1 (default 1000 + 1) tokens of TEXT, fed one decode step at a
 *     time (the path generation uses: one activation row per matmul); at each position the mean
 *     KL(p_f32 || p_mode) of the next-token distributions and whether the argmax agrees. Modes:
 *     precise; fast with 4-value f32 activation scales (the default) and with 32-value f16 scales
 *     (llama.cpp's rounding of activations for these weight types); the same two roundings
 *     emulated in f32 (emul: x' = dequant(quant(x)) then the precise kernel).
 * Prints a table and writes JSON (default bench/results/quant-<time>.json). With QUANT_DUMP=FILE
 * it also writes the token ids and the f32 model's logits there (int32 npos, V; int32 ids[npos];
 * f32 logits[npos][V]) for bench/quant_llama.py.
 *
 * Build and run (after the Release build in build/): bench/quant_bench.sh
 */
#include <math.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <time.h>
#include <unistd.h>

#include "backend/cpu/cpu_quant.h"
#include "hyb/common.h"
#include "hyb/hf.h"
#include "hyb/model.h"
#include "hyb/tokenizer.h"

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}
static double cpu_s(void) {
    struct rusage u;
    getrusage(RUSAGE_SELF, &u);
    return (double)u.ru_utime.tv_sec + 1e-6 * (double)u.ru_utime.tv_usec +
           (double)u.ru_stime.tv_sec + 1e-6 * (double)u.ru_stime.tv_usec;
}

static void die(const char *what) {
    fprintf(stderr, "quant_bench: %s: %s\n", what, hyb_error());
    exit(1);
}

static hyb_quant_config qc(hyb_quant_mode m, int group, int f16) {
    hyb_quant_config c = {m, group, f16, HYB_QISA_AUTO};
    return c;
}

/* bytes of weights the model holds as parameters; *streamed: bytes a decode step reads (the
 * same since the attention projections are quantized parameters too, no shadows) */
static size_t weight_bytes(hyb_model *m, size_t *streamed) {
    int n;
    hyb_tensor **p = hyb_model_params(m, &n);
    size_t b = 0, s = 0;
    for (int i = 0; i < n; i++) {
        const size_t nb = hyb_tensor_nbytes(p[i]);
        b += nb;
        s += nb;
    }
    *streamed = s;
    return b;
}

/* read bandwidth of all threads: best of 3 sums over 256 MiB (B/s) */
static double read_bandwidth(void) {
    const size_t n = (size_t)64 << 20;
    float *a = malloc(n * sizeof *a);
    if (!a) return 0;
#pragma omp parallel for
    for (size_t i = 0; i < n; i++)
        a[i] = (float)(i & 255);
    double best = 0, sink = 0;
    for (int r = 0; r < 3; r++) {
        double t0 = now_s(), sum = 0;
        /* 16 independent f32 sums per thread: bound by loads, not by the add latency */
#pragma omp parallel for reduction(+ : sum)
        for (size_t c = 0; c < n; c += 4096) {
            float acc[16] = {0};
            for (size_t i = c; i < c + 4096; i += 16)
                for (int j = 0; j < 16; j++)
                    acc[j] += a[i + j];
            for (int j = 0; j < 16; j++)
                sum += acc[j];
        }
        double t = now_s() - t0;
        sink += sum;
        if (n * sizeof *a / t > best) best = n * sizeof *a / t;
    }
    free(a);
    return sink > 0 ? best : best;
}

typedef struct {
    const char *name;
    int quant; /* 0: the f32 model; 1: the quantized model */
    hyb_quant_config c;
    double tok_s[64], cpu_ms[64];
} speed_cfg;

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}
static double median(const double *v, int n) {
    double t[64];
    memcpy(t, v, sizeof(double) * (size_t)n);
    qsort(t, (size_t)n, sizeof(double), cmp_d);
    return n % 2 ? t[n / 2] : 0.5 * (t[n / 2 - 1] + t[n / 2]);
}

/* batch-1 decode of `steps` tokens after a 32-token prefill: tokens/s and CPU ms per token */
static void time_decode(hyb_model *m, hyb_kvstate *kv, int steps, float *logits, double *tok_s,
                        double *cpu_ms) {
    int32_t pre[32];
    for (int i = 0; i < 32; i++)
        pre[i] = (int32_t)((i * 7919 + 13) % 20000);
    hyb_kvstate_reset_seq(kv, 0);
    if (hyb_model_prefill(m, kv, 0, pre, 32, logits) != HYB_OK) die("prefill");
    int32_t seq = 0, id = 42;
    double t0 = now_s(), c0 = cpu_s();
    for (int s = 0; s < steps; s++) {
        if (hyb_model_decode(m, kv, 1, &seq, &id, logits) != HYB_OK) die("decode");
        id = (int32_t)((id * 31 + s) % 20000);
    }
    double t = now_s() - t0, c = cpu_s() - c0;
    *tok_s = steps / t;
    *cpu_ms = 1e3 * c / steps;
}

/* logits of every position of ids[0..n] fed one decode step at a time: out[n][V] */
static void run_positions(hyb_model *m, hyb_kvstate *kv, const int32_t *ids, int n, int V,
                          float *out) {
    hyb_kvstate_reset_seq(kv, 0);
    int32_t seq = 0;
    for (int p = 0; p < n; p++)
        if (hyb_model_decode(m, kv, 1, &seq, &ids[p], out + (size_t)p * V) != HYB_OK)
            die("decode (accuracy)");
}

static void log_softmax(const float *x, int V, double *y) {
    double mx = -INFINITY, s = 0;
    for (int i = 0; i < V; i++)
        mx = x[i] > mx ? x[i] : mx;
    for (int i = 0; i < V; i++)
        s += exp((double)x[i] - mx);
    const double lse = mx + log(s);
    for (int i = 0; i < V; i++)
        y[i] = (double)x[i] - lse;
}

static int argmax(const float *x, int V) {
    int b = 0;
    for (int i = 1; i < V; i++)
        if (x[i] > x[b]) b = i;
    return b;
}

/* mean KL(ref || q), top-1 agreement, max KL */
static void compare(const float *ref, const float *q, int n, int V, double *kl, double *top1,
                    double *klmax) {
    double *a = malloc(sizeof(double) * (size_t)V), *b = malloc(sizeof(double) * (size_t)V);
    double sum = 0, mx = 0;
    int agree = 0;
    for (int p = 0; p < n; p++) {
        const float *r = ref + (size_t)p * V, *s = q + (size_t)p * V;
        log_softmax(r, V, a);
        log_softmax(s, V, b);
        double k = 0;
        for (int i = 0; i < V; i++)
            k += exp(a[i]) * (a[i] - b[i]);
        sum += k;
        mx = k > mx ? k : mx;
        agree += argmax(r, V) == argmax(s, V);
    }
    *kl = sum / n;
    *top1 = (double)agree / n;
    *klmax = mx;
    free(a), free(b);
}

static char *read_file(const char *path, size_t *len) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *p = malloc((size_t)n + 1);
    if (p && fread(p, 1, (size_t)n, f) != (size_t)n) n = 0;
    fclose(f);
    if (p) p[n] = 0;
    *len = (size_t)n;
    return p;
}

int main(int argc, char **argv) {
    if (argc < 3) {
        fprintf(stderr, "usage: quant_bench MODEL.gguf TEXT [POSITIONS [STEPS [ROUNDS [JSON]]]]\n");
        return 2;
    }
    /* libgomp reads OMP_WAIT_POLICY before main: passive, as `hyb` runs (runtime/main.c) */
    if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "passive", 0) == 0)
        execv("/proc/self/exe", argv); /* returns only on failure */
    const char *model = argv[1], *text_path = argv[2];
    int npos = argc > 3 ? atoi(argv[3]) : 1000, steps = argc > 4 ? atoi(argv[4]) : 32,
        rounds = argc > 5 ? atoi(argv[5]) : 5;
    char json_default[128];
    time_t tt = time(NULL);
    strftime(json_default, sizeof json_default, "bench/results/quant-%Y%m%d-%H%M%S.json",
             gmtime(&tt));
    const char *json = argc > 6 ? argv[6] : json_default;
    if (rounds > 64) rounds = 64;

    hyb_model *mf, *mq;
    hyb_quant_config off = qc(HYB_QUANT_OFF, 4, 0);
    hyb_quant_set(&off);
    double t0 = now_s();
    if (hyb_model_load_gguf(model, &mf) != HYB_OK) die("load f32");
    const double load_f = now_s() - t0;
    hyb_quant_config pre = qc(HYB_QUANT_PRECISE, 4, 0);
    hyb_quant_set(&pre);
    t0 = now_s();
    if (hyb_model_load_gguf(model, &mq) != HYB_OK) die("load quant");
    const double load_q = now_s() - t0;
    const int V = mf->V;
    size_t rd_f, rd_q;
    const size_t wb_f = weight_bytes(mf, &rd_f), wb_q = weight_bytes(mq, &rd_q);
    const double bw = read_bandwidth();
    printf("model %s\nweights held as parameters: f32 %.1f MB, quant %.1f MB (attention kept in f32 "
           "too)\nweights read per decode step: f32 %.1f MB, quant %.1f MB\n"
           "load %.2f s (f32), %.2f s (quant); read bandwidth %.1f GB/s; AVX2 kernels: %s\n",
           model, wb_f / 1e6, wb_q / 1e6, rd_f / 1e6, rd_q / 1e6, load_f, load_q, bw / 1e9,
           hyb_quant_have_avx2() ? "yes" : "no");

    hyb_kvstate *kf, *kq;
    if (hyb_kvstate_new(mf, 1, npos + 64, &kf) != HYB_OK ||
        hyb_kvstate_new(mq, 1, npos + 64, &kq) != HYB_OK)
        die("kvstate");
    float *logits = malloc(sizeof(float) * (size_t)V);

    /* 1. speed, interleaved */
    speed_cfg sp[] = {{"f32", 0, qc(HYB_QUANT_OFF, 4, 0), {0}, {0}},
                      {"precise", 1, qc(HYB_QUANT_PRECISE, 4, 0), {0}, {0}},
                      {"fast", 1, qc(HYB_QUANT_FAST, 4, 0), {0}, {0}}};
    const int nsp = 3;
    for (int i = 0; i < nsp; i++) { /* warm-up */
        double a, b;
        hyb_quant_set(&sp[i].c);
        time_decode(sp[i].quant ? mq : mf, sp[i].quant ? kq : kf, 4, logits, &a, &b);
    }
    for (int r = 0; r < rounds; r++)
        for (int i = 0; i < nsp; i++) {
            hyb_quant_set(&sp[i].c);
            time_decode(sp[i].quant ? mq : mf, sp[i].quant ? kq : kf, steps, logits,
                        &sp[i].tok_s[r], &sp[i].cpu_ms[r]);
        }
    double ratio[3][64];
    for (int i = 0; i < nsp; i++)
        for (int r = 0; r < rounds; r++)
            ratio[i][r] = sp[i].tok_s[r] / sp[0].tok_s[r];
    printf("\ndecode, batch 1, %d steps after a 32-token prefill, %d interleaved rounds (median)\n",
           steps, rounds);
    printf("%-8s %8s %11s %9s %19s\n", "path", "tok/s", "cpu ms/tok", "x f32", "bandwidth floor ms");
    for (int i = 0; i < nsp; i++)
        printf("%-8s %8.1f %11.2f %9.2f %19.2f\n", sp[i].name, median(sp[i].tok_s, rounds),
               median(sp[i].cpu_ms, rounds), median(ratio[i], rounds),
               1e3 * (sp[i].quant ? rd_q : rd_f) / bw);

    /* 2. accuracy (POSITIONS 0: skipped) */
    size_t tlen = 0;
    char *text = npos > 0 ? read_file(text_path, &tlen) : calloc(1, 1);
    if (!text) {
        fprintf(stderr, "quant_bench: cannot read %s\n", text_path);
        return 1;
    }
    hyb_tokenizer *tok = hyb_tokenizer_load_gguf(model);
    if (!tok) die("tokenizer");
    int32_t *ids = NULL;
    size_t nids = 0;
    if (npos > 0 && hyb_tokenizer_encode_alloc(tok, text, tlen, 0, &ids, &nids) != HYB_OK)
        die("encode");
    if ((int)nids < npos) npos = (int)nids;
    if (npos > 0)
        printf("\naccuracy: %d positions of %s, against the f32 model (same weights, "
               "dequantised)\n",
               npos, text_path);
    const size_t nlog = (size_t)(npos > 0 ? npos : 1) * (size_t)V;
    float *ref = malloc(sizeof(float) * nlog), *out = malloc(sizeof(float) * nlog);
    if (!ref || !out) die("out of memory");
    hyb_quant_set(&off);
    run_positions(mf, kf, ids, npos, V, ref);
    const char *dump = npos > 0 ? getenv("QUANT_DUMP") : NULL; /* for bench/quant_llama.py: ids and f32 logits */
    if (dump && *dump) {
        FILE *df = fopen(dump, "wb");
        int32_t hdr[2] = {npos, V};
        if (!df || fwrite(hdr, sizeof hdr, 1, df) != 1 ||
            fwrite(ids, sizeof(int32_t), (size_t)npos, df) != (size_t)npos ||
            fwrite(ref, sizeof(float) * (size_t)V, (size_t)npos, df) != (size_t)npos)
            fprintf(stderr, "quant_bench: cannot write %s\n", dump);
        if (df) fclose(df);
    }
    struct {
        const char *name;
        hyb_quant_config c;
        double kl, top1, klmax;
    } ac[] = {
        {"precise", qc(HYB_QUANT_PRECISE, 4, 0), 0, 0, 0},
        {"fast (g4, f32 scales)", qc(HYB_QUANT_FAST, 4, 0), 0, 0, 0},
        {"emul g4 f32 (fast's rounding in f32)", qc(HYB_QUANT_EMUL, 4, 0), 0, 0, 0},
        {"fast g8", qc(HYB_QUANT_FAST, 8, 0), 0, 0, 0},
        {"fast g16", qc(HYB_QUANT_FAST, 16, 0), 0, 0, 0},
        {"fast g32 f16 (llama.cpp's rounding)", qc(HYB_QUANT_FAST, 32, 1), 0, 0, 0},
        {"emul g32 f16 (llama.cpp's rounding in f32)", qc(HYB_QUANT_EMUL, 32, 1), 0, 0, 0},
    };
    const int nac = npos > 0 ? (int)(sizeof ac / sizeof ac[0]) : 0;
    if (nac) printf("%-44s %12s %8s %10s\n", "path", "mean KL", "top-1", "max KL");
    for (int i = 0; i < nac; i++) {
        hyb_quant_set(&ac[i].c);
        run_positions(mq, kq, ids, npos, V, out);
        compare(ref, out, npos, V, &ac[i].kl, &ac[i].top1, &ac[i].klmax);
        printf("%-44s %12.3e %7.2f%% %10.3e\n", ac[i].name, ac[i].kl, 100 * ac[i].top1,
               ac[i].klmax);
        fflush(stdout);
    }

    FILE *f = fopen(json, "w");
    if (f) {
        fprintf(f, "{\n  \"model\": \"%s\", \"text\": \"%s\", \"positions\": %d,\n", model,
                text_path, npos);
        fprintf(f, "  \"weights_mb\": {\"f32\": %.1f, \"quant\": %.1f},\n", wb_f / 1e6, wb_q / 1e6);
        fprintf(f, "  \"load_s\": {\"f32\": %.3f, \"quant\": %.3f},\n", load_f, load_q);
        fprintf(f, "  \"read_mb_per_step\": {\"f32\": %.1f, \"quant\": %.1f}, \"read_gb_s\": %.2f,\n",
                rd_f / 1e6, rd_q / 1e6, bw / 1e9);
        fprintf(f, "  \"decode\": {\"steps\": %d, \"rounds\": %d", steps, rounds);
        for (int i = 0; i < nsp; i++)
            fprintf(f,
                    ",\n    \"%s\": {\"tok_s_median\": %.2f, \"cpu_ms_per_tok_median\": %.3f, "
                    "\"ratio_to_f32_median\": %.3f}",
                    sp[i].name, median(sp[i].tok_s, rounds), median(sp[i].cpu_ms, rounds),
                    median(ratio[i], rounds));
        fprintf(f, "},\n  \"accuracy\": [");
        for (int i = 0; i < nac; i++)
            fprintf(f,
                    "%s\n    {\"path\": \"%s\", \"mode\": \"%s\", \"group\": %d, \"f16_scale\": %d, "
                    "\"mean_kl\": %.6e, \"top1\": %.5f, \"max_kl\": %.6e}",
                    i ? "," : "", ac[i].name, hyb_quant_mode_name(ac[i].c.mode), ac[i].c.group,
                    ac[i].c.f16_scale, ac[i].kl, ac[i].top1, ac[i].klmax);
        fprintf(f, "\n  ]\n}\n");
        fclose(f);
        printf("\nwrote %s\n", json);
    }
    free(ids), free(text), free(ref), free(out), free(logits);
    hyb_tokenizer_free(tok);
    hyb_kvstate_free(kf), hyb_kvstate_free(kq);
    hyb_model_free(mf), hyb_model_free(mq);
    return 0;
}
