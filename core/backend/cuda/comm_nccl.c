/* core/backend/cuda/comm_nccl.c: the NCCL communicator (hyb/comm.h) for CUDA device buffers.
 *
 * libnccl.so.2 is dlopen'ed at run time, as the driver, NVRTC and cuBLAS are (cuda_loader.c):
 * nothing links it, so the binary runs where NCCL (or a GPU) is absent and hyb_comm_nccl_new then
 * says so. The few NCCL types used are declared here (their ABI has been stable since NCCL 2.0),
 * so building needs no nccl.h either.
 *
 * Bootstrap: rank 0 calls ncclGetUniqueId and broadcasts the 128-byte id over the `boot` comm
 * (MPI); every rank joins with ncclCommInitRank on the device the CUDA backend runs. Collectives
 * are enqueued on the backend's stream; completion is polled (cuStreamQuery) against the comm's
 * deadline together with ncclCommGetAsyncError, and a failure or timeout aborts the NCCL comm and
 * then the job through `boot`.
 *
 * Exercised only where a GPU exists: the CUDA emulation (HYB_CUDA_EMULATE=1) cannot host NCCL,
 * which drives the real driver itself (docs/DISTRIBUTED.md). */
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "backend/cuda/cuda.h"
#include "backend/cuda/cuda_internal.h"
#include "hyb/comm.h"
#include "hyb/common.h"

int hyb_cuda_emulated(void); /* cuda_emu_select.c */

typedef struct {
    char internal[128];
} nccl_unique_id;
typedef void *nccl_comm_t;
typedef int nccl_result_t; /* ncclSuccess = 0, ncclInProgress = 7 */
enum { NCCL_SUCCESS = 0, NCCL_IN_PROGRESS = 7, NCCL_FLOAT32 = 7, NCCL_SUM = 0 };

typedef struct nccl_api {
    nccl_result_t (*GetUniqueId)(nccl_unique_id *);
    nccl_result_t (*CommInitRank)(nccl_comm_t *, int, nccl_unique_id, int);
    nccl_result_t (*AllReduce)(const void *, void *, size_t, int, int, nccl_comm_t, void *);
    nccl_result_t (*Broadcast)(const void *, void *, size_t, int, int, nccl_comm_t, void *);
    nccl_result_t (*CommDestroy)(nccl_comm_t);
    nccl_result_t (*CommAbort)(nccl_comm_t);
    nccl_result_t (*CommGetAsyncError)(nccl_comm_t, nccl_result_t *);
    const char *(*GetErrorString)(nccl_result_t);
    nccl_result_t (*GetVersion)(int *);
} nccl_api;

static nccl_api g_nccl;
static void *g_nccl_lib;
static CUresult (*g_stream_query)(CUstream);

static int nccl_load(void) {
    if (g_nccl_lib) return HYB_OK;
    const char *home = getenv("CUDA_HOME");
    char paths[6][1024];
    int np = 0;
    snprintf(paths[np++], sizeof paths[0], "libnccl.so.2");
    if (home && *home) {
        snprintf(paths[np++], sizeof paths[0], "%s/lib/libnccl.so.2", home);
        snprintf(paths[np++], sizeof paths[0], "%s/lib64/libnccl.so.2", home);
    }
    snprintf(paths[np++], sizeof paths[0], "/usr/local/cuda/lib/libnccl.so.2");
    snprintf(paths[np++], sizeof paths[0], "/usr/local/cuda/lib64/libnccl.so.2");
    void *lib = NULL;
    for (int i = 0; i < np && !lib; i++)
        lib = dlopen(paths[i], RTLD_NOW | RTLD_LOCAL);
    if (!lib)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "NCCL: cannot load libnccl.so.2 (tried the loader's path, "
                             "$CUDA_HOME/lib{,64}, /usr/local/cuda/lib{,64}): %s",
                             dlerror());
    static const char *const syms[] = {"ncclGetUniqueId", "ncclCommInitRank",
                                       "ncclAllReduce",   "ncclBroadcast",
                                       "ncclCommDestroy", "ncclCommAbort",
                                       "ncclCommGetAsyncError", "ncclGetErrorString",
                                       "ncclGetVersion"};
    _Static_assert(sizeof syms / sizeof *syms * sizeof(void *) == sizeof(nccl_api),
                   "nccl symbol list and table differ");
    nccl_api api;
    void **f = (void **)&api;
    for (size_t i = 0; i < sizeof syms / sizeof *syms; i++) {
        f[i] = dlsym(lib, syms[i]);
        if (!f[i]) {
            dlclose(lib);
            return hyb_error_set(HYB_ERR_UNSUPPORTED, "libnccl.so.2: missing symbol %s", syms[i]);
        }
    }
    g_nccl = api;
    g_nccl_lib = lib;
    /* cuStreamQuery for the deadline: from the driver the backend loaded (not in its table) */
    void *drv = dlopen("libcuda.so.1", RTLD_NOW | RTLD_NOLOAD);
    if (drv) g_stream_query = (CUresult(*)(CUstream))dlsym(drv, "cuStreamQuery");
    return HYB_OK;
}

