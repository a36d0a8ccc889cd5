/* core/backend/cpu/cpu_pool.c: the persistent CPU thread pool (cpu_pool.h).
 *
 * Protocol (all shared words are C11 atomics):
 *   next   64 bits: generation << 32 | index of the next unclaimed chunk. The dispatching thread
 *          first stores (gen, LOCKED), then the job's fields (release), then (gen, 0) (release).
 *          A thread claims chunk i of generation g by a CAS from (g, i) to (g, i + 1), having read
 *          the fields after loading (g, i): a successful CAS proves the fields it read are job g's
 *          (a newer job would have replaced `next` with (g + 1, LOCKED) before touching them).
 *   seq    32 bits, the futex workers sleep on: the generation of the latest job.
 *   done   32 bits, chunks of the current job finished; the futex the dispatcher sleeps on.
 * A dispatcher waits only for chunks, never for a particular worker, so a worker that was
 * descheduled (or is still asleep) delays nothing: it finds `next` of an old generation or past the
 * last chunk, and goes back to waiting.
 *
 * Waiting, both sides: spin with the `pause` hint up to spin_ns (HYB_POOL_SPIN_US, default 200 us:
 * longer than the gaps between the dispatches of one decode step, far shorter than the pause
 * between requests of a server; sched_yield every 1024 spins, so that on an oversubscribed
 * machine a spinning thread hands its core to whatever waits for it), then sleep on the futex. Wakes are issued only when a sleeper
 * registered (a seq_cst store of the word, then a load of the sleeper count, against the sleeper's
 * increment then re-check: one of the two sees the other). */
#define _GNU_SOURCE
#include "backend/cpu/cpu_pool.h"

#include <errno.h>
#include <limits.h>
#include <omp.h>
#include <pthread.h>
#include <sched.h>
#include <stdatomic.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <unistd.h>

#ifdef __linux__
#include <linux/futex.h>
#include <sys/syscall.h>
#endif

#include "hyb/backend.h"
#include "hyb/common.h"

#define LOCKED 0xFFFFFFFFu
#define CHUNKS_PER_THREAD 4
#define MAX_THREADS 1024
/* lateness score (see the end of hyb_pool_parallel_for): +LATE_UP per late dispatch, -1 per
 * timely one; spinning stops at LATE_OFF and resumes at LATE_ON */
#define LATE_UP 4
#define LATE_MAX 64
#define LATE_OFF 32
#define LATE_ON 8

static inline void cpu_relax(void) {
#if defined(__x86_64__) || defined(__i386__)
    __builtin_ia32_pause();
#elif defined(__aarch64__)
    __asm__ __volatile__("yield");
#endif
}

static int64_t now_ns(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return (int64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static void futex_wait(_Atomic uint32_t *w, uint32_t val) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAIT_PRIVATE, val, NULL, NULL, 0);
#else
    (void)w, (void)val;
    sched_yield();
#endif
}

static void futex_wake(_Atomic uint32_t *w) {
#ifdef __linux__
    syscall(SYS_futex, (uint32_t *)w, FUTEX_WAKE_PRIVATE, INT_MAX, NULL, NULL, 0);
#else
    (void)w;
#endif
}

typedef struct pool {
    int nthreads; /* the caller included */
    pthread_t *th;
    int64_t spin_max; /* HYB_POOL_SPIN_US */
    _Atomic int64_t spin_ns; /* in force now: spin_max, or 0 while the machine is oversubscribed */
    int late;                /* the dispatcher's lateness score, 0..LATE_MAX (under g_mu) */

    _Alignas(64) _Atomic uint64_t next;
    _Alignas(64) _Atomic uint32_t seq;
    _Atomic int sleepers;
    _Atomic int quit;
    _Alignas(64) _Atomic uint32_t done;
    _Atomic int waiting; /* the dispatcher sleeps on `done` */

    /* the job (written by the dispatcher between (gen, LOCKED) and (gen, 0)) */
    _Alignas(64) _Atomic(hyb_pool_fn) fn;
    _Atomic(void *) ctx;
    _Atomic int64_t n, chunk;
    _Atomic uint32_t nchunks;
    _Atomic int err;
    char errmsg[2048]; /* core/common.c HYB_ERROR_CAP */
} pool;

