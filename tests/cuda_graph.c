/* tests/cuda_graph.c: CUDA graph capture and replay through the backend table (graph_begin,
 * graph_end, graph_launch, graph_free; core/backend/cuda/cuda_graph.c).
 *
 * A fixed sequence of core-op launches, a cuBLAS GEMM and device copies (rmsnorm, sgemm,
 * swiglu, add, axpy, scale, softmax, copy, memset) is run directly and captured once;
 * the replay must give the same bytes as the direct run (bitwise), on the capture-time inputs and
 * again after new inputs are uploaded into the same device buffers (the per-step input pattern of
 * a captured decode step); the capture itself must run nothing; a download inside a capture makes
 * graph_end fail with a clear error and leaves the backend usable, and so does an entry that
 * uploads a host array (rope's positions); the CPU backend has no graph
 * entries. Label `cuda` (exits 77 without a GPU); as cuda_graph_emu on the emulation (label
 * cuda-emu), where the driver's stand-ins record and replay the work (emu/driver.c). */
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "harness.h"
#include "hyb/backend.h"

#ifdef HYB_HAVE_CUDA
#include "backend/cuda/cuda.h"

static const hyb_backend *gpu;
enum { ROWS = 5, D = 96 };
#define N ((int64_t)ROWS * D)

static uint64_t g_rng = 0x243f6a8885a308d3ull;
static float frand(void) {
    g_rng ^= g_rng << 13;
    g_rng ^= g_rng >> 7;
    g_rng ^= g_rng << 17;
    return (float)((g_rng >> 40) * (1.0 / 16777216.0) * 2.0 - 1.0);
}

typedef struct {
    float *x, *w, *y, *rstd, *z, *u, *p, *q, *junk, *wm, *g;
} bufs;

static float *dalloc(size_t n) {
    float *p = gpu->alloc(gpu, n * sizeof(float));
    CHECK(p != NULL);
    return p;
}

/* the fixed sequence: reads x, w, wm; writes y, rstd, g, z, u, p, q, junk */
static int sequence(const bufs *b) {
    HYB_TRY(gpu->rmsnorm_fwd(gpu, b->x, b->w, b->y, b->rstd, ROWS, D, 1e-5f));
    /* g = y wm^T (cuBLAS: captured on a GPU; recorded as a host call by the emulation) */
    HYB_TRY(gpu->sgemm(gpu, 0, 1, ROWS, D, D, 1.0f, b->y, D, b->wm, D, 0.0f, b->g, D));
    HYB_TRY(gpu->swiglu_fwd(gpu, b->g, b->x, b->z, N));
    HYB_TRY(gpu->add(gpu, b->z, b->y, b->u, N));
    HYB_TRY(gpu->axpy(gpu, b->u, b->x, 0.5f, N));
    HYB_TRY(gpu->scale(gpu, b->u, 1.25f, N));
    HYB_TRY(gpu->softmax_fwd(gpu, b->u, b->p, ROWS, D));
    HYB_TRY(gpu->copy(gpu, b->q, b->p, (size_t)N * sizeof(float)));
    HYB_TRY(gpu->memset0(gpu, b->junk, (size_t)N * sizeof(float)));
    return HYB_OK;
}

/* outputs y | rstd | u | p | q | junk | g into host memory */
static void outputs(const bufs *b, float *h) {
    CHECK(gpu->download(gpu, h, b->y, N * sizeof(float)) == HYB_OK);
    CHECK(gpu->download(gpu, h + N, b->rstd, ROWS * sizeof(float)) == HYB_OK);
    CHECK(gpu->download(gpu, h + N + ROWS, b->u, N * sizeof(float)) == HYB_OK);
    CHECK(gpu->download(gpu, h + 2 * N + ROWS, b->p, N * sizeof(float)) == HYB_OK);
    CHECK(gpu->download(gpu, h + 3 * N + ROWS, b->q, N * sizeof(float)) == HYB_OK);
    CHECK(gpu->download(gpu, h + 4 * N + ROWS, b->junk, N * sizeof(float)) == HYB_OK);
    CHECK(gpu->download(gpu, h + 5 * N + ROWS, b->g, N * sizeof(float)) == HYB_OK);
}
#define NOUT (6 * N + ROWS)

