/* tests/test_pool.c: the persistent CPU thread pool (core/backend/cpu/cpu_pool.c) against a serial
 * reference: every item of [0, n) is visited exactly once for many (n, grain, threads) cases
 * (threads 1..4), chunks are multiples of grain and tids are in range and never shared by two
 * concurrent chunks, nested dispatches run serially on the calling thread (no deadlock, same
 * result), errors from any chunk come back with their message, thousands of back-to-back dispatches
 * (the decode pattern) complete, the pool wakes up after its workers went to sleep, changing the
 * thread count rebuilds it, dispatches from several threads at once all complete, and the skinny
 * GEMM of decode gives the same bits on 1..4 threads. The pool part runs clean under TSan:
 *   gcc -O1 -g -fsanitize=thread -fopenmp -DHYB_POOL_ONLY -Icore -Icore/include -Itests \
 *       core/backend/cpu/cpu_pool.c tests/test_pool.c tests/harness.c core/common.c -lm
 * and the same with -fsanitize=address,undefined. */
#include <math.h>
#include <pthread.h>
#include <stdatomic.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#ifndef HYB_POOL_ONLY
#include "backend/cpu/cpu.h"
#endif
#include "backend/cpu/cpu_pool.h"
#include "harness.h"
#include "hyb/backend.h"
#include "hyb/common.h"

typedef struct cover {
    _Atomic int *hits;
    int64_t grain, n;
    _Atomic int *busy; /* per tid: chunks running now */
    _Atomic int bad;
    int nthreads;
} cover;

static int cover_fn(void *ctx, int64_t lo, int64_t hi, int tid) {
    cover *c = ctx;
    if (tid < 0 || tid >= c->nthreads || lo < 0 || hi > c->n || lo >= hi) {
        atomic_store(&c->bad, 1);
        return HYB_OK;
    }
    if (lo % c->grain != 0 || (hi != c->n && hi % c->grain != 0)) atomic_store(&c->bad, 2);
    if (atomic_fetch_add(&c->busy[tid], 1) != 0) atomic_store(&c->bad, 3);
    for (int64_t i = lo; i < hi; i++)
        atomic_fetch_add(&c->hits[i], 1);
    atomic_fetch_sub(&c->busy[tid], 1);
    return HYB_OK;
}

static void coverage_case(int threads, int64_t n, int64_t grain) {
    CHECK(hyb_set_threads(threads) == HYB_OK);
    CHECK(hyb_pool_threads() == threads);
    cover c = {0};
    c.hits = calloc((size_t)(n > 0 ? n : 1), sizeof *c.hits);
    c.busy = calloc((size_t)threads, sizeof *c.busy);
    c.grain = grain, c.n = n, c.nthreads = threads;
    CHECK(hyb_pool_parallel_for(n, grain, cover_fn, &c) == HYB_OK);
    CHECK_MSG(atomic_load(&c.bad) == 0, "threads %d n %lld grain %lld: bad chunk (%d)", threads,
              (long long)n, (long long)grain, atomic_load(&c.bad));
    int64_t wrong = 0;
    for (int64_t i = 0; i < n; i++)
        wrong += atomic_load(&c.hits[i]) != 1;
    CHECK_MSG(wrong == 0, "threads %d n %lld grain %lld: %lld items not visited exactly once",
              threads, (long long)n, (long long)grain, (long long)wrong);
    free(c.hits);
    free(c.busy);
}

static void test_coverage(void) {
    const int64_t ns[] = {0, 1, 2, 3, 15, 16, 17, 100, 1000, 4097, 100003};
    const int64_t grains[] = {1, 3, 16, 64};
    for (int t = 1; t <= 4; t++)
        for (size_t a = 0; a < sizeof ns / sizeof *ns; a++)
            for (size_t b = 0; b < sizeof grains / sizeof *grains; b++)
                coverage_case(t, ns[a], grains[b]);
}

/* y[i] = f(x[i]) over many chunks: same bits as the serial loop for every thread count */
typedef struct vec {
    const float *x;
    float *y;
} vec;
static int vec_fn(void *ctx, int64_t lo, int64_t hi, int tid) {
    vec *v = ctx;
    for (int64_t i = lo; i < hi; i++)
        v->y[i] = v->x[i] * 1.5f + 0.25f;
    return HYB_OK;
}

/* many rapid dispatches of small jobs, like the ~200 GEMVs of one decode step */
static void test_rapid(void) {
    enum { N = 4096 };
    float *x = malloc(N * sizeof *x), *y = malloc(N * sizeof *y);
    for (int t = 1; t <= 4; t++) {
        CHECK(hyb_set_threads(t) == HYB_OK);
        int bad = 0;
        for (int rep = 0; rep < 3000; rep++) {
            for (int i = 0; i < N; i++)
                x[i] = (float)(i ^ rep), y[i] = -1.0f;
            vec v = {x, y};
            int64_t n = 64 + (rep * 37) % (N - 64);
            CHECK(hyb_pool_parallel_for(n, 16, vec_fn, &v) == HYB_OK);
            for (int64_t i = 0; i < N; i++)
                bad += y[i] != (i < n ? x[i] * 1.5f + 0.25f : -1.0f);
        }
        CHECK_MSG(bad == 0, "threads %d: %d wrong items over 3000 dispatches", t, bad);
    }
    free(x);
    free(y);
}

