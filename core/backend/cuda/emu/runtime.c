/* core/backend/cuda/emu/runtime.c: runs an emulated kernel launch. Every CUDA thread of a block is
 * a fiber on the launching OS thread (a hand-written x86-64 context switch, ucontext elsewhere);
 * the block's scheduler resumes its fibers in forward, reverse or random order, each until it
 * reaches a barrier, a warp operation or its end, then releases:
 *   - __syncthreads when every live (not finished) thread of the block waits at it,
 *   - a warp operation when every existing lane of its mask waits at the same operation with the
 *     same mask (a lane of the mask that finished, or waits elsewhere while nothing else can move,
 *     is reported as a deadlock / divergent warp operation and fails the launch).
 * Blocks run one after another (in the same order policy). Static __shared__ variables and the
 * dynamic shared memory live in a per-block arena filled with a NaN pattern, so reading shared
 * memory nobody wrote shows up as a mismatch.
 *
 * Sanitizers: when the process runs under ThreadSanitizer, each CUDA thread is a TSan fiber
 * (__tsan_create_fiber / __tsan_switch_to_fiber without synchronisation), barriers and warp
 * operations are release/acquire pairs, the host's work before a launch happens-before every
 * thread and every thread happens-before the host's work after it; blocks are unordered, as on
 * the GPU. Under AddressSanitizer the fiber switches are announced
 * (__sanitizer_start/finish_switch_fiber) and the shared arena is poisoned outside the variables
 * (with a 64-byte red zone after each). Both are looked up with dlsym, so this library itself is
 * not instrumented. */
#define _GNU_SOURCE
#include <dlfcn.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mman.h>

#include "emu_internal.h"

/* ---- context switch ------------------------------------------------------------------------ */
#if HYB_EMU_ASM_SWITCH
/* void hyb_emu_swap(void **save_sp, void *load_sp): callee-saved registers, MXCSR and the x87
 * control word on the old stack, switch stacks, restore from the new one. */
__asm__(".text\n"
        ".globl hyb_emu_swap\n"
        ".hidden hyb_emu_swap\n"
        ".type hyb_emu_swap,@function\n"
        "hyb_emu_swap:\n"
        "  pushq %rbp\n"
        "  pushq %rbx\n"
        "  pushq %r12\n"
        "  pushq %r13\n"
        "  pushq %r14\n"
        "  pushq %r15\n"
        "  subq $8, %rsp\n"
        "  stmxcsr (%rsp)\n"
        "  fnstcw 4(%rsp)\n"
        "  movq %rsp, (%rdi)\n"
        "  movq %rsi, %rsp\n"
        "  ldmxcsr (%rsp)\n"
        "  fldcw 4(%rsp)\n"
        "  addq $8, %rsp\n"
        "  popq %r15\n"
        "  popq %r14\n"
        "  popq %r13\n"
        "  popq %r12\n"
        "  popq %rbx\n"
        "  popq %rbp\n"
        "  ret\n"
        ".size hyb_emu_swap,.-hyb_emu_swap\n"
        /* first entry of a fiber: r12 = the fiber; the stack is 16-byte aligned here */
        ".globl hyb_emu_fiber_entry\n"
        ".hidden hyb_emu_fiber_entry\n"
        ".type hyb_emu_fiber_entry,@function\n"
        "hyb_emu_fiber_entry:\n"
        "  movq %r12, %rdi\n"
        "  call hyb_emu_fiber_main\n"
        "  ud2\n"
        ".size hyb_emu_fiber_entry,.-hyb_emu_fiber_entry\n");
void hyb_emu_swap(void **save_sp, void *load_sp);
void hyb_emu_fiber_entry(void);
#endif

/* ---- sanitizer hooks (present only when the process runs under a sanitizer) ---------------- */
static struct {
    int tsan, asan;
    void *(*tsan_get_current_fiber)(void);
    void *(*tsan_create_fiber)(unsigned);
    void (*tsan_set_fiber_name)(void *, const char *);
    void (*tsan_destroy_fiber)(void *);
    void (*tsan_switch_to_fiber)(void *, unsigned);
    void (*tsan_acquire)(void *);
    void (*tsan_release)(void *);
    void (*asan_start_switch)(void **, const void *, size_t);
    void (*asan_finish_switch)(void *, const void **, size_t *);
    void (*asan_poison)(const volatile void *, size_t);
    void (*asan_unpoison)(const volatile void *, size_t);
} san;

