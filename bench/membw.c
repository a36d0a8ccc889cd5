/* bench/membw.c: the machine's memory read bandwidth, for bench/llama_compare.sh (the floor of a
 * decode step is the weight bytes it reads divided by this).
 *
 *   membw [MIB=1024 [ROUNDS=5]]      threads: OMP_NUM_THREADS
 *
 * Sums a MIB-MiB f32 buffer (touched once before timing, so the pages are resident) with
 * OMP_NUM_THREADS threads, each summing its contiguous share into 16 independent accumulators
 * (bound by the loads, not by the add latency); prints the best round's bytes / second as
 * "read_gb_s <GB/s>" and every round on a second line. The buffer is far larger than any cache
 * (1 GiB by default), so this is DRAM read bandwidth.
 */
#include <omp.h>
#include <stdio.h>
#include <stdlib.h>
#include <time.h>

static double now_s(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return (double)t.tv_sec + 1e-9 * (double)t.tv_nsec;
}

int main(int argc, char **argv) {
    const long mib = argc > 1 ? atol(argv[1]) : 1024, rounds = argc > 2 ? atol(argv[2]) : 5;
    if (mib < 1 || mib > (1L << 20) || rounds < 1 || rounds > 100) {
        fprintf(stderr, "membw: usage: membw [MIB in 1..1048576 [ROUNDS in 1..100]]\n");
        return 2;
    }
    const size_t n = (size_t)mib << 18; /* floats */
    float *a = aligned_alloc(64, n * sizeof *a);
    if (!a) {
        fprintf(stderr, "membw: cannot allocate %ld MiB\n", mib);
        return 1;
    }
#pragma omp parallel for schedule(static)
    for (size_t i = 0; i < n; i++)
        a[i] = (float)(i & 255);
    double best = 0, sink = 0, gbs[100];
    for (long r = 0; r < rounds; r++) {
        double sum = 0;
        const double t0 = now_s();
#pragma omp parallel for schedule(static) reduction(+ : sum)
        for (size_t c = 0; c < n; c += 4096) {
            float acc[16] = {0};
            for (size_t i = c; i < c + 4096; i += 16)
                for (int j = 0; j < 16; j++)
                    acc[j] += a[i + j];
            for (int j = 0; j < 16; j++)
                sum += acc[j];
        }
        const double t = now_s() - t0;
        sink += sum;
        gbs[r] = (double)(n * sizeof *a) / t / 1e9;
        if (gbs[r] > best) best = gbs[r];
    }
    printf("read_gb_s %.3f threads %d mib %ld\n", best, omp_get_max_threads(), mib);
    printf("rounds");
    for (long r = 0; r < rounds; r++)
        printf(" %.3f", gbs[r]);
    printf("\n");
    free(a);
    return sink == -1.0; /* keeps the sums live */
}
