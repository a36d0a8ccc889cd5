/* core/backend/cuda/emu/include/hyb_emu_abi.h: the interface between an emulated kernel module
 * (a kernel source compiled by the host C++ compiler with hyb_cuda_emu.h, loaded with dlopen) and
 * the emulator runtime in libhyb_cuda_emu.so (core/backend/cuda/emu/runtime.c). Plain C, so both
 * sides include it.
 *
 * After dlopen the runtime stores a pointer to its hyb_emu_api table in the module's global
 * `hyb_emu_rt` (and checks `hyb_emu_module_abi` == HYB_EMU_ABI). Every kernel the source defines
 * has an entry `void hyb_emu_entry_<name>(void **args)` (appended by the emulated compiler) that
 * unpacks cuLaunchKernel's argument pointers and calls the kernel; the runtime calls it once per
 * CUDA thread, each on its own fiber. And `unsigned hyb_emu_argsizes_<name>(unsigned *sz, unsigned
 * cap)` gives the kernel's parameter count and sizes (a graph capture copies the values; ABI 4). */
#ifndef HYB_EMU_ABI_H
#define HYB_EMU_ABI_H
#include <stddef.h>

#define HYB_EMU_ABI 5

typedef struct hyb_emu_u3 {
    unsigned int x, y, z;
} hyb_emu_u3;

/* What a CUDA thread sees (threadIdx etc.); one per fiber, valid while it runs. */
typedef struct hyb_emu_thread {
    hyb_emu_u3 threadIdx, blockIdx, blockDim, gridDim;
    unsigned int lane; /* linear thread index % 32 */
    unsigned int warp; /* linear thread index / 32 */
} hyb_emu_thread;

/* warp operations (hyb_emu_api.warp) */
enum {
    HYB_EMU_SHFL_IDX = 0,
    HYB_EMU_SHFL_UP,
    HYB_EMU_SHFL_DOWN,
    HYB_EMU_SHFL_XOR,
    HYB_EMU_BALLOT, /* val = predicate; result = mask of lanes whose predicate is non-zero */
    HYB_EMU_ANY,
    HYB_EMU_ALL,
    HYB_EMU_SYNCWARP,
    HYB_EMU_REDUCE_ADD, /* __reduce_add_sync etc. (unsigned) */
    HYB_EMU_REDUCE_MIN,
    HYB_EMU_REDUCE_MAX,
    HYB_EMU_MATCH_ANY, /* __match_any_sync: lanes whose value equals mine */
    HYB_EMU_NWARPOPS
};
/* block barrier reductions (hyb_emu_api.syncthreads) */
enum { HYB_EMU_BAR = 0, HYB_EMU_BAR_COUNT, HYB_EMU_BAR_AND, HYB_EMU_BAR_OR };

typedef struct hyb_emu_api {
    int abi;
    hyb_emu_thread *(*self)(void);
    /* block barrier; op: HYB_EMU_BAR* with the thread's predicate; returns the reduction */
    int (*syncthreads)(int op, int pred);
    /* warp operation on the calling lane: waits until every lane of `mask` arrived at a warp
     * operation with the same op and mask; val: up to 8 bytes of the lane's value (or the
     * predicate); arg: source lane / delta / lane mask; width: the shuffle's segment width */
    unsigned long long (*warp)(int op, unsigned int mask, unsigned long long val, int arg,
                               int width);
    unsigned int (*activemask)(void);
    /* the block's storage of static __shared__ variable `id` (size, alignment); the same address
     * for every thread of the block, fresh (filled with a NaN pattern) for each block */
    void *(*shared)(int id, size_t size, size_t align);
    /* the block's dynamic shared memory (extern __shared__), sharedMemBytes of the launch */
    void *(*dyn_shared)(void);
    /* __trap / a failed device assertion: the launch fails with this message */
    void (*trap)(const char *msg, const char *file, int line);
} hyb_emu_api;

#endif