static void san_init(void) {
    static int done;
    if (done) return;
    done = 1;
    san.tsan_get_current_fiber = (void *(*)(void))dlsym(RTLD_DEFAULT, "__tsan_get_current_fiber");
    san.tsan_create_fiber = (void *(*)(unsigned))dlsym(RTLD_DEFAULT, "__tsan_create_fiber");
    san.tsan_destroy_fiber = (void (*)(void *))dlsym(RTLD_DEFAULT, "__tsan_destroy_fiber");
    san.tsan_set_fiber_name = (void (*)(void *, const char *))dlsym(RTLD_DEFAULT,
                                                                    "__tsan_set_fiber_name");
    san.tsan_switch_to_fiber = (void (*)(void *, unsigned))dlsym(RTLD_DEFAULT, "__tsan_switch_to_fiber");
    san.tsan_acquire = (void (*)(void *))dlsym(RTLD_DEFAULT, "__tsan_acquire");
    san.tsan_release = (void (*)(void *))dlsym(RTLD_DEFAULT, "__tsan_release");
    san.tsan = san.tsan_get_current_fiber && san.tsan_create_fiber && san.tsan_destroy_fiber &&
               san.tsan_switch_to_fiber && san.tsan_acquire && san.tsan_release;
    san.asan_start_switch = (void (*)(void **, const void *, size_t))dlsym(
        RTLD_DEFAULT, "__sanitizer_start_switch_fiber");
    san.asan_finish_switch = (void (*)(void *, const void **, size_t *))dlsym(
        RTLD_DEFAULT, "__sanitizer_finish_switch_fiber");
    san.asan_poison = (void (*)(const volatile void *, size_t))dlsym(RTLD_DEFAULT,
                                                                      "__asan_poison_memory_region");
    san.asan_unpoison = (void (*)(const volatile void *, size_t))dlsym(
        RTLD_DEFAULT, "__asan_unpoison_memory_region");
    san.asan = dlsym(RTLD_DEFAULT, "__asan_init") && san.asan_start_switch &&
               san.asan_finish_switch && san.asan_poison && san.asan_unpoison;
}
const char *hyb_emu_sanitizer(void) {
    san_init();
    return san.tsan ? "thread" : san.asan ? "address" : "";
}

/* ---- fibers and the block scheduler -------------------------------------------------------- */
enum { F_RUN, F_BAR, F_WARP, F_DONE };

typedef struct fiber {
    void *sp;     /* saved stack pointer (x86-64) */
#if !HYB_EMU_ASM_SWITCH
    ucontext_t uc;
#endif
    char *stack;  /* lowest usable address */
    size_t stack_size;
    hyb_emu_thread t;
    int state;
    int bar_pred;
    int wop, warg, wwidth;
    unsigned wmask;
    unsigned long long wval, wres;
    void *tsan_fiber;
    void *asan_fake;
    char tsan_name[80]; /* "block (x,y,z) thread (x,y,z)" in TSan's reports */
} fiber;

#define ARENA_BYTES (256u << 10)
#define TSAN_STACK_RESET ((size_t)16 << 10) /* static + dynamic shared memory of one block */
#define MAX_SHARED_IDS 256
#define SHARED_REDZONE 64

typedef struct block {
    fiber *f;
    int n, nwarps;
    int *order;
    int *queue; /* run queue (ring of n) */
    const struct launch *L;
    /* shared memory */
    unsigned char *arena;
    size_t arena_used, dyn_off, dyn_size;
    size_t shared_off[MAX_SHARED_IDS];
    size_t shared_size[MAX_SHARED_IDS];
    /* sync objects for TSan (addresses only) */
    char bar_obj[2], warp_obj[2], start_obj;
    int bar_gen;
    int *warp_gen;
    unsigned *wwait, *wdone; /* per warp: lanes waiting at a warp operation / finished */
} block;

typedef struct launch {
    void (*entry)(void **);
    void **args;
    const char *name;
    unsigned grid[3], blk[3];
    size_t dyn_shared;
    int order; /* HYB_EMU_ORDER_* */
    uint64_t rng;
    int failed;
    char msg[1024];
} launch;

/* per OS thread */
static __thread fiber *g_cur;
static __thread block *g_blk;
static __thread void *g_sched_sp;
static __thread void *g_sched_tsan;
static __thread const void *g_sched_stack_bottom;
static __thread size_t g_sched_stack_size;
static __thread void *g_sched_asan_fake;
#if !HYB_EMU_ASM_SWITCH
static __thread ucontext_t g_sched_uc;
#endif
/* stacks, kept between launches */
static __thread char **g_stacks;
static __thread int g_nstacks;
static __thread unsigned char *g_arena;
/* under ThreadSanitizer every block of a launch gets its own arena: reusing one would need an
 * ordering from one block's threads to the next block's, which would hide races between blocks
 * (the arenas are reused by the next launch, which is ordered after this one) */
static __thread unsigned char **g_tsan_arenas;
static __thread uint64_t g_tsan_narenas;
static __thread size_t g_arena_hw; /* bytes of the arena ever used by static __shared__ */

static char g_last_error[1024];
const char *hyb_emu_last_error(void) { return g_last_error; }

static size_t stack_bytes(void) {
    static size_t n;
    if (!n) {
        const char *e = getenv("HYB_CUDA_EMU_STACK_KB");
        long kb = e ? atol(e) : 0;
        if (kb <= 0) kb = (san.asan || san.tsan) ? 512 : 128;
        n = (size_t)kb << 10;
    }
    return n;
}