/* poison every output with a NaN pattern */
static void poison(const bufs *b) {
    float *nan = malloc(N * sizeof(float));
    memset(nan, 0xff, N * sizeof(float));
    float *outs[] = {b->y, b->rstd, b->z, b->u, b->p, b->q, b->junk, b->g};
    for (int i = 0; i < 8; i++)
        CHECK(gpu->upload(gpu, outs[i], nan, (i == 1 ? ROWS : N) * sizeof(float)) == HYB_OK);
    free(nan);
}

static void test_replay_matches_direct(void) {
    bufs b = {dalloc(N), dalloc(D), dalloc(N), dalloc(ROWS), dalloc(N), dalloc(N),
              dalloc(N), dalloc(N), dalloc(N), dalloc((size_t)D * D), dalloc(N)};
    float *hx = malloc(N * sizeof(float)), *hw = malloc(D * sizeof(float));
    float *direct = malloc(NOUT * sizeof(float)), *replay = malloc(NOUT * sizeof(float));
    float *poisoned = malloc(NOUT * sizeof(float)), *before = malloc(NOUT * sizeof(float));
    /* an empty capture first: it gives cuBLAS its fixed workspace (cuda_graph.c), so the direct
     * GEMMs below run with the same workspace as the captured ones (the algorithm cuBLAS picks
     * may depend on it) */
    void *empty = NULL;
    CHECK(gpu->graph_begin(gpu) == HYB_OK);
    CHECK(gpu->graph_end(gpu, &empty) == HYB_OK);
    CHECK(gpu->graph_launch(gpu, empty) == HYB_OK);
    gpu->graph_free(gpu, empty);
    for (int i = 0; i < D; i++)
        hw[i] = 1.0f + 0.5f * frand();
    CHECK(gpu->upload(gpu, b.w, hw, D * sizeof(float)) == HYB_OK);
    float *hm = malloc((size_t)D * D * sizeof(float));
    for (int i = 0; i < D * D; i++)
        hm[i] = 0.1f * frand();
    CHECK(gpu->upload(gpu, b.wm, hm, (size_t)D * D * sizeof(float)) == HYB_OK);
    free(hm);

    for (int round = 0; round < 3; round++) {
        for (int64_t i = 0; i < N; i++)
            hx[i] = 3.0f * frand();
        /* direct */
        CHECK(gpu->upload(gpu, b.x, hx, N * sizeof(float)) == HYB_OK);
        poison(&b);
        CHECK(sequence(&b) == HYB_OK);
        outputs(&b, direct);
        int finite = 1;
        for (int64_t i = 0; i < NOUT; i++)
            finite &= direct[i] == direct[i];
        CHECK_MSG(finite, "round %d: the direct run left an output unwritten", round);

        static void *graph;
        if (round == 0) { /* capture once, on the first inputs */
            poison(&b);
            outputs(&b, poisoned);
            CHECK(gpu->graph_begin(gpu) == HYB_OK);
            CHECK(sequence(&b) == HYB_OK);
            CHECK(gpu->graph_end(gpu, &graph) == HYB_OK);
            CHECK(graph != NULL);
            outputs(&b, before);
            CHECK_MSG(memcmp(before, poisoned, NOUT * sizeof(float)) == 0,
                      "the capture ran work (outputs changed before any replay)");
        }
        /* replay: new inputs go into the same device buffer x */
        CHECK(gpu->upload(gpu, b.x, hx, N * sizeof(float)) == HYB_OK);
        poison(&b);
        CHECK(gpu->graph_launch(gpu, graph) == HYB_OK);
        outputs(&b, replay);
        CHECK_MSG(memcmp(direct, replay, NOUT * sizeof(float)) == 0,
                  "round %d: replay differs from the direct launches", round);
        if (round == 2) {
            gpu->graph_free(gpu, graph);
            graph = NULL;
        }
    }
    float *all[] = {b.x, b.w, b.y, b.rstd, b.z, b.u, b.p, b.q, b.junk, b.wm, b.g};
    for (int i = 0; i < 11; i++)
        gpu->free(gpu, all[i]);
    free(hx);
    free(hw);
    free(direct);
    free(replay);
    free(poisoned);
    free(before);
}