static pthread_mutex_t g_mu = PTHREAD_MUTEX_INITIALIZER; /* one dispatcher at a time; setup */
static pool *g_pool;
static uint32_t g_gen; /* the dispatcher's generation counter (under g_mu) */
static int g_threads;  /* 0: default */
static _Thread_local int t_in_pool;
static _Atomic int64_t g_npar, g_nser, g_nlate, g_nnospin; /* counts for HYB_POOL_STATS */

static int default_threads(void) {
    const char *e = getenv("OMP_NUM_THREADS");
    if (e && *e) {
        long v = strtol(e, NULL, 10); /* "4" or "4,2": the first level */
        if (v >= 1) return v > MAX_THREADS ? MAX_THREADS : (int)v;
    }
#ifdef __linux__
    cpu_set_t cs;
    if (sched_getaffinity(0, sizeof cs, &cs) == 0) {
        int c = CPU_COUNT(&cs);
        if (c >= 1) return c > MAX_THREADS ? MAX_THREADS : c;
    }
#endif
    long c = sysconf(_SC_NPROCESSORS_ONLN);
    return c < 1 ? 1 : c > MAX_THREADS ? MAX_THREADS : (int)c;
}

int hyb_threads(void) {
    int n = __atomic_load_n(&g_threads, __ATOMIC_RELAXED);
    return n > 0 ? n : default_threads();
}

int hyb_pool_threads(void) {
    return hyb_threads();
}

/* HYB_POOL_STATS=1: the dispatch counts on stderr at exit (sync points per token, bench/) */
static void stats_report(void) {
    fprintf(stderr,
            "hyb pool: %d threads, %lld parallel dispatches (%lld late, %lld without spinning), "
            "%lld serial\n",
            hyb_threads(), (long long)atomic_load(&g_npar), (long long)atomic_load(&g_nlate),
            (long long)atomic_load(&g_nnospin), (long long)atomic_load(&g_nser));
}

__attribute__((constructor)) static void stats_init(void) {
    const char *e = getenv("HYB_POOL_STATS");
    if (e && *e && strcmp(e, "0") != 0) atexit(stats_report);
}

void hyb_pool_counts(int64_t *parallel, int64_t *serial) {
    if (parallel) *parallel = atomic_load(&g_npar);
    if (serial) *serial = atomic_load(&g_nser);
}

/* Claim and run the chunks of generation gen until none is left. */
static int run_chunks(pool *p, uint32_t gen, int tid) {
    int ran = 0;
    for (;;) {
        uint64_t c = atomic_load_explicit(&p->next, memory_order_acquire);
        if ((uint32_t)(c >> 32) != gen || (uint32_t)c == LOCKED) return ran;
        hyb_pool_fn fn = atomic_load_explicit(&p->fn, memory_order_acquire);
        void *ctx = atomic_load_explicit(&p->ctx, memory_order_acquire);
        int64_t n = atomic_load_explicit(&p->n, memory_order_acquire);
        int64_t chunk = atomic_load_explicit(&p->chunk, memory_order_acquire);
        uint32_t nch = atomic_load_explicit(&p->nchunks, memory_order_acquire);
        uint32_t i = (uint32_t)c;
        if (i >= nch) return ran;
        if (!atomic_compare_exchange_weak_explicit(&p->next, &c, c + 1, memory_order_acq_rel,
                                                   memory_order_relaxed))
            continue;
        if (atomic_load_explicit(&p->err, memory_order_relaxed) == 0) {
            int64_t lo = (int64_t)i * chunk, hi = lo + chunk < n ? lo + chunk : n;
            int rc = fn(ctx, lo, hi, tid);
            if (rc != HYB_OK) {
                int zero = 0;
                if (atomic_compare_exchange_strong(&p->err, &zero, rc))
                    snprintf(p->errmsg, sizeof p->errmsg, "%s", hyb_error());
            }
        }
        ran++;
        if (atomic_fetch_add(&p->done, 1) + 1 == nch && atomic_load(&p->waiting))
            futex_wake(&p->done);
    }
}

typedef struct worker_arg {
    pool *p;
    int tid;
    uint32_t seq0; /* seq when the pool was made: a job published before this worker first
                    * looks is still seen as new */
} worker_arg;