static char *get_stack(int i) {
    if (i >= g_nstacks) {
        int nn = i + 1 > 2 * g_nstacks ? i + 1 : 2 * g_nstacks;
        char **s = realloc(g_stacks, sizeof *s * (size_t)nn);
        if (!s) return NULL;
        for (int k = g_nstacks; k < nn; k++) s[k] = NULL;
        g_stacks = s;
        g_nstacks = nn;
    }
    if (!g_stacks[i]) {
        const size_t page = 4096, sz = stack_bytes();
        char *p = mmap(NULL, sz + page, PROT_READ | PROT_WRITE, MAP_PRIVATE | MAP_ANONYMOUS, -1, 0);
        if (p == MAP_FAILED) return NULL;
        mprotect(p, page, PROT_NONE); /* guard page: a stack overflow faults */
        g_stacks[i] = p + page;
    }
    return g_stacks[i];
}

static void fail(launch *L, const char *fmt, ...) {
    if (L->failed) return;
    L->failed = 1;
    va_list ap;
    va_start(ap, fmt);
    vsnprintf(L->msg, sizeof L->msg, fmt, ap);
    va_end(ap);
}

/* switch from the running fiber to the scheduler */
static void to_sched(fiber *f, int finished) {
    if (san.tsan) san.tsan_switch_to_fiber(g_sched_tsan, 1 /* no sync */);
    if (san.asan) san.asan_start_switch(finished ? NULL : &f->asan_fake, g_sched_stack_bottom,
                                        g_sched_stack_size);
#if HYB_EMU_ASM_SWITCH
    hyb_emu_swap(&f->sp, g_sched_sp);
#else
    swapcontext(&f->uc, &g_sched_uc);
#endif
    if (san.asan) san.asan_finish_switch(f->asan_fake, NULL, NULL);
}

/* switch from the scheduler to fiber f */
static void to_fiber(fiber *f) {
    g_cur = f;
    if (san.tsan) san.tsan_switch_to_fiber(f->tsan_fiber, 1);
    if (san.asan) san.asan_start_switch(&g_sched_asan_fake, f->stack, f->stack_size);
#if HYB_EMU_ASM_SWITCH
    hyb_emu_swap(&g_sched_sp, f->sp);
#else
    swapcontext(&g_sched_uc, &f->uc);
#endif
    /* (the bounds of the stack we came from are the fiber's: not wanted here; the scheduler's
     * own bounds were recorded by the fiber's first finish_switch) */
    if (san.asan) san.asan_finish_switch(g_sched_asan_fake, NULL, NULL);
    g_cur = NULL;
}

static char g_launch_start_obj, g_launch_end_obj;

__attribute__((used)) void hyb_emu_fiber_main(fiber *f) {
    if (san.asan) san.asan_finish_switch(NULL, &g_sched_stack_bottom, &g_sched_stack_size);
    if (san.tsan) {
        san.tsan_acquire(&g_launch_start_obj); /* the host's work before the launch */
        san.tsan_acquire(&g_blk->start_obj);   /* the arena's fill by the scheduler */
    }
    g_blk->L->entry(g_blk->L->args);
    if (san.tsan) san.tsan_release(&g_launch_end_obj);
    f->state = F_DONE;
    to_sched(f, 1);
    abort(); /* never resumed */
}
#if !HYB_EMU_ASM_SWITCH
static void uc_entry(unsigned lo, unsigned hi) {
    hyb_emu_fiber_main((fiber *)(((uintptr_t)hi << 32) | lo));
}
#endif

static void fiber_init(fiber *f, char *stack) {
    f->stack = stack;
    f->stack_size = stack_bytes();
    if (san.asan) san.asan_unpoison(stack, f->stack_size);
    if (san.tsan) {
        /* the stack was used by another TSan fiber (a thread of an earlier block): TSan would
         * report its old frames against the new fiber's as races. Mapping the top of the stack
         * afresh (TSan's mmap interceptor resets the shadow) forgets them; kernels' frames are
         * far smaller than this part */
        const size_t top = f->stack_size < TSAN_STACK_RESET ? f->stack_size : TSAN_STACK_RESET;
        mmap(stack + f->stack_size - top, top, PROT_READ | PROT_WRITE,
             MAP_PRIVATE | MAP_ANONYMOUS | MAP_FIXED, -1, 0);
    }
#if HYB_EMU_ASM_SWITCH
    uintptr_t top = ((uintptr_t)stack + f->stack_size) & ~(uintptr_t)15;
    uint64_t *sp = (uint64_t *)top;
    /* after the final `ret` of hyb_emu_swap, rsp = top (16-byte aligned), so the entry's `call`
     * gives hyb_emu_fiber_main the ABI's rsp % 16 == 8 */
    *--sp = (uint64_t)(uintptr_t)hyb_emu_fiber_entry; /* ret target */
    *--sp = 0;                               /* rbp */
    *--sp = 0;                               /* rbx */
    *--sp = (uint64_t)(uintptr_t)f;          /* r12 */
    *--sp = 0;                               /* r13 */
    *--sp = 0;                               /* r14 */
    *--sp = 0;                               /* r15 */
    uint32_t csr[2] = {0x1f80u, 0x037fu};    /* default MXCSR, x87 control word */
    *--sp = (uint64_t)csr[0] | ((uint64_t)csr[1] << 32);
    f->sp = sp;
#else
    getcontext(&f->uc);
    f->uc.uc_stack.ss_sp = stack;
    f->uc.uc_stack.ss_size = f->stack_size;
    f->uc.uc_link = NULL;
    makecontext(&f->uc, (void (*)(void))uc_entry, 2, (unsigned)(uintptr_t)f,
                (unsigned)((uintptr_t)f >> 32));
#endif
}