/* a chunk that dispatches again: the inner call runs on the calling thread, whole */
typedef struct nest {
    _Atomic int *hits;
    int64_t inner;
    _Atomic int bad;
} nest;
typedef struct nest_inner {
    nest *o;
    int64_t row;
    int tid;
} nest_inner;
static int nest_inner_fn(void *ctx, int64_t lo, int64_t hi, int tid) {
    nest_inner *ni = ctx;
    if (lo != 0 || hi != ni->o->inner) atomic_store(&ni->o->bad, 1); /* not serial */
    for (int64_t j = lo; j < hi; j++)
        atomic_fetch_add(&ni->o->hits[ni->row * ni->o->inner + j], 1);
    return HYB_OK;
}
static int nest_fn(void *ctx, int64_t lo, int64_t hi, int tid) {
    nest *o = ctx;
    for (int64_t r = lo; r < hi; r++) {
        nest_inner ni = {o, r, tid};
        int rc = hyb_pool_parallel_for(o->inner, 1, nest_inner_fn, &ni);
        if (rc != HYB_OK) return rc;
    }
    return HYB_OK;
}
static int set_inside_fn(void *ctx, int64_t lo, int64_t hi, int tid) {
    if (hyb_set_threads(2) == HYB_OK) atomic_store((_Atomic int *)ctx, 1);
    return HYB_OK;
}
static void test_nested(void) {
    { /* changing the count from inside a task is an error, not a deadlock */
        CHECK(hyb_set_threads(2) == HYB_OK);
        _Atomic int changed = 0;
        CHECK(hyb_pool_parallel_for(64, 1, set_inside_fn, &changed) == HYB_OK);
        CHECK(atomic_load(&changed) == 0);
    }
    for (int t = 1; t <= 4; t++) {
        CHECK(hyb_set_threads(t) == HYB_OK);
        nest o = {0};
        o.inner = 50;
        o.hits = calloc(64 * 50, sizeof *o.hits);
        CHECK(hyb_pool_parallel_for(64, 1, nest_fn, &o) == HYB_OK);
        int wrong = 0;
        for (int i = 0; i < 64 * 50; i++)
            wrong += atomic_load(&o.hits[i]) != 1;
        CHECK_MSG(wrong == 0 && atomic_load(&o.bad) == 0, "threads %d: nested: %d wrong, bad %d",
                  t, wrong, atomic_load(&o.bad));
        free(o.hits);
    }
}

/* one failing chunk: its status and message come back; the other chunks do not crash */
static int fail_fn(void *ctx, int64_t lo, int64_t hi, int tid) {
    int64_t at = *(int64_t *)ctx;
    if (lo <= at && at < hi) return hyb_error_set(HYB_ERR_ARG, "chunk at %lld failed", (long long)at);
    return HYB_OK;
}
static void test_errors(void) {
    for (int t = 1; t <= 4; t++) {
        CHECK(hyb_set_threads(t) == HYB_OK);
        for (int64_t at = 0; at < 1000; at += 333) {
            hyb_error_clear();
            int rc = hyb_pool_parallel_for(1000, 8, fail_fn, &at);
            CHECK_MSG(rc == HYB_ERR_ARG, "threads %d: error %d instead of HYB_ERR_ARG", t, rc);
            char want[64];
            snprintf(want, sizeof want, "chunk at %lld failed", (long long)at);
            CHECK_MSG(strstr(hyb_error(), want) != NULL, "threads %d: message '%s'", t,
                      hyb_error());
        }
        int64_t none = -1;
        CHECK(hyb_pool_parallel_for(1000, 8, fail_fn, &none) == HYB_OK);
    }
}

/* the workers spin out (HYB_POOL_SPIN_US is 200 us by default) and sleep; the next dispatch must
 * wake them and still use them (each chunk waits until every tid has shown up) */
typedef struct slow {
    _Atomic int seen[4];
} slow;
static int slow_fn(void *ctx, int64_t lo, int64_t hi, int tid) {
    slow *s = ctx;
    atomic_store(&s->seen[tid], 1);
    /* hold the chunk until every thread has one (or 10 s: a worker that never wakes fails the
     * test instead of hanging it); on a loaded machine a woken worker may take a while to run */
    for (int ms = 0; ms < 10000; ms++) {
        if (atomic_load(&s->seen[0]) + atomic_load(&s->seen[1]) + atomic_load(&s->seen[2]) == 3)
            break;
        struct timespec ts = {0, 1000000};
        nanosleep(&ts, NULL);
    }
    return HYB_OK;
}
static void test_sleep_wake(void) {
    CHECK(hyb_set_threads(3) == HYB_OK);
    for (int round = 0; round < 3; round++) {
        struct timespec idle = {0, 20000000}; /* 20 ms idle: the workers are asleep */
        nanosleep(&idle, NULL);
        slow s = {0};
        int64_t p0, p1;
        hyb_pool_counts(&p0, NULL);
        CHECK(hyb_pool_parallel_for(12, 1, slow_fn, &s) == HYB_OK);
        hyb_pool_counts(&p1, NULL);
        CHECK(p1 == p0 + 1);
        int used = 0;
        for (int i = 0; i < 3; i++)
            used += atomic_load(&s.seen[i]);
        CHECK_MSG(used == 3, "round %d: only %d of 3 threads ran chunks after an idle pause",
                  round, used);
    }
}