static void *worker_main(void *arg) {
    worker_arg wa = *(worker_arg *)arg;
    free(arg);
    pool *p = wa.p;
    t_in_pool = 1;
    uint32_t seen = wa.seq0;
    for (;;) {
        uint32_t s = atomic_load_explicit(&p->seq, memory_order_acquire);
        if (s == seen && !atomic_load_explicit(&p->quit, memory_order_relaxed)) {
            const int64_t t0 = now_ns();
            for (unsigned it = 1;; it++) {
                cpu_relax();
                s = atomic_load_explicit(&p->seq, memory_order_acquire);
                if (s != seen || atomic_load_explicit(&p->quit, memory_order_relaxed)) break;
                if ((it & 63) == 0 && now_ns() - t0 > atomic_load_explicit(&p->spin_ns, memory_order_relaxed)) break;
                if ((it & 1023) == 0) sched_yield(); /* a busy machine: let waiting work run */
            }
        }
        if (atomic_load(&p->quit)) break;
        if (s == seen) { /* spun out: sleep until the next job */
            atomic_fetch_add(&p->sleepers, 1);
            if (atomic_load(&p->seq) == seen && !atomic_load(&p->quit)) futex_wait(&p->seq, seen);
            atomic_fetch_sub(&p->sleepers, 1);
            continue;
        }
        seen = s;
        run_chunks(p, s, wa.tid);
    }
    return NULL;
}

static void pool_destroy(pool *p) {
    if (!p) return;
    atomic_store(&p->quit, 1);
    atomic_fetch_add(&p->seq, 1);
    futex_wake(&p->seq);
    for (int i = 0; i < p->nthreads - 1; i++)
        pthread_join(p->th[i], NULL);
    free(p->th);
    free(p);
}

/* under g_mu */
static pool *pool_create(int nthreads) {
    pool *p = aligned_alloc(64, (sizeof(pool) + 63) & ~(size_t)63);
    if (!p) return NULL;
    memset(p, 0, sizeof *p);
    p->nthreads = nthreads;
    const char *e = getenv("HYB_POOL_SPIN_US");
    long us = e && *e ? strtol(e, NULL, 10) : 200;
    p->spin_max = (us < 0 ? 0 : us > 1000000 ? 1000000 : us) * 1000;
    atomic_store(&p->spin_ns, p->spin_max);
    atomic_store(&p->next, (uint64_t)g_gen << 32 | LOCKED);
    atomic_store(&p->seq, g_gen);
    p->th = calloc((size_t)nthreads, sizeof *p->th);
    if (!p->th) {
        free(p);
        return NULL;
    }
    for (int i = 0; i < nthreads - 1; i++) {
        worker_arg *wa = malloc(sizeof *wa);
        if (wa) wa->p = p, wa->tid = i + 1, wa->seq0 = g_gen;
        if (!wa || pthread_create(&p->th[i], NULL, worker_main, wa) != 0) {
            free(wa);
            p->nthreads = i + 1; /* the workers started so far */
            pool_destroy(p);
            return NULL;
        }
    }
    return p;
}

int hyb_set_threads(int n) {
    if (n < 0 || n > MAX_THREADS)
        return hyb_error_set(HYB_ERR_ARG, "threads: %d is out of range (0 = default, 1..%d)", n,
                             MAX_THREADS);
    if (t_in_pool) /* the dispatcher holds g_mu: waiting for it here would never end */
        return hyb_error_set(HYB_ERR_ARG, "threads: cannot be changed from inside a parallel task");
    pthread_mutex_lock(&g_mu);
    __atomic_store_n(&g_threads, n, __ATOMIC_RELAXED);
    const int want = hyb_threads();
    if (g_pool && g_pool->nthreads != want) { /* rebuilt at the next dispatch */
        pool_destroy(g_pool);
        g_pool = NULL;
    }
    pthread_mutex_unlock(&g_mu);
    /* OpenMP (prefill/training GEMM slices, losses) follows the same count on this thread */
    omp_set_num_threads(want);
    return HYB_OK;
}

static int run_serial(int64_t n, hyb_pool_fn fn, void *ctx) {
    atomic_fetch_add_explicit(&g_nser, 1, memory_order_relaxed);
    const int saved = t_in_pool;
    t_in_pool = 1;
    int rc = fn(ctx, 0, n, 0);
    t_in_pool = saved;
    return rc;
}