/* ---- what kernels call (hyb_emu_api) ------------------------------------------------------- */
static hyb_emu_thread *api_self(void) {
    return &g_cur->t;
}

static int api_syncthreads(int op, int pred) {
    fiber *f = g_cur;
    block *b = g_blk;
    f->bar_pred = pred;
    f->state = F_BAR;
    if (san.tsan) san.tsan_release(&b->bar_obj[b->bar_gen & 1]);
    const int gen = b->bar_gen;
    to_sched(f, 0);
    if (san.tsan) san.tsan_acquire(&b->bar_obj[gen & 1]);
    /* the scheduler stored the count of true predicates in bar_pred, the live threads in wres */
    const int cnt = f->bar_pred, live = (int)f->wres;
    return op == HYB_EMU_BAR_COUNT ? cnt : op == HYB_EMU_BAR_AND ? cnt == live
                                       : op == HYB_EMU_BAR_OR    ? cnt > 0
                                                                 : 0;
}

static const char *warp_op_name(int op) {
    static const char *const n[] = {"__shfl_sync", "__shfl_up_sync", "__shfl_down_sync",
                                    "__shfl_xor_sync", "__ballot_sync", "__any_sync",
                                    "__all_sync", "__syncwarp", "__reduce_add_sync",
                                    "__reduce_min_sync", "__reduce_max_sync", "__match_any_sync"};
    return op >= 0 && op < HYB_EMU_NWARPOPS ? n[op] : "warp op";
}

static unsigned long long api_warp(int op, unsigned mask, unsigned long long val, int arg,
                                   int width) {
    fiber *f = g_cur;
    block *b = g_blk;
    f->wop = op;
    f->wmask = mask;
    f->wval = val;
    f->warg = arg;
    f->wwidth = width;
    f->state = F_WARP;
    int *gen = &b->warp_gen[f->t.warp];
    const int g = *gen;
    if (san.tsan) san.tsan_release(&b->warp_obj[g & 1]);
    to_sched(f, 0);
    if (san.tsan) san.tsan_acquire(&b->warp_obj[g & 1]);
    return f->wres;
}

static unsigned api_activemask(void) {
    block *b = g_blk;
    const unsigned w = g_cur->t.warp;
    unsigned m = 0;
    for (int l = 0; l < 32; l++) {
        const int i = (int)w * 32 + l;
        if (i < b->n && b->f[i].state != F_DONE) m |= 1u << l;
    }
    return m;
}

static void *api_shared(int id, size_t size, size_t align) {
    block *b = g_blk;
    if (id < 0 || id >= MAX_SHARED_IDS) {
        fail((launch *)b->L, "kernel %s: too many __shared__ variables (id %d)", b->L->name, id);
        return b->arena;
    }
    if (b->shared_size[id] == 0) {
        if (align < 16) align = 16; /* __align__(16) is dropped by the rewrite: give it anyway */
        size_t off = (b->arena_used + align - 1) / align * align;
        if (off + size + SHARED_REDZONE > b->dyn_off) {
            fail((launch *)b->L,
                 "kernel %s: static __shared__ memory (%zu bytes) and dynamic (%zu) exceed the "
                 "emulated %u KiB",
                 b->L->name, off + size, b->dyn_size, ARENA_BYTES >> 10);
            return b->arena;
        }
        b->shared_off[id] = off;
        b->shared_size[id] = size ? size : 1;
        b->arena_used = off + size + SHARED_REDZONE;
        if (!san.asan && b->arena_used > g_arena_hw) { /* first use of this part */
            /* (under TSan a fill here, by one thread, would race with the others' accesses:
             * it is left to the scheduler at the next block's start) */
            if (!san.tsan) memset(b->arena + g_arena_hw, 0xff, b->arena_used - g_arena_hw);
            g_arena_hw = b->arena_used;
        }
        if (san.asan) san.asan_unpoison(b->arena + off, size);
    }
    return b->arena + b->shared_off[id];
}

static void *api_dyn_shared(void) {
    return g_blk->arena + g_blk->dyn_off;
}