int hyb_comm_nccl_probe(int *version) {
    *version = 0;
    HYB_TRY(nccl_load());
    if (g_nccl.GetVersion(version) != NCCL_SUCCESS)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "libnccl.so.2: ncclGetVersion failed");
    return HYB_OK;
}

typedef struct nccl_impl {
    nccl_comm_t comm;
} nccl_impl;

static nccl_comm_t ncomm(hyb_comm *c) { return ((nccl_impl *)c->impl)->comm; }

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static void nccl_fail(hyb_comm *c, const char *what, size_t bytes, const char *why) {
    char msg[512];
    snprintf(msg, sizeof msg, "NCCL %s (%zu bytes): %s; ending the job", what, bytes, why);
    if (c->impl) g_nccl.CommAbort(ncomm(c));
    hyb_comm_abort(c->boot, 1, msg);
}

/* Wait for the backend stream with the deadline, watching NCCL's asynchronous errors. */
static int nccl_sync(hyb_comm *c, const char *what, size_t bytes) {
    if (!g_stream_query) {
        CU_CHECK(hyb_cu.cuStreamSynchronize(hyb_cuda_g.stream)); /* no deadline possible */
        return HYB_OK;
    }
    const double deadline = now_s() + c->timeout_s;
    long ns = 1000;
    for (;;) {
        CUresult q = g_stream_query(hyb_cuda_g.stream);
        if (q == CUDA_SUCCESS) return HYB_OK;
        if (q != CUDA_ERROR_NOT_READY) {
            char why[128];
            snprintf(why, sizeof why, "the stream failed (CUresult %d)", (int)q);
            nccl_fail(c, what, bytes, why);
        }
        nccl_result_t ae = NCCL_SUCCESS;
        g_nccl.CommGetAsyncError(ncomm(c), &ae);
        if (ae != NCCL_SUCCESS && ae != NCCL_IN_PROGRESS)
            nccl_fail(c, what, bytes, g_nccl.GetErrorString(ae));
        if (now_s() > deadline) {
            char why[160];
            snprintf(why, sizeof why,
                     "did not complete within %g s (HYB_COMM_TIMEOUT): a peer rank died or hangs",
                     c->timeout_s);
            nccl_fail(c, what, bytes, why);
        }
        struct timespec ts = {0, ns};
        nanosleep(&ts, NULL);
        if (ns < 200000) ns *= 2;
    }
}

