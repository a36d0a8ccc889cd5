/* core/backend/cuda/emu/emu_internal.h: shared by the files of libhyb_cuda_emu.so (the CUDA
 * emulator: runtime.c runs launches, driver.c is the driver API, nvrtc_emu.c the compiler,
 * cublas_emu.c the BLAS). */
#ifndef HYB_EMU_INTERNAL_H
#define HYB_EMU_INTERNAL_H
#include <stddef.h>
#include <stdint.h>
/* the fiber switch: hand-written on x86-64 (about 3x faster than swapcontext, which also makes a
 * signal-mask system call), ucontext elsewhere or with -DHYB_EMU_UCONTEXT */
#if defined(__x86_64__) && !defined(HYB_EMU_UCONTEXT)
#define HYB_EMU_ASM_SWITCH 1
#else
#define HYB_EMU_ASM_SWITCH 0
#include <ucontext.h>
#endif

#include "include/hyb_emu_abi.h"

#define HYB_EMU_EXPORT __attribute__((visibility("default")))

enum { HYB_EMU_ORDER_FORWARD = 0, HYB_EMU_ORDER_REVERSE, HYB_EMU_ORDER_RANDOM };

/* HYB_CUDA_EMU_ORDER = forward (default) | reverse | random */
int hyb_emu_order(void);
/* HYB_CUDA_EMU_SEED (default 1): the random order's seed */
uint64_t hyb_emu_seed(void);
static inline uint64_t gcd_u64(uint64_t a, uint64_t b) {
    while (b) {
        uint64_t t = a % b;
        a = b;
        b = t;
    }
    return a;
}

extern const hyb_emu_api hyb_emu_api_table;
/* "thread", "address" or "" : the sanitizer this process runs under (modules must match) */
const char *hyb_emu_sanitizer(void);
/* Run a launch; 0, or -1 with the message in err (also kept for hyb_emu_last_error). */
int hyb_emu_run(void (*entry)(void **), void **args, const char *name, const unsigned grid[3],
                const unsigned blk[3], size_t dyn_shared, char *err, size_t nerr);
HYB_EMU_EXPORT const char *hyb_emu_last_error(void);

/* The module image the emulated NVRTC hands out (what nvrtcGetCUBIN returns, what the backend
 * caches and passes to cuModuleLoadData): this header, then the path of the compiled .so. */
#define HYB_EMU_IMAGE_MAGIC "HYBEMU\x02\x00"
typedef struct hyb_emu_image {
    char magic[8];
    uint64_t size; /* of the whole image */
    char key[24];  /* source hash */
    char sanitizer[16]; /* "", "address", "thread": what the .so was built with */
    char path[4000];
} hyb_emu_image;

/* the sanitizer modules are built with: HYB_CUDA_EMU_SANITIZE=none|address|thread or the
 * process's (nvrtc_emu.c) */
const char *hyb_emu_sanitize_mode(void);

/* the kernel cache directory for emulated builds: ${HYB_CACHE:-~/.cache/hyb}/kernels-emu */
int hyb_emu_cache_dir(char *buf, size_t n);
/* While stream st captures a CUDA graph (driver.c), record a host call fn(copy of data[0..n))
 * to be made at each replay and return 1; return 0 when st is not capturing (then the caller runs
 * the work now). The emulated cuBLAS records its GEMMs this way. */
int hyb_emu_capture_hostfn(void *st, void (*fn)(const void *), const void *data, size_t n);
#endif
