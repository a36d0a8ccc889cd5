/* bench/mamba2_bench.c: one mamba2 mixer layer (plugins/mamba2) on the CPU: a training step
 * (forward with the saved block + backward into every parameter gradient) and decode steps (one
 * token after a prefill), timed with the plugin's CPU kernels through the shared test helpers.
 * Driven by bench/mamba2_bench.sh side by side with bench/mamba2_bench_torch.py (the PyTorch
 * reference of tests/reference/mamba2_ref.py, eager, float32) on the same weights and inputs.
 *
 *   mamba2_bench B T D d_inner headdim ngroups d_state d_conv chunk reps decode_steps dump.bin
 *
 * Writes dump.bin (the golden-file layout of tests/reference/mamba2_ref.py up to the parameters,
 * then hyb's y and dx) so that the PyTorch side checks it computes the same function, and prints
 * one JSON line: the median training step (wall and process CPU ms), the median decode step at
 * batch 1 and batch B (ms). Needs HYB_PLUGIN_PATH (build/plugins). */
#define _POSIX_C_SOURCE 200809L
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "mixer_harness.h"

static double now_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static double cpu_ms(void) { /* CPU time of the process (all threads) */
    struct timespec ts;
    clock_gettime(CLOCK_PROCESS_CPUTIME_ID, &ts);
    return ts.tv_sec * 1e3 + ts.tv_nsec * 1e-6;
}

static int cmp_d(const void *a, const void *b) {
    double x = *(const double *)a, y = *(const double *)b;
    return (x > y) - (x < y);
}

static double median(double *v, int n) {
    qsort(v, (size_t)n, sizeof *v, cmp_d);
    return n % 2 ? v[n / 2] : 0.5 * (v[n / 2 - 1] + v[n / 2]);
}

/* decode `steps` tokens for n sequences after a prefill of T tokens; median ms per step */
static double time_decode(mh_inst *I, int n, int T, int steps, const float *x, int D) {
    const size_t sb = hyb_mixer_state_bytes(I->m, T + steps);
    void **st = malloc(sizeof(void *) * (size_t)n);
    int32_t *pos = malloc(sizeof(int32_t) * (size_t)n);
    float *y = malloc(sizeof(float) * (size_t)n * T * D), *xs = malloc(sizeof(float) * (size_t)n * D);
    for (int i = 0; i < n; i++) {
        st[i] = calloc(1, sb);
        pos[i] = 0;
    }
    for (int i = 0; i < n; i++) /* prefill each sequence with the same prompt */
        if (mh_fwd(I, 1, T, x, y, NULL, &st[i], &pos[i], T + steps) != HYB_OK) {
            fprintf(stderr, "prefill: %s\n", hyb_error());
            exit(1);
        }
    double *t = malloc(sizeof(double) * (size_t)steps);
    for (int s = 0; s < steps; s++) {
        for (int i = 0; i < n; i++) {
            pos[i] = T + s;
            memcpy(xs + (size_t)i * D, x + (size_t)(s % T) * D, sizeof(float) * D);
        }
        double t0 = now_ms();
        if (mh_dec(I, n, xs, y, st, pos, T + steps) != HYB_OK) {
            fprintf(stderr, "decode: %s\n", hyb_error());
            exit(1);
        }
        t[s] = now_ms() - t0;
    }
    double m = median(t, steps);
    for (int i = 0; i < n; i++)
        free(st[i]);
    free(st);
    free(pos);
    free(y);
    free(xs);
    free(t);
    return m;
}

int main(int argc, char **argv) {
    if (argc != 13) {
        fprintf(stderr, "usage: %s B T D d_inner headdim ngroups d_state d_conv chunk reps "
                        "decode_steps dump.bin\n",
                argv[0]);
        return 2;
    }
    int a[11];
    for (int i = 0; i < 11; i++)
        a[i] = atoi(argv[i + 1]);
    const int B = a[0], T = a[1], D = a[2], Di = a[3], Pd = a[4], G = a[5], N = a[6], K = a[7],
              Q = a[8], reps = a[9], steps = a[10];
    char toml[512];
    snprintf(toml, sizeof toml,
             "d_inner = %d\nheaddim = %d\nngroups = %d\nd_state = %d\nd_conv = %d\n"
             "chunk_size = %d\n",
             Di, Pd, G, N, K, Q);
    mh_inst I;
    if (mh_inst_new(&I, "mamba2", D, toml, 1) != 0) {
        fprintf(stderr, "mamba2: %s\n", hyb_error());
        return 1;
    }
    mh_init_perturb(&I, 2, 0.02f);
    hyb_rng r;
    hyb_rng_seed(&r, 3);
    const size_t nx = (size_t)B * T * D;
    float *x = mh_randn(&r, nx, 1.0f), *dy = mh_randn(&r, nx, 1.0f);
    float *y = malloc(nx * 4), *dx = malloc(nx * 4);
    void *saved = mh_saved_new(&I, B, T);
    double *tt = malloc(sizeof(double) * (size_t)(reps + 1)),
           *tc = malloc(sizeof(double) * (size_t)(reps + 1));
    for (int k = 0; k <= reps; k++) { /* the first is a warm-up */
        mh_zero_grads(&I);
        double t0 = now_ms(), c0 = cpu_ms();
        int rc = mh_fwd(&I, B, T, x, y, saved, NULL, NULL, 0);
        if (rc == HYB_OK) rc = mh_bwd(&I, B, T, x, dy, dx, saved);
        tt[k] = now_ms() - t0;
        tc[k] = cpu_ms() - c0;
        if (rc != HYB_OK) {
            fprintf(stderr, "train step: %s\n", hyb_error());
            return 1;
        }
    }
    const double train = median(tt + 1, reps), train_cpu = median(tc + 1, reps);
    const double dec1 = time_decode(&I, 1, T, steps, x, D), decB = time_decode(&I, B, T, steps, x, D);
    FILE *f = fopen(argv[12], "wb");
    if (!f) {
        perror(argv[12]);
        return 1;
    }
    const int32_t h[12] = {0x3241424D, B, T, D, Di, Pd, G, N, K, Q, 0, 0};
    const double eps = 1e-5;
    fwrite(h, 4, 12, f);
    fwrite(&eps, 8, 1, f);
    fwrite(x, 4, nx, f);
    for (int i = 0; i < I.m->n_params; i++)
        fwrite(I.pp[i], 4, (size_t)mh_pnumel(&I, i), f);
    fwrite(dy, 4, nx, f);
    fwrite(y, 4, nx, f);
    fwrite(dx, 4, nx, f);
    fclose(f);
    printf("{\"impl\": \"hyb\", \"B\": %d, \"T\": %d, \"train_ms\": %.4f, \"train_cpu_ms\": %.4f, "
           "\"decode1_ms\": %.4f, \"decodeB_ms\": %.4f, \"reps\": %d, \"steps\": %d}\n",
           B, T, train, train_cpu, dec1, decB, reps, steps);
    free(tt);
    free(tc);
    mh_free(4, x, dy, y, dx);
    free(saved);
    mh_inst_free(&I);
    return 0;
}
