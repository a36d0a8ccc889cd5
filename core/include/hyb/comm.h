/* hyb/comm.h: the communicator of data-parallel training (docs/DISTRIBUTED.md).
 *
 *   hyb_comm *c = hyb_comm_world();               // process-wide; MPI when started by mpirun
 *   printf("rank %d of %d (%s)\n", hyb_comm_rank(c), hyb_comm_size(c), hyb_comm_kind(c));
 *   hyb_comm_allreduce_f32(c, grads, n, HYB_DEV_CPU);            // in place, sum over ranks
 *   hyb_comm_req *r;  hyb_comm_iallreduce_f32(c, bucket, n, &r); // ... other work ...
 *   hyb_comm_wait(c, r);
 *
 * Three implementations behind one table:
 *   single  one process (no launcher, or a build without MPI): every collective is a no-op, so a
 *           run without mpirun is exactly the run of before;
 *   mpi     OpenMPI (host buffers; device buffers are staged through host memory), chosen when the
 *           process was started by an MPI launcher (OMPI_COMM_WORLD_SIZE / PMIX_RANK / PMI_RANK in
 *           the environment) and hyb was built with MPI;
 *   nccl    NCCL for CUDA device buffers (libnccl.so.2 dlopen'ed at run time, like cuBLAS and
 *           NVRTC: the binary runs without it); its unique id is broadcast over an mpi comm.
 *
 * Faults: no collective blocks forever. Blocking calls post the non-blocking form and poll it
 * until a deadline (HYB_COMM_TIMEOUT seconds, default 600; hyb_comm_set_timeout); past it, or on
 * an MPI error, the rank prints one line naming itself, the collective and the cause, and aborts
 * the whole job (MPI_Abort), so a dead or stuck peer ends every rank with a non-zero status.
 */
#ifndef HYB_COMM_H
#define HYB_COMM_H

#include <stddef.h>

#include "hyb/tensor.h"

#ifdef __cplusplus
extern "C" {
#endif

typedef struct hyb_comm hyb_comm;
typedef struct hyb_comm_req hyb_comm_req;

/* The process-wide communicator: created on first call (MPI_Init when launched by mpirun and
 * built with MPI; else "single"). Never NULL. hyb_comm_finalize at exit (idempotent; registered
 * with atexit by the first call). */
hyb_comm *hyb_comm_world(void);
void hyb_comm_finalize(void);
/* The world if hyb_comm_world has made it, else NULL (never starts MPI). */
hyb_comm *hyb_comm_current(void);
/* 1 when this binary was built with MPI (HYB_HAVE_MPI). */
int hyb_comm_have_mpi(void);

int hyb_comm_rank(const hyb_comm *c);
int hyb_comm_size(const hyb_comm *c);
const char *hyb_comm_kind(const hyb_comm *c); /* "single", "mpi", "nccl" */

/* Deadline of every blocking collective in seconds (> 0); returns the previous one. */
double hyb_comm_set_timeout(hyb_comm *c, double seconds);

/* In place: buf[i] = sum over ranks of buf[i]. dev: where buf lives (HYB_DEV_CPU, or
 * HYB_DEV_CUDA: a device pointer; mpi stages it through host memory, nccl reduces on the GPU).
 * The result is bitwise the same on every rank. */
int hyb_comm_allreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_device dev);
/* Host doubles (metrics, counts). */
int hyb_comm_allreduce_f64(hyb_comm *c, double *buf, size_t n);
/* Non-blocking host f32 sum in place; *req is NULL for a comm that has nothing to do (single).
 * hyb_comm_wait completes and frees it (with the deadline above). */
int hyb_comm_iallreduce_f32(hyb_comm *c, float *buf, size_t n, hyb_comm_req **req);
int hyb_comm_wait(hyb_comm *c, hyb_comm_req *req);
/* Advance req without blocking (MPI moves a non-blocking collective forward only inside MPI
 * calls); *done = 1 once it has completed (req stays valid: hyb_comm_wait still frees it).
 * NULL req: done. A comm without a progress call reports 0 until hyb_comm_wait. */
