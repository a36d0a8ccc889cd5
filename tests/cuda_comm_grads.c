/* tests/cuda_comm_grads.c: the communicator that reduces CUDA gradients (hyb_comm_grads,
 * docs/DISTRIBUTED.md), on a GPU or the CUDA emulation.
 *
 *   cuda_comm_grads             without a launcher (ctest, label cuda): the one-process world
 *                               keeps CUDA gradients to itself (hyb_comm_grads = the world), and
 *                               an NCCL comm of one rank over it reduces a device buffer on the
 *                               GPU (ncclAllReduce of 1 rank: the same values); skips without a GPU
 *   mpirun -np N cuda_comm_grads nccl   (scripts/gpu_test.sh): hyb_comm_grads(cuda) is the NCCL
 *                               comm, and a device buffer summed over the N ranks on the GPU is
 *                               the exact sum (small integers and halves: exact in f32)
 *   mpirun -np N cuda_comm_grads mpi    (tests/mpi/comm_grads.sh, HYB_CUDA_EMULATE=1): NCCL is
 *                               refused (the emulation cannot host it), so the MPI world is
 *                               chosen; the same device buffer is summed through host staging
 * Status 77 (skipped) when there is no GPU or the launcher/MPI the mode needs is absent. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "backend/cuda/cuda.h"
#include "harness.h"
#include "hyb/backend.h"
#include "hyb/comm.h"

enum { N = 3001 }; /* not a multiple of anything NCCL or MPI would split on */

/* rank r's value at i: (r + 1) * (i % 7 + 0.5); the sum over N ranks: N(N+1)/2 * (i % 7 + 0.5) */
static void sum_check(hyb_comm *c, const char *what) {
    const hyb_backend *be = hyb_backend_get(HYB_DEV_CUDA);
    const int r = hyb_comm_rank(c), n = hyb_comm_size(c);
    float *h = malloc(sizeof(float) * N);
    float *d = be ? be->alloc(be, sizeof(float) * N) : NULL;
    CHECK(h && d);
    if (!h || !d) return;
    for (int i = 0; i < N; i++)
        h[i] = (float)(r + 1) * ((float)(i % 7) + 0.5f);
    CHECK(be->upload(be, d, h, sizeof(float) * N) == HYB_OK);
    int rc = hyb_comm_allreduce_f32(c, d, N, HYB_DEV_CUDA);
    CHECK_MSG(rc == HYB_OK, "%s: allreduce: %s", what, hyb_error());
    memset(h, 0, sizeof(float) * N);
    CHECK(be->download(be, h, d, sizeof(float) * N) == HYB_OK);
    int bad = 0;
    for (int i = 0; i < N; i++)
        bad += h[i] != (float)(n * (n + 1) / 2) * ((float)(i % 7) + 0.5f);
    CHECK_MSG(bad == 0, "%s: %d of %d sums wrong on rank %d of %d", what, bad, N, r, n);
    printf("  rank %d of %d: %s: %d device floats summed on %s, exact\n", r, n, what, N,
           hyb_comm_kind(c));
    be->free(be, d);
    free(h);
}

static const char *g_mode;

static void test_grads(void) {
    hyb_comm *w = hyb_comm_world();
    if (strcmp(g_mode, "single") == 0) {
        /* one process: nothing to reduce, no NCCL made */
        CHECK(hyb_comm_grads(HYB_DEV_CUDA) == w && hyb_comm_grads(HYB_DEV_CPU) == w);
        hyb_comm *c = NULL;
        int rc = hyb_comm_nccl_new(w, &c);
        CHECK_MSG(rc == HYB_OK && c, "hyb_comm_nccl_new over one process: %s", hyb_error());
        if (c) {
            CHECK(strcmp(hyb_comm_kind(c), "nccl") == 0 && hyb_comm_size(c) == 1);
            sum_check(c, "NCCL, one rank");
            hyb_comm_free(c);
        }
    } else if (strcmp(g_mode, "nccl") == 0) {
        hyb_comm *c = hyb_comm_grads(HYB_DEV_CUDA);
        CHECK_MSG(strcmp(hyb_comm_kind(c), "nccl") == 0, "CUDA gradients go to '%s', not nccl",
                  hyb_comm_kind(c));
        CHECK(hyb_comm_grads(HYB_DEV_CUDA) == c);  /* made once */
        CHECK(hyb_comm_grads(HYB_DEV_CPU) == w);   /* host gradients: MPI */
        sum_check(c, "gradients through hyb_comm_grads");
    } else if (strcmp(g_mode, "mpi") == 0) {
        char why[512];
        hyb_comm *c = hyb_comm_select_grads(w, HYB_DEV_CUDA, NULL, why, sizeof why);
        CHECK_MSG(c == w, "CUDA gradients go to '%s', not the MPI world", hyb_comm_kind(c));
        CHECK_MSG(strstr(why, "NCCL") != NULL, "the fallback's reason does not name NCCL: '%s'", why);
        printf("  rank %d: fallback to MPI: %s\n", hyb_comm_rank(w), why);
        CHECK(hyb_comm_grads(HYB_DEV_CUDA) == w);
        sum_check(c, "gradients through hyb_comm_grads (host staging)");
    }
}

int main(int argc, char **argv) {
    g_mode = argc > 1 ? argv[1] : "single";
    if (strcmp(g_mode, "single") != 0 && strcmp(g_mode, "nccl") != 0 && strcmp(g_mode, "mpi") != 0) {
        fprintf(stderr, "usage: cuda_comm_grads [single|nccl|mpi]\n");
        return 2;
    }
    hyb_comm *w = hyb_comm_world();
    if (strcmp(g_mode, "single") != 0 && strcmp(hyb_comm_kind(w), "mpi") != 0) {
        printf("skipped: mode '%s' runs under mpirun with an MPI build (world is '%s')\n", g_mode,
               hyb_comm_kind(w));
        return HARNESS_SKIP;
    }
    if (hyb_cuda_init(0) != HYB_OK) {
        printf("skipped: no GPU: %s\n", hyb_error());
        return HARNESS_SKIP;
    }
    RUN(test_grads);
    return harness_done();
}