static void api_trap(const char *msg, const char *file, int line) {
    fiber *f = g_cur;
    block *b = g_blk;
    fail((launch *)b->L, "kernel %s: %s at %s:%d in block (%u,%u,%u) thread (%u,%u,%u)",
         b->L->name, msg, file, line, f->t.blockIdx.x, f->t.blockIdx.y, f->t.blockIdx.z,
         f->t.threadIdx.x, f->t.threadIdx.y, f->t.threadIdx.z);
    f->state = F_BAR; /* parked forever: the launch is abandoned */
    to_sched(f, 0);
    abort();
}

const hyb_emu_api hyb_emu_api_table = {
    .abi = HYB_EMU_ABI,
    .self = api_self,
    .syncthreads = api_syncthreads,
    .warp = api_warp,
    .activemask = api_activemask,
    .shared = api_shared,
    .dyn_shared = api_dyn_shared,
    .trap = api_trap,
};

/* ---- scheduler ----------------------------------------------------------------------------- */
static uint64_t rng_next(uint64_t *s) {
    *s ^= *s << 13;
    *s ^= *s >> 7;
    *s ^= *s << 17;
    return *s;
}
static void make_order(int *o, int n, int order, uint64_t *rng) {
    for (int i = 0; i < n; i++)
        o[i] = order == HYB_EMU_ORDER_REVERSE ? n - 1 - i : i;
    if (order == HYB_EMU_ORDER_RANDOM)
        for (int i = n - 1; i > 0; i--) {
            int j = (int)(rng_next(rng) % (uint64_t)(i + 1));
            int t = o[i];
            o[i] = o[j];
            o[j] = t;
        }
}

/* the source lane of a shuffle (PTX shfl semantics); -1: keep the own value */
static int shfl_src(int op, int lane, int arg, int width) {
    if (width < 1 || width > 32 || (width & (width - 1))) width = 32;
    const int minl = lane & ~(width - 1), maxl = minl | (width - 1);
    int j;
    switch (op) {
    case HYB_EMU_SHFL_IDX: j = minl | (arg & (width - 1)); return j;
    case HYB_EMU_SHFL_UP: j = lane - arg; return j >= minl ? j : -1;
    case HYB_EMU_SHFL_DOWN: j = lane + arg; return j <= maxl ? j : -1;
    default: j = lane ^ arg; return j <= maxl && j >= 0 && j < 32 ? j : -1;
    }
}

static void describe(block *b, char *buf, size_t n) {
    size_t k = 0;
    int shown = 0;
    for (int i = 0; i < b->n && shown < 6; i++) {
        fiber *f = &b->f[i];
        if (f->state == F_WARP) {
            k += (size_t)snprintf(buf + k, n - k, "; thread %u waits at %s(mask 0x%08x)", (unsigned)i,
                                  warp_op_name(f->wop), f->wmask);
            shown++;
        }
        if (k >= n) return;
    }
    int nb = 0, nd = 0;
    for (int i = 0; i < b->n; i++) {
        nb += b->f[i].state == F_BAR;
        nd += b->f[i].state == F_DONE;
    }
    snprintf(buf + k, n - k, "; %d threads wait at __syncthreads, %d finished", nb, nd);
}

/* Lane `lane` of warp w arrived at a warp operation: complete its group when every existing
 * lane of its mask waits at the same operation with the same mask. Returns the mask of lanes
 * released (0: not yet). O(32): the bit masks of waiting and finished lanes are kept per warp. */