/* dispatches from several threads at once: one owns the pool, the others run serially */
static void *concurrent_main(void *arg) {
    int *ok = arg;
    enum { N = 2000 };
    float x[N], y[N];
    for (int rep = 0; rep < 300; rep++) {
        for (int i = 0; i < N; i++)
            x[i] = (float)(i + rep), y[i] = 0;
        vec v = {x, y};
        if (hyb_pool_parallel_for(N, 16, vec_fn, &v) != HYB_OK) *ok = 0;
        for (int i = 0; i < N; i++)
            if (y[i] != x[i] * 1.5f + 0.25f) *ok = 0;
    }
    return NULL;
}
static void test_concurrent(void) {
    CHECK(hyb_set_threads(2) == HYB_OK);
    pthread_t th[3];
    int ok[3] = {1, 1, 1};
    for (int i = 0; i < 3; i++)
        CHECK(pthread_create(&th[i], NULL, concurrent_main, &ok[i]) == 0);
    for (int i = 0; i < 3; i++)
        pthread_join(th[i], NULL);
    CHECK(ok[0] && ok[1] && ok[2]);
}

static void test_settings(void) {
    CHECK(hyb_set_threads(-1) == HYB_ERR_ARG);
    CHECK(strstr(hyb_error(), "threads") != NULL);
    CHECK(hyb_set_threads(5000) == HYB_ERR_ARG);
    CHECK(hyb_set_threads(3) == HYB_OK && hyb_threads() == 3);
    setenv("OMP_NUM_THREADS", "2", 1);
    CHECK(hyb_set_threads(0) == HYB_OK && hyb_threads() == 2); /* the default follows the env */
}

#ifndef HYB_POOL_ONLY
/* the decode products that run on the pool (the skinny x W^T path of hyb_cpu_sgemm, M <= 16):
 * the same bits for every thread count, and close to a double reference */
static void test_sgemm_threads(void) {
    enum { N = 1000, K = 512 };
    float *W = malloc(sizeof(float) * N * K), *x = malloc(sizeof(float) * 16 * K);
    float *y1 = malloc(sizeof(float) * 16 * N), *y = malloc(sizeof(float) * 16 * N);
    hyb_rng r;
    hyb_rng_seed(&r, 7);
    hyb_rng_fill_normal(&r, W, (int64_t)N * K, 0.0f, 1.0f);
    hyb_rng_fill_normal(&r, x, 16 * K, 0.0f, 1.0f);
    const int Ms[] = {1, 3, 16};
    for (size_t mi = 0; mi < 3; mi++) {
        const int M = Ms[mi];
        CHECK(hyb_set_threads(1) == HYB_OK);
        hyb_cpu_sgemm(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, y1, N);
        double worst = 0;
        for (int m = 0; m < M; m++)
            for (int n = 0; n < N; n++) {
                double ref = 0;
                for (int k = 0; k < K; k++)
                    ref += (double)x[m * K + k] * W[(int64_t)n * K + k];
                double e = fabs(ref - y1[m * N + n]);
                worst = e > worst ? e : worst;
            }
        CHECK_MSG(worst < 1e-3, "M %d: error %g against the double reference", M, worst);
        for (int t = 2; t <= 4; t++) {
            CHECK(hyb_set_threads(t) == HYB_OK);
            int64_t p0, p1;
            hyb_pool_counts(&p0, NULL);
            hyb_cpu_sgemm(0, 1, M, N, K, 1.0f, x, K, W, K, 0.0f, y, N);
            hyb_pool_counts(&p1, NULL);
            CHECK_MSG(p1 == p0 + 1, "M %d threads %d: the product did not use the pool", M, t);
            CHECK_MSG(memcmp(y, y1, sizeof(float) * (size_t)M * N) == 0,
                      "M %d threads %d: result differs from 1 thread", M, t);
        }
    }
    free(W), free(x), free(y1), free(y);
}
#endif

int main(void) {
    RUN(test_settings);
    RUN(test_coverage);
    RUN(test_rapid);
    RUN(test_nested);
    RUN(test_errors);
    RUN(test_sleep_wake);
    RUN(test_concurrent);
#ifndef HYB_POOL_ONLY
    RUN(test_sgemm_threads);
#endif
    return harness_done();
}
