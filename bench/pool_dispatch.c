/* bench/pool_dispatch.c: the cost of one synchronisation point of a decode step (a parallel
 * dispatch of small work over all threads, then a join), hyb's pool against an OpenMP parallel
 * region (libgomp, whatever OMP_WAIT_POLICY the process has). Each dispatch splits a 64 KiB f32
 * array over the threads and sums its slices (about 1 us of work per thread), like one small GEMV.
 * Prints one JSON line: microseconds per dispatch (median of 7 batches of 2000).
 *   bench/pool_dispatch.sh  (builds it against the Release build and runs both wait policies) */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

#include "backend/cpu/cpu_pool.h"
#include "hyb/backend.h"
#include "hyb/common.h"

enum { N = 16384, REPS = 2000, BATCHES = 7 };
static float x[N];
static volatile float sink[1024];

static double now(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static int chunk_fn(void *ctx, int64_t lo, int64_t hi, int tid) {
    float s = 0;
    for (int64_t i = lo; i < hi; i++)
        s += x[i];
    sink[tid] = s;
    return HYB_OK;
}

static int cmp(const void *a, const void *b) {
    double d = *(const double *)a - *(const double *)b;
    return (d > 0) - (d < 0);
}

static double median_us(double *v) {
    qsort(v, BATCHES, sizeof *v, cmp);
    return v[BATCHES / 2] * 1e6 / REPS;
}

int main(void) {
    for (int i = 0; i < N; i++)
        x[i] = (float)i;
    const int nt = hyb_threads();
    double pool[BATCHES], omp[BATCHES];
    for (int b = 0; b < BATCHES; b++) {
        double t0 = now();
        for (int r = 0; r < REPS; r++)
            hyb_pool_parallel_for(N, 256, chunk_fn, NULL);
        pool[b] = now() - t0;
        t0 = now();
        for (int r = 0; r < REPS; r++) {
#pragma omp parallel num_threads(nt)
            {
                int t = omp_get_thread_num(), n = omp_get_num_threads();
                int64_t c = (N + n - 1) / n, lo = t * c, hi = lo + c < N ? lo + c : N;
                chunk_fn(NULL, lo, hi, t);
            }
        }
        omp[b] = now() - t0;
    }
    const char *wp = getenv("OMP_WAIT_POLICY"), *sp = getenv("HYB_POOL_SPIN_US");
    printf("{\"threads\": %d, \"omp_wait_policy\": \"%s\", \"hyb_pool_spin_us\": \"%s\", "
           "\"pool_us_per_dispatch\": %.2f, \"omp_us_per_region\": %.2f}\n",
           nt, wp ? wp : "", sp ? sp : "", median_us(pool), median_us(omp));
    return 0;
}
