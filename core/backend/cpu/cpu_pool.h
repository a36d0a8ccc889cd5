/* core/backend/cpu/cpu_pool.h: hyb's persistent CPU thread pool (cpu_pool.c).
 *
 * One pool per process: the calling thread plus hyb_threads() - 1 workers that live for the whole
 * run. A dispatch cuts [0, n) into contiguous chunks (multiples of `grain` items, about four per
 * thread) that the threads claim in order from one atomic counter; the caller takes part and
 * returns when every chunk has finished. Workers that are between dispatches spin (with `pause`)
 * for a bounded time (HYB_POOL_SPIN_US, default 200 us) and then sleep on a futex, so a
 * decode step's dispatches meet spinning workers while an idle process costs no CPU.
 *
 * A chunk never waits for a particular thread: when a worker has been descheduled (a core stolen
 * by another process), the others take its chunks, and a worker that wakes up late finds nothing
 * left to do. So a dispatch costs about the slowest chunk, not the slowest thread.
 *
 * Runs serially on the calling thread (fn(ctx, 0, n, 0), no synchronisation at all) when the pool
 * has one thread, when the work is one chunk, when called from inside a pool task or an OpenMP
 * parallel region (no oversubscription), or when another thread is dispatching at the same time.
 *
 * Results: the chunk boundaries depend on the thread count, the work inside a chunk must not (every
 * user computes each output item from its inputs alone), so results are the same bits for every
 * thread count. `tid` is in [0, hyb_pool_threads()) and unique among the threads of one dispatch:
 * index per-thread scratch with it. */
#ifndef HYB_CPU_POOL_H
#define HYB_CPU_POOL_H

#include <stdint.h>

/* One chunk [lo, hi) of the items, run on thread tid. Returns HYB_OK or a negative hyb_status with
 * hyb_error_set called: the first failure is returned by hyb_pool_parallel_for with its message
 * (the later chunks of that dispatch are skipped). */
typedef int (*hyb_pool_fn)(void *ctx, int64_t lo, int64_t hi, int tid);

/* fn over [0, n) in chunks of a multiple of grain (>= 1) items; n <= 0 does nothing. */
int hyb_pool_parallel_for(int64_t n, int64_t grain, hyb_pool_fn fn, void *ctx);

/* The thread count a dispatch uses (the caller included): hyb_threads(). */
int hyb_pool_threads(void);

/* Counters for tests and benchmarks: dispatches that woke the workers (parallel) and those run on
 * the caller alone (serial) since the process started. */
void hyb_pool_counts(int64_t *parallel, int64_t *serial);

#endif
