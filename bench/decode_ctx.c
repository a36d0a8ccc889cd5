/* bench/decode_ctx.c: time batched decode steps at a long context without prefilling it.
 *
 *   decode_ctx MAP CTX B STEPS [REPS]
 *
 * Builds a random-weight model from the layer map, fills every sequence's decode state (KV cache,
 * recurrent states) with small pseudo-random values as if CTX tokens had been prefilled, then
 * times REPS (default 3) runs of STEPS hyb_model_decode calls of B sequences and prints the best
 * (wall ms/step, CPU ms/step of all threads, tokens/s) and a checksum of the last logits. Cost
 * per step does not depend on the cached values, so this measures decode at 8k context in seconds
 * instead of a minutes-long prefill. Re-executes itself with OMP_WAIT_POLICY=passive unless set,
 * as `hyb` does (libgomp reads it before main).
 *
 * Build (after the Release build in build/):
 *   gcc -O2 -fopenmp -Icore/include bench/decode_ctx.c build/libhyb_core.a \
 *     $(pkg-config --libs openblas tomlplusplus libpcre2-8 libcjson) -lstdc++ -ldl -lm \
 *     -o build/decode_ctx
 * The mixer plugins are found as for `hyb` (HYB_PLUGIN_PATH first, then the build tree), so an
 * older plugin build can be compared by pointing HYB_PLUGIN_PATH at a copy of it. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <unistd.h>

#include "hyb/common.h"
#include "hyb/config.h"
#include "hyb/mixer.h"
#include "hyb/model.h"

static double cpu_s(void) {
    struct rusage r;
    getrusage(RUSAGE_SELF, &r);
    return r.ru_utime.tv_sec + r.ru_utime.tv_usec * 1e-6 + r.ru_stime.tv_sec +
           r.ru_stime.tv_usec * 1e-6;
}

static int fail(void) {
    fprintf(stderr, "decode_ctx: %s\n", hyb_error());
    return 1;
}

int main(int argc, char **argv) {
    if (argc < 5) {
        fprintf(stderr, "usage: decode_ctx MAP CTX B STEPS [REPS]\n");
        return 2;
    }
    if (!getenv("OMP_WAIT_POLICY") && setenv("OMP_WAIT_POLICY", "passive", 0) == 0)
        execv("/proc/self/exe", argv); /* returns only on failure */
    const int ctx = atoi(argv[2]), B = atoi(argv[3]), steps = atoi(argv[4]),
              reps = argc > 5 ? atoi(argv[5]) : 3;
    if (ctx < 0 || B < 1 || B > 256 || steps < 1 || reps < 1) {
        fprintf(stderr, "decode_ctx: bad arguments\n");
        return 2;
    }
    hyb_layermap *map;
    hyb_model *m;
    hyb_kvstate *s;
    if (hyb_layermap_load(argv[1], &map) != HYB_OK) return fail();
    if (hyb_model_build(map, 1, &m) != HYB_OK) return fail();
    /* f32 caches: the states are filled with random f32 values below */
    if (hyb_kvstate_new_ex(m, B, ctx + steps * (reps + 1) + 2, HYB_KV_F32, &s) != HYB_OK)
        return fail();
    uint32_t x = 12345;
    for (int l = 0; l < s->L; l++) {
        if (!m->layers[l].mixer) continue;
        size_t n = hyb_mixer_state_bytes(m->layers[l].mixer, s->max_ctx) / sizeof(float);
        for (int i = 0; i < B; i++) {
            float *p = s->state[l][i];
            for (size_t k = 0; k < n; k++) {
                x ^= x << 13;
                x ^= x >> 17;
                x ^= x << 5;
                p[k] = ((int)(x & 1023) - 512) * (1.0f / 4096);
            }
        }
    }
    int32_t seqs[256], ids[256];
    for (int i = 0; i < B; i++) {
        s->pos[i] = ctx;
        seqs[i] = i;
        ids[i] = 100 + i;
    }
    float *lg = malloc(sizeof(float) * (size_t)B * (size_t)m->V);
    if (!lg) return 1;
    if (hyb_model_decode(m, s, B, seqs, ids, lg) != HYB_OK) return fail(); /* warm-up */
    double best = 1e30, bestc = 1e30;
    for (int r = 0; r < reps; r++) {
        double t0 = hyb_time_now(), c0 = cpu_s();
        for (int k = 0; k < steps; k++)
            if (hyb_model_decode(m, s, B, seqs, ids, lg) != HYB_OK) return fail();
        double t = hyb_time_now() - t0, c = cpu_s() - c0;
        best = t < best ? t : best;
        bestc = c < bestc ? c : bestc;
    }
    double chk = 0;
    for (size_t k = 0; k < (size_t)B * (size_t)m->V; k += 997)
        chk += lg[k];
    printf("RESULT %s ctx %d B %d: %.1f ms/step (cpu %.1f ms) %.2f tok/s chk %.6g\n", argv[1], ctx,
           B, best / steps * 1e3, bestc / steps * 1e3, B * steps / best, chk);
    free(lg);
    hyb_kvstate_free(s);
    hyb_model_free(m);
    return 0;
}
