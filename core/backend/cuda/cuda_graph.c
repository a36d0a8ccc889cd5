/* core/backend/cuda/cuda_graph.c: CUDA graphs for the backend table (graph_begin, graph_end,
 * graph_launch, graph_free; hyb/backend.h): the backend's stream is captured (relaxed mode, so
 * that the pool may still call cuMemAlloc while a capture is open), the captured graph is
 * instantiated once and replayed with cuGraphLaunch on the same stream. A replay issues the whole
 * recorded sequence with one launch call: the per-launch CPU cost of the ops (argument packing,
 * driver calls) is paid once at capture, which is what batch-1 decode spends its time on.
 *
 * What cannot be in a capture: anything that waits for the stream (the backend's download and
 * the entries that return a host value synchronise), and host-to-device copies of host arrays
 * that change per call (the replay would read the capture-time host address again). The driver
 * reports the first as CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED at the call and invalidates the
 * capture; graph_end then fails with a message saying so and the stream is usable again. */
#include <stdint.h>
#include <stdlib.h>

#include "backend/cuda/cuda_internal.h"

typedef struct hyb_cuda_graph {
    CUgraph graph;
    CUgraphExec exec;
    int launches;
} hyb_cuda_graph;

static int g_capturing;
static CUdeviceptr g_workspace; /* cuBLAS's, fixed from the first capture on */

/* cuBLAS may allocate its workspace on a call, which a capture cannot hold: give it one of its
 * own (32 MiB, what cuBLAS asks for on Hopper) before the first capture; it stays for the
 * process (later GEMMs use it too). */
static int fixed_workspace(void) {
    if (g_workspace) return HYB_OK;
    const size_t n = (size_t)32 << 20;
    CU_CHECK(hyb_cu.cuMemAlloc(&g_workspace, n));
    int rc = hyb_cublas_check(hyb_cublas.cublasSetWorkspace(hyb_cuda_g.blas,
                                                            (void *)(uintptr_t)g_workspace, n),
                              "cublasSetWorkspace", __FILE__, __LINE__);
    if (rc != HYB_OK) {
        hyb_cu.cuMemFree(g_workspace);
        g_workspace = 0;
    }
    return rc;
}

int hyb_cuda_graph_begin(const hyb_backend *be) {
    (void)be;
    if (g_capturing)
        return hyb_error_set(HYB_ERR_ARG, "cuda graph_begin: a capture is already open");
    HYB_TRY(hyb_cuda_bind());
    HYB_TRY(fixed_workspace());
    CU_CHECK(hyb_cu.cuStreamBeginCapture(hyb_cuda_g.stream, CU_STREAM_CAPTURE_MODE_RELAXED));
    g_capturing = 1;
    return HYB_OK;
}

int hyb_cuda_graph_end(const hyb_backend *be, void **out) {
    (void)be;
    *out = NULL;
    if (!g_capturing) return hyb_error_set(HYB_ERR_ARG, "cuda graph_end: no capture is open");
    g_capturing = 0;
    CUgraph g = NULL;
    CUresult r = hyb_cu.cuStreamEndCapture(hyb_cuda_g.stream, &g);
    if (r == CUDA_ERROR_STREAM_CAPTURE_INVALIDATED || r == CUDA_ERROR_STREAM_CAPTURE_UNSUPPORTED) {
        if (g) hyb_cu.cuGraphDestroy(g);
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "cuda graph capture invalidated: the captured work waited for the "
                             "device (a download; a loss or sumsq entry returning a host value; "
                             "an entry uploading a host array: rope's positions, embedding ids, "
                             "targets) or did something else a CUDA graph cannot hold");
    }
    CU_CHECK(r);
    hyb_cuda_graph *h = calloc(1, sizeof *h);
    if (!h) {
        hyb_cu.cuGraphDestroy(g);
        return hyb_error_set(HYB_ERR_NOMEM, "cuda graph_end: out of memory");
    }
    h->graph = g;
    int rc;
    CU_CHECK_GOTO(hyb_cu.cuGraphInstantiate(&h->exec, g, 0), rc, fail);
    *out = h;
    return HYB_OK;
fail:
    hyb_cu.cuGraphDestroy(g);
    free(h);
    return rc;
}

int hyb_cuda_graph_launch(const hyb_backend *be, void *graph) {
    (void)be;
    hyb_cuda_graph *h = graph;
    if (!h) return hyb_error_set(HYB_ERR_ARG, "cuda graph_launch: no graph");
    if (g_capturing) return hyb_error_set(HYB_ERR_ARG, "cuda graph_launch: a capture is open");
    HYB_TRY(hyb_cuda_bind());
    CU_CHECK(hyb_cu.cuGraphLaunch(h->exec, hyb_cuda_g.stream));
    h->launches++;
    return HYB_OK;
}

void hyb_cuda_graph_free(const hyb_backend *be, void *graph) {
    (void)be;
    hyb_cuda_graph *h = graph;
    if (!h) return;
    if (h->exec) hyb_cu.cuGraphExecDestroy(h->exec);
    if (h->graph) hyb_cu.cuGraphDestroy(h->graph);
    free(h);
}
