/* core/comm_mpi.c: the MPI communicator (hyb/comm.h), compiled when CMake found MPI
 * (HYB_HAVE_MPI). Host buffers; a CUDA device buffer is staged through host memory.
 *
 * Every collective is posted non-blocking (MPI_Iallreduce, MPI_Ibcast, MPI_Ibarrier) and polled
 * with MPI_Test until the comm's deadline; the communicator returns MPI errors
 * (MPI_ERRORS_RETURN) instead of letting MPI abort silently. Past the deadline or on an error the
 * rank prints which rank it is, the collective and why, then MPI_Abort ends every rank. */
#ifdef HYB_HAVE_MPI
#include <mpi.h>
#include <sched.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>

#include "hyb/comm.h"
#include "hyb/common.h"
#include "hyb/tensor.h"

typedef struct mpi_impl {
    MPI_Comm comm; /* a duplicate of MPI_COMM_WORLD with MPI_ERRORS_RETURN */
} mpi_impl;

struct hyb_comm_req {
    MPI_Request r;
    size_t bytes;
};

static int g_inited; /* 1: this module called MPI_Init */

static double now_s(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (double)ts.tv_sec + 1e-9 * (double)ts.tv_nsec;
}

static MPI_Comm comm_of(hyb_comm *c) { return ((mpi_impl *)c->impl)->comm; }

static void mpi_abort(hyb_comm *c, int code, const char *why) {
    fprintf(stderr, "hyb: rank %d of %d: %s\n", c->rank, c->size, why ? why : "aborted");
    fflush(stderr);
    MPI_Abort(MPI_COMM_WORLD, code ? code : 1);
    _Exit(code ? code : 1); /* MPI_Abort does not return; in case it does */
}

/* An MPI error or a missed deadline: one line naming this rank and the collective, then the
 * whole job ends (a half-done collective cannot be recovered from). */
static void fail(hyb_comm *c, const char *what, size_t bytes, int mpi_rc) {
    char msg[MPI_MAX_ERROR_STRING + 256];
    if (mpi_rc != MPI_SUCCESS) {
        char es[MPI_MAX_ERROR_STRING];
        int len = 0;
        MPI_Error_string(mpi_rc, es, &len);
        snprintf(msg, sizeof msg, "%s (%zu bytes) failed: %s; a peer rank died or the network "
                 "failed; ending the job", what, bytes, es);
    } else {
        snprintf(msg, sizeof msg,
                 "%s (%zu bytes) did not complete within %g s (HYB_COMM_TIMEOUT): a peer rank "
                 "died, hangs or stopped taking part; ending the job",
                 what, bytes, c->timeout_s);
    }
    mpi_abort(c, 1, msg);
}

/* Poll r until done or the deadline. A non-blocking collective moves forward only inside MPI
 * calls (each MPI_Test advances its fragments), so the first second polls without sleeping,
 * yielding the core between tests as MPI's own blocking calls do; after that the peers are
 * late, not the transfer (a straggler, a dead rank), and the loop sleeps 1 ms between tests so
 * that a waiting rank does not take a shared core from the ones still computing. */
static void wait_deadline(hyb_comm *c, MPI_Request *r, const char *what, size_t bytes,
                          double timeout_s) {
    const double t0 = now_s(), deadline = t0 + timeout_s;
    for (unsigned it = 0;; it++) {
        int done = 0;
        int rc = MPI_Test(r, &done, MPI_STATUS_IGNORE);
        if (rc != MPI_SUCCESS) fail(c, what, bytes, rc);
        if (done) return;
        if ((it & 63) != 0) {
            sched_yield();
            continue;
        }
        double t = now_s();
        if (t > deadline) fail(c, what, bytes, MPI_SUCCESS);
        if (t - t0 > 1.0) {
            struct timespec ts = {0, 1000000};
            nanosleep(&ts, NULL);
        } else {
            sched_yield();
        }
    }
}

static int host_allreduce(hyb_comm *c, void *buf, size_t n, MPI_Datatype dt, size_t elt,
                          const char *what) {
    /* counts are int in MPI: large buffers go in pieces of at most 2^30 elements */
    for (size_t off = 0; off < n;) {
        size_t k = n - off > ((size_t)1 << 30) ? ((size_t)1 << 30) : n - off;
        MPI_Request r;
        int rc = MPI_Iallreduce(MPI_IN_PLACE, (char *)buf + off * elt, (int)k, dt, MPI_SUM,
                                comm_of(c), &r);
        if (rc != MPI_SUCCESS) fail(c, what, k * elt, rc);
        wait_deadline(c, &r, what, k * elt, c->timeout_s);
        off += k;
    }
    return HYB_OK;
}

static int mpi_allreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_device dev) {
    if (dev == HYB_DEV_CPU) return host_allreduce(c, buf, n, MPI_FLOAT, sizeof(float), "allreduce");
    /* a device buffer: through host memory */
    int64_t shape[1] = {(int64_t)n};
    float *h = malloc(sizeof(float) * n);
    hyb_tensor *t = h ? hyb_tensor_wrap(HYB_F32, 1, shape, buf) : NULL;
    int rc = t ? HYB_OK : hyb_error_set(HYB_ERR_NOMEM, "hyb_comm_allreduce_f32: out of memory");
    if (rc == HYB_OK) {
        t->device = dev;
        rc = hyb_tensor_download(t, h);
        if (rc == HYB_OK) rc = host_allreduce(c, h, n, MPI_FLOAT, sizeof(float), "allreduce");
        if (rc == HYB_OK) rc = hyb_tensor_upload(t, h);
        hyb_tensor_free(t);
    }
    free(h);
    return rc;
}