static unsigned resolve_warp(block *b, int w, int lane) {
    launch *L = (launch *)b->L;
    const int base = w * 32;
    const int nl = b->n - base < 32 ? b->n - base : 32;
    const unsigned exist = nl == 32 ? 0xffffffffu : ((1u << nl) - 1);
    fiber *f = &b->f[base + lane];
    const unsigned m = f->wmask, me = m & exist;
    if (!(m & (1u << lane))) {
        fail(L, "kernel %s: thread %d calls %s with mask 0x%08x that does not name its own lane %d",
             L->name, base + lane, warp_op_name(f->wop), m, lane);
        return 0;
    }
    if (me & b->wdone[w]) {
        fail(L, "kernel %s: %s (mask 0x%08x) in warp %d of block (%u,%u,%u) names lane %d, which "
                "has finished",
             L->name, warp_op_name(f->wop), m, w, f->t.blockIdx.x, f->t.blockIdx.y,
             f->t.blockIdx.z, __builtin_ctz(me & b->wdone[w]));
        return 0;
    }
    if ((b->wwait[w] & me) != me) return 0;
    unsigned long long bal = 0, sum = 0, mn = ~0ull, mx = 0;
    for (int j = 0; j < nl; j++) {
        if (!(me & (1u << j))) continue;
        fiber *g = &b->f[base + j];
        if (g->wmask != m || g->wop != f->wop) {
            fail(L, "kernel %s: divergent warp operations in warp %d of block (%u,%u,%u): lane %d "
                    "at %s(mask 0x%08x), lane %d at %s(mask 0x%08x)",
                 L->name, w, f->t.blockIdx.x, f->t.blockIdx.y, f->t.blockIdx.z, lane,
                 warp_op_name(f->wop), m, j, warp_op_name(g->wop), g->wmask);
            return 0;
        }
        if (g->wval) bal |= 1ull << j;
        const unsigned u = (unsigned)g->wval;
        sum += u;
        if (u < mn) mn = u;
        if (u > mx) mx = u;
    }
    for (int j = 0; j < nl; j++) {
        if (!(me & (1u << j))) continue;
        fiber *g = &b->f[base + j];
        unsigned long long r = 0;
        switch (g->wop) {
        case HYB_EMU_SHFL_IDX:
        case HYB_EMU_SHFL_UP:
        case HYB_EMU_SHFL_DOWN:
        case HYB_EMU_SHFL_XOR: {
            const int src = shfl_src(g->wop, j, g->warg, g->wwidth);
            /* a source outside the mask or the block is undefined on the device; here the own
             * value */
            r = (src >= 0 && src < nl && (me & (1u << src))) ? b->f[base + src].wval : g->wval;
            break;
        }
        case HYB_EMU_BALLOT: r = bal; break;
        case HYB_EMU_ANY: r = bal != 0; break;
        case HYB_EMU_ALL: r = bal == me; break;
        case HYB_EMU_REDUCE_ADD: r = (unsigned)sum; break;
        case HYB_EMU_REDUCE_MIN: r = mn; break;
        case HYB_EMU_REDUCE_MAX: r = mx; break;
        case HYB_EMU_MATCH_ANY: {
            unsigned mm = 0;
            for (int k = 0; k < nl; k++)
                if ((me & (1u << k)) && b->f[base + k].wval == g->wval) mm |= 1u << k;
            r = mm;
            break;
        }
        default: r = 0;
        }
        g->wres = r;
    }
    for (int j = 0; j < nl; j++)
        if (me & (1u << j)) b->f[base + j].state = F_RUN;
    b->wwait[w] &= ~me;
    b->warp_gen[w]++;
    return me;
}

/* lane `lane` of warp w finished: a lane still waiting with a mask that names it never completes */
static void lane_done(block *b, int w, int lane) {
    b->wdone[w] |= 1u << lane;
    const int base = w * 32;
    for (int j = 0; j < 32 && base + j < b->n; j++)
        if ((b->wwait[w] & (1u << j)) && (b->f[base + j].wmask & (1u << lane))) {
            resolve_warp(b, w, j); /* reports the finished lane */
            return;
        }
}

/* run one block to completion (or failure) */
/* The TSan fiber of thread i of the seq-th block of a launch. Fibers are kept and reused by the
 * next launches (which are ordered after this one anyway), never by another block of the same
 * launch (that would order the blocks); creating one costs TSan far more than a launch. */
static __thread void ***g_tsan_fibs;
static __thread uint64_t g_tsan_nfibs;
static void *tsan_fiber_for(uint64_t seq, int i) {
    if (seq >= g_tsan_nfibs) {
        void ***t = realloc(g_tsan_fibs, sizeof *t * (size_t)(seq + 1));
        if (!t) abort();
        for (uint64_t k = g_tsan_nfibs; k <= seq; k++) t[k] = NULL;
        g_tsan_fibs = t;
        g_tsan_nfibs = seq + 1;
    }
    if (!g_tsan_fibs[seq] && !(g_tsan_fibs[seq] = calloc(1024, sizeof(void *)))) abort();
    if (!g_tsan_fibs[seq][i]) g_tsan_fibs[seq][i] = san.tsan_create_fiber(0);
    return g_tsan_fibs[seq][i];
}