static int nccl_allreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_device dev) {
    if (dev != HYB_DEV_CUDA) return hyb_comm_allreduce_f32(c->boot, buf, n, dev);
    HYB_TRY(hyb_cuda_bind());
    nccl_result_t r = g_nccl.AllReduce(buf, buf, n, NCCL_FLOAT32, NCCL_SUM, ncomm(c),
                                       (void *)hyb_cuda_g.stream);
    if (r != NCCL_SUCCESS) nccl_fail(c, "allreduce", n * sizeof(float), g_nccl.GetErrorString(r));
    return nccl_sync(c, "allreduce", n * sizeof(float));
}
static int nccl_allreduce_f64(hyb_comm *c, double *buf, size_t n) {
    return hyb_comm_allreduce_f64(c->boot, buf, n);
}
/* host buffers go over the boot comm (non-blocking there) */
static int nccl_iallreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_comm_req **req) {
    return hyb_comm_iallreduce_f32(c->boot, buf, n, req);
}
static int nccl_wait(hyb_comm *c, hyb_comm_req *req) { return hyb_comm_wait(c->boot, req); }
static int nccl_test(hyb_comm *c, hyb_comm_req *req, int *done) {
    return hyb_comm_test(c->boot, req, done);
}
static int nccl_broadcast(hyb_comm *c, void *buf, size_t bytes, int root) {
    return hyb_comm_broadcast(c->boot, buf, bytes, root);
}
static int nccl_barrier(hyb_comm *c, double timeout_s) {
    return hyb_comm_barrier(c->boot, timeout_s);
}
static void nccl_abort(hyb_comm *c, int code, const char *why) {
    if (c->impl) g_nccl.CommAbort(ncomm(c));
    hyb_comm_abort(c->boot, code, why);
}
static void nccl_free(hyb_comm *c) {
    if (c->impl) {
        g_nccl.CommDestroy(ncomm(c));
        free(c->impl);
    }
    free(c);
}

static const hyb_comm_ops nccl_ops = {nccl_allreduce_f32, nccl_allreduce_f64, nccl_iallreduce_f32,
                                      nccl_wait,          nccl_broadcast,     nccl_barrier,
                                      nccl_abort,         nccl_free,          nccl_test};

int hyb_comm_nccl_new(hyb_comm *boot, hyb_comm **out) {
    static const char W[] = "hyb_comm_nccl_new";
    *out = NULL;
    if (hyb_cuda_emulated())
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "%s: NCCL needs a real GPU driver; the CUDA emulation "
                             "(HYB_CUDA_EMULATE=1) cannot host it",
                             W);
    if (!hyb_backend_get(HYB_DEV_CUDA))
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: the CUDA backend is not initialised", W);
    /* every rank tries to load NCCL; one that cannot makes all of them fail together */
    double ok = nccl_load() == HYB_OK ? 1.0 : 0.0;
    char why[512];
    snprintf(why, sizeof why, "%s", ok > 0 ? "" : hyb_error());
    HYB_TRY(hyb_comm_allreduce_f64(boot, &ok, 1));
    if (ok < boot->size)
        return hyb_error_set(HYB_ERR_UNSUPPORTED, "%s: NCCL unavailable on %d of %d ranks%s%s", W,
                             boot->size - (int)ok, boot->size, *why ? ": " : "", why);
    nccl_unique_id id;
    memset(&id, 0, sizeof id);
    if (boot->rank == 0) {
        nccl_result_t r = g_nccl.GetUniqueId(&id);
        if (r != NCCL_SUCCESS) hyb_comm_abort(boot, 1, "ncclGetUniqueId failed");
    }
    HYB_TRY(hyb_comm_broadcast(boot, &id, sizeof id, 0));
    HYB_TRY(hyb_cuda_bind());
    hyb_comm *c = calloc(1, sizeof *c);
    nccl_impl *im = calloc(1, sizeof *im);
    if (!c || !im) {
        free(c);
        free(im);
        return hyb_error_set(HYB_ERR_NOMEM, "%s: out of memory", W);
    }
    nccl_result_t r = g_nccl.CommInitRank(&im->comm, boot->size, id, boot->rank);
    if (r != NCCL_SUCCESS) {
        char m[256];
        snprintf(m, sizeof m, "ncclCommInitRank on device %d: %s", hyb_cuda_g.ordinal,
                 g_nccl.GetErrorString(r));
        free(c);
        free(im);
        hyb_comm_abort(boot, 1, m); /* the other ranks are waiting inside NCCL */
    }
    c->ops = &nccl_ops;
    c->kind = "nccl";
    c->rank = boot->rank;
    c->size = boot->size;
    c->timeout_s = boot->timeout_s;
    c->boot = boot;
    c->impl = im;
    int v = 0;
    g_nccl.GetVersion(&v);
    hyb_log(HYB_LOG_INFO, "NCCL %d: rank %d of %d on CUDA device %d", v, c->rank, c->size,
            hyb_cuda_g.ordinal);
    *out = c;
    return HYB_OK;
}
