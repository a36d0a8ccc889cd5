/* core/comm.c: the communicator's dispatch, the single-process comm (every collective a no-op) and
 * the process-wide world (hyb/comm.h). The MPI comm is in comm_mpi.c, NCCL's in
 * backend/cuda/comm_nccl.c. */
#include "hyb/comm.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/common.h"

/* comm_mpi.c (HYB_HAVE_MPI): 1 + *out when launched by an MPI launcher, 0 when not, < 0 error */
int hyb_comm_mpi_world(hyb_comm **out);
void hyb_comm_mpi_finalize(void);

// ---- single process -----------------------------------------------------------------------------

static int single_allreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_device dev) {
    return HYB_OK;
}
static int single_allreduce_f64(hyb_comm *c, double *buf, size_t n) { return HYB_OK; }
static int single_iallreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_comm_req **req) {
    *req = NULL;
    return HYB_OK;
}
static int single_wait(hyb_comm *c, hyb_comm_req *req) { return HYB_OK; }
static int single_broadcast(hyb_comm *c, void *buf, size_t bytes, int root) {
    if (root != 0)
        return hyb_error_set(HYB_ERR_ARG, "hyb_comm_broadcast: root %d of a single process", root);
    return HYB_OK;
}
static int single_barrier(hyb_comm *c, double timeout_s) { return HYB_OK; }
static void single_abort(hyb_comm *c, int code, const char *why) {
    fprintf(stderr, "hyb: %s\n", why ? why : "aborted");
    fflush(stderr);
    exit(code);
}
static const hyb_comm_ops single_ops = {single_allreduce_f32, single_allreduce_f64,
                                        single_iallreduce_f32, single_wait,
                                        single_broadcast,      single_barrier,
                                        single_abort,          NULL,
                                        NULL};

// ---- the world -----------------------------------------------------------------------------------

static hyb_comm g_single = {&single_ops, "single", 0, 1, 600.0, NULL, NULL};
static hyb_comm *g_world;

static double env_timeout(void) {
    const char *s = getenv("HYB_COMM_TIMEOUT");
    if (!s || !*s) return 600.0;
    char *end;
    double v = strtod(s, &end);
    if (*end || !(v > 0)) {
        hyb_log(HYB_LOG_WARN, "HYB_COMM_TIMEOUT='%s' is not a positive number of seconds; using 600",
                s);
        return 600.0;
    }
    return v;
}

hyb_comm *hyb_comm_world(void) {
    if (g_world) return g_world;
    g_world = &g_single;
#ifdef HYB_HAVE_MPI
    hyb_comm *m = NULL;
    int rc = hyb_comm_mpi_world(&m);
    if (rc > 0) {
        g_world = m;
    } else if (rc < 0) {
        /* launched by mpirun but MPI would not start: running alone would silently train N
         * independent copies, so stop */
        fprintf(stderr, "hyb: started by an MPI launcher but MPI failed to start: %s\n",
                hyb_error());
        exit(1);
    }
#endif
    g_world->timeout_s = env_timeout();
    atexit(hyb_comm_finalize);
    return g_world;
}

hyb_comm *hyb_comm_current(void) { return g_world; }

static hyb_comm *g_grads_nccl; /* hyb_comm_grads' NCCL comm */
static int g_grads_tried;

hyb_comm *hyb_comm_select_grads(hyb_comm *world, hyb_device dev, hyb_comm_nccl_maker make,
                                char *why, size_t why_len) {
    if (why && why_len) why[0] = 0;
    if (!world || dev != HYB_DEV_CUDA || !world->kind || strcmp(world->kind, "mpi") != 0)
        return world;
    hyb_comm *c = NULL;
    int rc = (make ? make : hyb_comm_nccl_new)(world, &c);
    if (rc == HYB_OK && c) return c;
    if (why && why_len)
        snprintf(why, why_len, "%s", rc != HYB_OK ? hyb_error() : "the NCCL maker gave no comm");
    return world;
}