int hyb_pool_parallel_for(int64_t n, int64_t grain, hyb_pool_fn fn, void *ctx) {
    if (n <= 0) return HYB_OK;
    if (grain < 1) grain = 1;
    const int nt = hyb_threads();
    if (nt <= 1 || n <= grain || t_in_pool || omp_in_parallel()) return run_serial(n, fn, ctx);
    /* chunks: about CHUNKS_PER_THREAD per thread, each a multiple of grain */
    int64_t units = (n + grain - 1) / grain;
    int64_t want = (int64_t)nt * CHUNKS_PER_THREAD;
    int64_t per = (units + want - 1) / want;
    int64_t chunk = per * grain;
    int64_t nch = (n + chunk - 1) / chunk;
    if (nch <= 1) return run_serial(n, fn, ctx);
    if (pthread_mutex_trylock(&g_mu) != 0) return run_serial(n, fn, ctx);
    if (g_pool && g_pool->nthreads != nt) {
        pool_destroy(g_pool);
        g_pool = NULL;
    }
    if (!g_pool) g_pool = pool_create(nt);
    pool *p = g_pool;
    if (!p) { /* no threads to be had: the work still gets done */
        pthread_mutex_unlock(&g_mu);
        return run_serial(n, fn, ctx);
    }
    atomic_fetch_add_explicit(&g_npar, 1, memory_order_relaxed);
    const uint32_t gen = ++g_gen == LOCKED ? ++g_gen : g_gen;
    atomic_store(&p->next, (uint64_t)gen << 32 | LOCKED);
    atomic_store_explicit(&p->fn, fn, memory_order_release);
    atomic_store_explicit(&p->ctx, ctx, memory_order_release);
    atomic_store_explicit(&p->n, n, memory_order_release);
    atomic_store_explicit(&p->chunk, chunk, memory_order_release);
    atomic_store_explicit(&p->nchunks, (uint32_t)nch, memory_order_release);
    atomic_store_explicit(&p->err, 0, memory_order_relaxed);
    atomic_store_explicit(&p->done, 0, memory_order_relaxed);
    atomic_store_explicit(&p->next, (uint64_t)gen << 32, memory_order_release);
    atomic_store(&p->seq, gen);
    if (atomic_load(&p->sleepers) > 0) futex_wake(&p->seq);

    const int64_t t_pub = now_ns();
    t_in_pool = 1;
    const int own = run_chunks(p, gen, 0);
    t_in_pool = 0;

    /* wait for the chunks other threads claimed */
    const int64_t t_own = now_ns();
    const int64_t spin = atomic_load_explicit(&p->spin_ns, memory_order_relaxed);
    if (atomic_load_explicit(&p->done, memory_order_acquire) != (uint32_t)nch) {
        for (unsigned it = 1; atomic_load_explicit(&p->done, memory_order_acquire) != (uint32_t)nch;
             it++) {
            cpu_relax();
            if ((it & 1023) == 0) sched_yield();
            if ((it & 63) == 0 && now_ns() - t_own > spin) {
                atomic_store(&p->waiting, 1);
                uint32_t d;
                while ((d = atomic_load(&p->done)) != (uint32_t)nch)
                    futex_wait(&p->done, d);
                atomic_store(&p->waiting, 0);
                break;
            }
        }
    }
    /* Oversubscription: spinning pays only while the workers keep their cores. When other work
     * takes them, a spinning worker burns the share of CPU time the scheduler gives it and then
     * sits preempted, holding a chunk the dispatcher must wait for (measured: decode 5x slower on
     * 2 cores at load 14). So a dispatch is late when no worker took part in it, or when the
     * dispatcher waited for the others much longer than one of its own chunks took; a
     * mostly-late recent history switches spinning off (workers sleep on the futex at once and
     * are woken per dispatch, as OpenMP's passive policy does) until dispatches are on time
     * again. */
    const int64_t wait = now_ns() - t_own, per_own = (t_own - t_pub) / (own > 0 ? own : 1);
    const int late = own == (int)nch || wait > 2 * per_own + 20000;
    if (late) atomic_fetch_add_explicit(&g_nlate, 1, memory_order_relaxed);
    if (spin == 0) atomic_fetch_add_explicit(&g_nnospin, 1, memory_order_relaxed);
    p->late += late ? LATE_UP : -1;
    p->late = p->late < 0 ? 0 : p->late > LATE_MAX ? LATE_MAX : p->late;
    const int64_t want_spin = p->late >= LATE_OFF ? 0 : p->late <= LATE_ON ? p->spin_max : spin;
    if (want_spin != spin) atomic_store_explicit(&p->spin_ns, want_spin, memory_order_relaxed);
    int rc = atomic_load(&p->err);
    if (rc != HYB_OK) hyb_error_set(rc, "%s", p->errmsg);
    pthread_mutex_unlock(&g_mu);
    return rc;
}