/* a download during a capture: refused, graph_end says why, the backend works afterwards */
static void test_sync_in_capture(void) {
    float *a = dalloc(16), *c = dalloc(16), h[16] = {0};
    for (int i = 0; i < 16; i++)
        h[i] = (float)i;
    CHECK(gpu->upload(gpu, a, h, sizeof h) == HYB_OK);
    CHECK(gpu->graph_begin(gpu) == HYB_OK);
    CHECK(gpu->graph_begin(gpu) != HYB_OK); /* one capture at a time */
    CHECK(gpu->scale(gpu, a, 2.0f, 16) == HYB_OK);
    CHECK(gpu->download(gpu, h, a, sizeof h) != HYB_OK);
    void *graph = (void *)1;
    CHECK(gpu->graph_end(gpu, &graph) != HYB_OK);
    CHECK(graph == NULL);
    CHECK_MSG(strstr(hyb_error(), "capture invalidated") != NULL, "error: %s", hyb_error());
    printf("  (message: %s)\n", hyb_error());
    /* usable again: a direct scale and a copy */
    for (int i = 0; i < 16; i++)
        h[i] = (float)i;
    CHECK(gpu->upload(gpu, a, h, sizeof h) == HYB_OK);
    CHECK(gpu->scale(gpu, a, 2.0f, 16) == HYB_OK);
    CHECK(gpu->copy(gpu, c, a, sizeof h) == HYB_OK);
    CHECK(gpu->download(gpu, h, c, sizeof h) == HYB_OK);
    for (int i = 0; i < 16; i++)
        CHECK(h[i] == 2.0f * (float)i);
    CHECK(gpu->graph_end(gpu, &graph) != HYB_OK); /* none open */
    gpu->free(gpu, a);
    gpu->free(gpu, c);
}

/* an entry that uploads a host array (rope's positions) cannot be captured: the upload waits for
 * the stream, so the capture is invalidated and graph_end says so (a captured decode step needs
 * the positions in a device buffer instead) */
static void test_host_array_entry(void) {
    const int B = 1, T = 2, H = 2, hd = 8;
    float *x = dalloc((size_t)B * T * H * hd);
    CHECK(gpu->memset0(gpu, x, sizeof(float) * (size_t)B * T * H * hd) == HYB_OK);
    int32_t pos[2] = {3, 4};
    CHECK(gpu->graph_begin(gpu) == HYB_OK);
    int rc = gpu->rope(gpu, x, B, T, H, hd, pos, 10000.0f, 0);
    void *graph = NULL;
    int rc_end = gpu->graph_end(gpu, &graph);
    CHECK_MSG(rc != HYB_OK || rc_end != HYB_OK, "rope with host positions was captured");
    CHECK(graph == NULL);
    printf("  (rope inside a capture: %s)\n", hyb_error());
    CHECK(gpu->rope(gpu, x, B, T, H, hd, pos, 10000.0f, 0) == HYB_OK); /* usable again */
    gpu->free(gpu, x);
}

static void test_cpu_has_none(void) {
    const hyb_backend *cpu = hyb_backend_cpu();
    CHECK(cpu->graph_begin == NULL && cpu->graph_end == NULL && cpu->graph_launch == NULL &&
          cpu->graph_free == NULL);
}

int main(void) {
    if (hyb_cuda_init(0) != HYB_OK) {
        printf("skipped: no GPU: %s\n", hyb_error());
        return HARNESS_SKIP;
    }
    gpu = hyb_backend_get(HYB_DEV_CUDA);
    if (!gpu || !gpu->graph_begin) {
        printf("CUDA backend not registered or without graph entries: %s\n", hyb_error());
        return 1;
    }
    RUN(test_replay_matches_direct);
    RUN(test_sync_in_capture);
    RUN(test_host_array_entry);
    RUN(test_cpu_has_none);
    hyb_cuda_shutdown();
    return harness_done();
}
#else
int main(void) {
    printf("skipped: no GPU: built without the CUDA headers\n");
    return HARNESS_SKIP;
}
#endif