static void run_block(block *b, launch *L, unsigned bx, unsigned by, unsigned bz, uint64_t seq) {
    const unsigned tx = L->blk[0], ty = L->blk[1], tz = L->blk[2];
    /* fresh shared memory: a NaN pattern over the part used so far (all of it under ASan, whose
     * memset interceptor must see the fill before the poisoning), poisoned for ASan until a
     * variable is placed */
    if (san.asan) san.asan_unpoison(b->arena, ARENA_BYTES); /* poisoned by the last block */
    memset(b->arena, 0xff, san.asan ? ARENA_BYTES : g_arena_hw);
    memset(b->arena + b->dyn_off, 0xff, b->dyn_size);
    if (san.asan) {
        san.asan_poison(b->arena, ARENA_BYTES);
        if (b->dyn_size) san.asan_unpoison(b->arena + b->dyn_off, b->dyn_size);
    }
    b->arena_used = 0;
    memset(b->shared_size, 0, sizeof b->shared_size);
    b->bar_gen = 0;
    memset(b->warp_gen, 0, sizeof(int) * (size_t)b->nwarps);
    memset(b->wwait, 0, sizeof(unsigned) * (size_t)b->nwarps);
    memset(b->wdone, 0, sizeof(unsigned) * (size_t)b->nwarps);
    g_blk = b;
    for (int i = 0; i < b->n; i++) {
        fiber *f = &b->f[i];
        const unsigned lin = (unsigned)i;
        memset(&f->t, 0, sizeof f->t);
        f->t.threadIdx.x = lin % tx;
        f->t.threadIdx.y = lin / tx % ty;
        f->t.threadIdx.z = lin / (tx * ty);
        f->t.blockIdx.x = bx, f->t.blockIdx.y = by, f->t.blockIdx.z = bz;
        f->t.blockDim.x = tx, f->t.blockDim.y = ty, f->t.blockDim.z = tz;
        f->t.gridDim.x = L->grid[0], f->t.gridDim.y = L->grid[1], f->t.gridDim.z = L->grid[2];
        f->t.lane = lin % 32;
        f->t.warp = lin / 32;
        f->state = F_RUN;
        f->asan_fake = NULL;
        fiber_init(f, g_stacks[i]);
        f->tsan_fiber = san.tsan ? tsan_fiber_for(seq, i) : NULL;
        if (f->tsan_fiber && san.tsan_set_fiber_name) {
            snprintf(f->tsan_name, sizeof f->tsan_name, "%s block (%u,%u,%u) thread (%u,%u,%u)",
                     L->name, bx, by, bz, f->t.threadIdx.x, f->t.threadIdx.y, f->t.threadIdx.z);
            san.tsan_set_fiber_name(f->tsan_fiber, f->tsan_name);
        }
    }
    /* The run queue: a fiber runs until it blocks or finishes. When the last lane of a warp
     * operation arrives, the warp's lanes go to the FRONT of the queue, so a warp runs ahead
     * through its shuffles until a barrier (warps are not kept in lockstep, as on the GPU);
     * when the queue is empty a complete barrier releases the block in the order policy. */
    /* the arena's fill and the stacks' remapping above happen before the threads */
    if (san.tsan) san.tsan_release(&b->start_obj);
    int *q = b->queue, qh = 0, qn = 0;
    const int n = b->n;
    if (L->order == HYB_EMU_ORDER_RANDOM) make_order(b->order, n, L->order, &L->rng);
    for (int k = 0; k < n; k++) q[(qh + qn++) % n] = b->order[k];
    for (;;) {
        while (qn > 0 && !L->failed) {
            fiber *f = &b->f[q[qh]];
            qh = (qh + 1) % n, qn--;
            if (f->state != F_RUN) continue;
            to_fiber(f);
            if (f->state == F_DONE) { /* a lane waiting on it with a mask naming it: an error */
                lane_done(b, (int)f->t.warp, (int)f->t.lane);
                continue;
            }
            if (f->state != F_WARP) continue;
            b->wwait[f->t.warp] |= 1u << f->t.lane;
            unsigned rel = resolve_warp(b, (int)f->t.warp, (int)f->t.lane);
            if (!rel) continue;
            int lanes[32], nr = 0;
            for (int j = 0; j < 32; j++)
                if (rel & (1u << j)) lanes[nr++] = (int)f->t.warp * 32 + j;
            if (L->order == HYB_EMU_ORDER_RANDOM)
                for (int i = nr - 1; i > 0; i--) {
                    int j = (int)(rng_next(&L->rng) % (uint64_t)(i + 1)), t = lanes[i];
                    lanes[i] = lanes[j], lanes[j] = t;
                }
            /* push to the front so that the queue then starts with lanes[0] (forward: the
             * lowest lane; reverse: the highest) */
            for (int i = nr - 1; i >= 0; i--) {
                const int lane = L->order == HYB_EMU_ORDER_REVERSE ? lanes[nr - 1 - i] : lanes[i];
                qh = (qh + n - 1) % n, qn++;
                q[qh] = lane;
            }
        }
        if (L->failed) break;
        int live = 0, atbar = 0;
        for (int i = 0; i < n; i++) {
            live += b->f[i].state != F_DONE;
            atbar += b->f[i].state == F_BAR;
        }
        if (!live) break;
        if (atbar != live) {
            char d[600];
            describe(b, d, sizeof d);
            fail(L, "kernel %s: deadlock in block (%u,%u,%u)%s", L->name, bx, by, bz, d);
            break;
        }
        /* the barrier is complete */
        int cnt = 0;
        for (int i = 0; i < n; i++) cnt += b->f[i].state == F_BAR && b->f[i].bar_pred != 0;
        for (int i = 0; i < n; i++)
            if (b->f[i].state == F_BAR) {
                b->f[i].bar_pred = cnt;
                b->f[i].wres = (unsigned long long)live;
                b->f[i].state = F_RUN;
            }
        b->bar_gen++;
        if (L->order == HYB_EMU_ORDER_RANDOM) make_order(b->order, n, L->order, &L->rng);
        for (int k = 0; k < n; k++)
            if (b->f[b->order[k]].state == F_RUN) q[(qh + qn++) % n] = b->order[k];
    }
    g_blk = NULL;
}