static int mpi_allreduce_f64(hyb_comm *c, double *buf, size_t n) {
    return host_allreduce(c, buf, n, MPI_DOUBLE, sizeof(double), "allreduce (f64)");
}

static int mpi_iallreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_comm_req **req) {
    if (n > (size_t)1 << 30)
        return hyb_error_set(HYB_ERR_ARG, "hyb_comm_iallreduce_f32: %zu elements; at most 2^30", n);
    hyb_comm_req *q = malloc(sizeof *q);
    if (!q) return hyb_error_set(HYB_ERR_NOMEM, "hyb_comm_iallreduce_f32: out of memory");
    q->bytes = n * sizeof(float);
    int rc = MPI_Iallreduce(MPI_IN_PLACE, buf, (int)n, MPI_FLOAT, MPI_SUM, comm_of(c), &q->r);
    if (rc != MPI_SUCCESS) fail(c, "allreduce", q->bytes, rc);
    *req = q;
    return HYB_OK;
}

static int mpi_wait(hyb_comm *c, hyb_comm_req *q) {
    wait_deadline(c, &q->r, "allreduce", q->bytes, c->timeout_s);
    free(q);
    return HYB_OK;
}

static int mpi_test(hyb_comm *c, hyb_comm_req *q, int *done) {
    int rc = MPI_Test(&q->r, done, MPI_STATUS_IGNORE); /* a completed request becomes NULL */
    if (rc != MPI_SUCCESS) fail(c, "allreduce", q->bytes, rc);
    return HYB_OK;
}

static int mpi_broadcast(hyb_comm *c, void *buf, size_t bytes, int root) {
    for (size_t off = 0; off < bytes;) {
        size_t k = bytes - off > ((size_t)1 << 30) ? ((size_t)1 << 30) : bytes - off;
        MPI_Request r;
        int rc = MPI_Ibcast((char *)buf + off, (int)k, MPI_BYTE, root, comm_of(c), &r);
        if (rc != MPI_SUCCESS) fail(c, "broadcast", k, rc);
        wait_deadline(c, &r, "broadcast", k, c->timeout_s);
        off += k;
    }
    return HYB_OK;
}

static int mpi_barrier(hyb_comm *c, double timeout_s) {
    MPI_Request r;
    int rc = MPI_Ibarrier(comm_of(c), &r);
    if (rc != MPI_SUCCESS) fail(c, "barrier", 0, rc);
    wait_deadline(c, &r, "barrier", 0, timeout_s);
    return HYB_OK;
}

static const hyb_comm_ops mpi_ops = {mpi_allreduce_f32, mpi_allreduce_f64, mpi_iallreduce_f32,
                                     mpi_wait,          mpi_broadcast,     mpi_barrier,
                                     mpi_abort,         NULL,              mpi_test};

static hyb_comm g_mpi;
static mpi_impl g_mpi_impl;

/* A process started by an MPI launcher: OpenMPI's mpirun sets OMPI_COMM_WORLD_SIZE, PMIx-based
 * launchers PMIX_RANK, MPICH/Hydra and Slurm's PMI PMI_RANK. Without one hyb stays single (no
 * MPI_Init at all: the run is exactly the one without MPI). */
static int launched(void) {
    return getenv("OMPI_COMM_WORLD_SIZE") || getenv("PMIX_RANK") || getenv("PMI_RANK");
}

int hyb_comm_mpi_world(hyb_comm **out) {
    if (!launched()) return 0;
    int inited = 0;
    MPI_Initialized(&inited);
    if (!inited) {
        int provided;
        if (MPI_Init_thread(NULL, NULL, MPI_THREAD_FUNNELED, &provided) != MPI_SUCCESS)
            return hyb_error_set(HYB_ERR, "MPI_Init_thread failed");
        g_inited = 1;
    }
    MPI_Comm dup;
    if (MPI_Comm_dup(MPI_COMM_WORLD, &dup) != MPI_SUCCESS)
        return hyb_error_set(HYB_ERR, "MPI_Comm_dup failed");
    MPI_Comm_set_errhandler(dup, MPI_ERRORS_RETURN);
    g_mpi_impl.comm = dup;
    g_mpi.ops = &mpi_ops;
    g_mpi.kind = "mpi";
    MPI_Comm_rank(dup, &g_mpi.rank);
    MPI_Comm_size(dup, &g_mpi.size);
    g_mpi.timeout_s = 600.0;
    g_mpi.impl = &g_mpi_impl;
    *out = &g_mpi;
    return 1;
}

void hyb_comm_mpi_finalize(void) {
    int fin = 0;
    if (!g_inited) return;
    MPI_Finalized(&fin);
    if (fin) return;
    if (g_mpi_impl.comm != MPI_COMM_NULL && g_mpi.impl) {
        MPI_Comm_free(&g_mpi_impl.comm);
        g_mpi.impl = NULL;
    }
    MPI_Finalize();
}
#else
typedef int hyb_comm_mpi_unused; /* ISO C: no empty translation unit */
#endif