hyb_comm *hyb_comm_grads(hyb_device dev) {
    hyb_comm *w = hyb_comm_world();
    if (dev != HYB_DEV_CUDA) return w;
    if (!g_grads_tried) {
        g_grads_tried = 1;
        char why[512];
        hyb_comm *c = hyb_comm_select_grads(w, dev, NULL, why, sizeof why);
        if (c != w)
            g_grads_nccl = c;
        else if (why[0])
            hyb_log(HYB_LOG_WARN,
                    "rank %d of %d: CUDA gradients are reduced through MPI with host staging "
                    "(NCCL not used: %s)",
                    w->rank, w->size, why);
    }
    return g_grads_nccl ? g_grads_nccl : w;
}

void hyb_comm_finalize(void) {
    if (g_grads_nccl) { /* before MPI goes */
        hyb_comm_free(g_grads_nccl);
        g_grads_nccl = NULL;
    }
#ifdef HYB_HAVE_MPI
    hyb_comm_mpi_finalize();
#endif
}

int hyb_comm_have_mpi(void) {
#ifdef HYB_HAVE_MPI
    return 1;
#else
    return 0;
#endif
}

// ---- dispatch --------------------------------------------------------------------------------------

int hyb_comm_rank(const hyb_comm *c) { return c->rank; }
int hyb_comm_size(const hyb_comm *c) { return c->size; }
const char *hyb_comm_kind(const hyb_comm *c) { return c->kind; }

double hyb_comm_set_timeout(hyb_comm *c, double seconds) {
    double old = c->timeout_s;
    if (seconds > 0) c->timeout_s = seconds;
    return old;
}

int hyb_comm_allreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_device dev) {
    if (n == 0) return HYB_OK;
    if (!buf) return hyb_error_set(HYB_ERR_ARG, "hyb_comm_allreduce_f32: NULL buffer");
    return c->ops->allreduce_f32(c, buf, n, dev);
}
int hyb_comm_allreduce_f64(hyb_comm *c, double *buf, size_t n) {
    if (n == 0) return HYB_OK;
    if (!buf) return hyb_error_set(HYB_ERR_ARG, "hyb_comm_allreduce_f64: NULL buffer");
    return c->ops->allreduce_f64(c, buf, n);
}
int hyb_comm_iallreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_comm_req **req) {
    *req = NULL;
    if (n == 0) return HYB_OK;
    if (!buf) return hyb_error_set(HYB_ERR_ARG, "hyb_comm_iallreduce_f32: NULL buffer");
    return c->ops->iallreduce_f32(c, buf, n, req);
}
int hyb_comm_wait(hyb_comm *c, hyb_comm_req *req) {
    if (!req) return HYB_OK;
    return c->ops->wait(c, req);
}
int hyb_comm_test(hyb_comm *c, hyb_comm_req *req, int *done) {
    *done = 1;
    if (!req) return HYB_OK;
    *done = 0;
    return c->ops->test ? c->ops->test(c, req, done) : HYB_OK;
}
int hyb_comm_broadcast(hyb_comm *c, void *buf, size_t bytes, int root) {
    if (root < 0 || root >= c->size)
        return hyb_error_set(HYB_ERR_ARG, "hyb_comm_broadcast: root %d out of range [0, %d)", root,
                             c->size);
    if (bytes == 0) return HYB_OK;
    if (!buf) return hyb_error_set(HYB_ERR_ARG, "hyb_comm_broadcast: NULL buffer");
    return c->ops->broadcast(c, buf, bytes, root);
}
int hyb_comm_barrier(hyb_comm *c, double timeout_s) {
    return c->ops->barrier(c, timeout_s > 0 ? timeout_s : c->timeout_s);
}
void hyb_comm_abort(hyb_comm *c, int code, const char *why) {
    c->ops->abort(c, code, why);
    exit(code); /* not reached */
}
void hyb_comm_free(hyb_comm *c) {
    if (c && c->ops->free) c->ops->free(c);
}

#ifndef HYB_HAVE_CUDA
int hyb_comm_nccl_probe(int *version) {
    *version = 0;
    return hyb_error_set(HYB_ERR_UNSUPPORTED,
                         "hyb_comm_nccl_probe: this hyb was built without CUDA (no NCCL)");
}
int hyb_comm_nccl_new(hyb_comm *boot, hyb_comm **out) {
    *out = NULL;
    return hyb_error_set(HYB_ERR_UNSUPPORTED,
                         "hyb_comm_nccl_new: this hyb was built without CUDA (no NCCL)");
}
#endif