int hyb_emu_run(void (*entry)(void **), void **args, const char *name, const unsigned grid[3],
                const unsigned blk[3], size_t dyn_shared, char *err, size_t nerr) {
    san_init();
    launch L;
    memset(&L, 0, sizeof L);
    L.entry = entry;
    L.args = args;
    L.name = name;
    memcpy(L.grid, grid, sizeof L.grid);
    memcpy(L.blk, blk, sizeof L.blk);
    L.dyn_shared = dyn_shared;
    L.order = hyb_emu_order();
    L.rng = hyb_emu_seed();
    const int n = (int)(blk[0] * blk[1] * blk[2]);
    if (g_blk) {
        snprintf(err, nerr, "kernel %s launched from inside a kernel (dynamic parallelism is not "
                            "emulated)", name);
        return -1;
    }
    if (dyn_shared + SHARED_REDZONE > ARENA_BYTES) {
        snprintf(err, nerr, "kernel %s: %zu bytes of dynamic shared memory exceed the emulated %u KiB",
                 name, dyn_shared, ARENA_BYTES >> 10);
        return -1;
    }
    for (int i = 0; i < n; i++)
        if (!get_stack(i)) {
            snprintf(err, nerr, "kernel %s: no memory for %d thread stacks", name, n);
            return -1;
        }
    if (!g_arena && !(g_arena = aligned_alloc(256, ARENA_BYTES))) {
        snprintf(err, nerr, "kernel %s: no memory for shared memory", name);
        return -1;
    }
    block b;
    memset(&b, 0, sizeof b);
    b.n = n;
    b.nwarps = (n + 31) / 32;
    b.L = &L;
    b.f = calloc((size_t)n, sizeof *b.f);
    b.order = malloc(sizeof(int) * (size_t)n);
    b.queue = malloc(sizeof(int) * (size_t)n);
    b.warp_gen = calloc((size_t)b.nwarps, sizeof(int));
    b.wwait = calloc((size_t)b.nwarps, sizeof(unsigned));
    b.wdone = calloc((size_t)b.nwarps, sizeof(unsigned));
    b.arena = g_arena;
    b.dyn_size = dyn_shared;
    b.dyn_off = (ARENA_BYTES - dyn_shared) & ~(size_t)255;
    if (!b.f || !b.order || !b.queue || !b.warp_gen || !b.wwait || !b.wdone) {
        free(b.f), free(b.order), free(b.queue), free(b.warp_gen), free(b.wwait), free(b.wdone);
        snprintf(err, nerr, "kernel %s: out of host memory", name);
        return -1;
    }
    if (san.tsan && !g_sched_tsan) g_sched_tsan = san.tsan_get_current_fiber();
    if (san.tsan) san.tsan_release(&g_launch_start_obj);
    make_order(b.order, n, L.order == HYB_EMU_ORDER_RANDOM ? HYB_EMU_ORDER_FORWARD : L.order,
               &L.rng);
    /* blocks in the same order policy */
    const uint64_t nblocks = (uint64_t)grid[0] * grid[1] * grid[2];
    uint64_t rngb = L.rng ^ 0x5bd1e995u;
    uint64_t stride = 1, start = 0;
    if (L.order == HYB_EMU_ORDER_RANDOM && nblocks > 1) {
        /* a random odd stride coprime with nblocks visits every block once */
        do {
            stride = rng_next(&rngb) % nblocks;
        } while (stride == 0 || gcd_u64(stride, nblocks) != 1);
        start = rng_next(&rngb) % nblocks;
    }
    for (uint64_t k = 0; k < nblocks && !L.failed; k++) {
        uint64_t lin = L.order == HYB_EMU_ORDER_REVERSE ? nblocks - 1 - k
                       : L.order == HYB_EMU_ORDER_RANDOM ? (start + k * stride) % nblocks
                                                         : k;
        unsigned bx = (unsigned)(lin % grid[0]);
        unsigned by = (unsigned)(lin / grid[0] % grid[1]);
        unsigned bz = (unsigned)(lin / ((uint64_t)grid[0] * grid[1]));
        if (san.tsan) {
            if (k >= g_tsan_narenas) {
                unsigned char **a = realloc(g_tsan_arenas, sizeof *a * (size_t)(k + 1));
                if (!a || !(a[k] = aligned_alloc(256, ARENA_BYTES))) {
                    if (a) g_tsan_arenas = a;
                    fail(&L, "kernel %s: no memory for the shared memory of block %llu", name,
                         (unsigned long long)k);
                    break;
                }
                g_tsan_arenas = a;
                g_tsan_narenas = k + 1;
            }
            b.arena = g_tsan_arenas[k];
        }
        run_block(&b, &L, bx, by, bz, k);
    }
    if (san.tsan) san.tsan_acquire(&g_launch_end_obj);
    free(b.f), free(b.order), free(b.queue), free(b.warp_gen), free(b.wwait), free(b.wdone);
    if (L.failed) {
        snprintf(err, nerr, "%s", L.msg);
        snprintf(g_last_error, sizeof g_last_error, "%s", L.msg);
        return -1;
    }
    return 0;
}