int hyb_comm_test(hyb_comm *c, hyb_comm_req *req, int *done);
/* Root's `bytes` bytes of buf to every rank (host memory). */
int hyb_comm_broadcast(hyb_comm *c, void *buf, size_t bytes, int root);
/* Every rank reaches this point; timeout_s <= 0: the comm's deadline. */
int hyb_comm_barrier(hyb_comm *c, double timeout_s);
/* End the whole job: prints "hyb: rank R of N: <why>" and aborts every rank with `code`.
 * For the single comm: prints and exits(code). Does not return. */
void hyb_comm_abort(hyb_comm *c, int code, const char *why);

/* NCCL on top of an mpi (or single) comm: rank 0 makes the unique id, broadcasts it over `boot`,
 * and every rank joins with the CUDA device the backend runs (hyb_cuda_init first). The nccl comm
 * reduces CUDA device buffers on the backend's stream; host buffers and the rest go to `boot`.
 * HYB_ERR_UNSUPPORTED when the build has no CUDA or libnccl.so.2 cannot be loaded (the message
 * says which). */
int hyb_comm_nccl_new(hyb_comm *boot, hyb_comm **out);
void hyb_comm_free(hyb_comm *c); /* a comm from hyb_comm_nccl_new (the world is never freed) */

/* Which communicator reduces a trainer's gradients that live on `dev` (the decision, apart so it
 * is tested without a GPU):
 *   - a world that is not "mpi" (one process, no launcher), or host gradients: the world;
 *   - CUDA gradients under an MPI world: a new NCCL comm from make(world, &c) (make NULL:
 *     hyb_comm_nccl_new), reducing device buffers on the GPU; the caller owns it (hyb_comm_free);
 *   - make fails (no libnccl, no GPU, the CUDA emulation): the world, which stages device
 *     gradients through host memory; why (when not NULL) gets the reason, else why[0] = 0.
 * make is called on every rank or none (the decision depends only on the world and dev). */
typedef int (*hyb_comm_nccl_maker)(hyb_comm *boot, hyb_comm **out);
hyb_comm *hyb_comm_select_grads(hyb_comm *world, hyb_device dev, hyb_comm_nccl_maker make,
                                char *why, size_t why_len);
/* hyb_comm_select_grads over hyb_comm_world() with hyb_comm_nccl_new, made once per process: the
 * NCCL comm is kept (freed by hyb_comm_finalize), a fallback to MPI is logged once (warning, the
 * reason and "host staging"). */
hyb_comm *hyb_comm_grads(hyb_device dev);
/* Load libnccl.so.2 and resolve every NCCL function the nccl comm uses, without a GPU; *version
 * = ncclGetVersion's (e.g. 22703 for 2.27.3). HYB_ERR_UNSUPPORTED naming what is missing. */
int hyb_comm_nccl_probe(int *version);

/* ---- the table behind the interface (core/comm*.c) -------------------------------------------*/
typedef struct hyb_comm_ops {
    int (*allreduce_f32)(hyb_comm *c, float *buf, size_t n, hyb_device dev);
    int (*allreduce_f64)(hyb_comm *c, double *buf, size_t n);
    int (*iallreduce_f32)(hyb_comm *c, float *buf, size_t n, hyb_comm_req **req);
    int (*wait)(hyb_comm *c, hyb_comm_req *req);
    int (*broadcast)(hyb_comm *c, void *buf, size_t bytes, int root);
    int (*barrier)(hyb_comm *c, double timeout_s);
    void (*abort)(hyb_comm *c, int code, const char *why);
    void (*free)(hyb_comm *c);
    int (*test)(hyb_comm *c, hyb_comm_req *req, int *done); /* may be NULL */
} hyb_comm_ops;

struct hyb_comm {
    const hyb_comm_ops *ops;
    const char *kind;
    int rank, size;
    double timeout_s;
    hyb_comm *boot; /* nccl: the comm its id came over */
    void *impl;
};

#ifdef __cplusplus
}
#endif
#endif
