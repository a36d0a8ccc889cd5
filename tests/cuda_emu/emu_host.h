/* tests/cuda_emu/emu_host.h: the host side of the CUDA emulation tests. Loads libhyb_cuda_emu.so
 * (path in HYB_CUDA_EMU_LIB, set by CMake) and drives it through the driver and NVRTC entry
 * points a real program uses, declared here with minimal types (the tests need no CUDA headers).
 *
 *   emu_open();
 *   emu_kernel k = emu_build("name.cu", source, "kernel_name", NULL);   // NULL: build failed
 *   unsigned long long d = emu_alloc(bytes); emu_put(d, host, bytes);
 *   void *args[] = {&d, &n};
 *   int rc = emu_launch(k, grid3, block3, shmem, args);   // 0 = CUDA_SUCCESS
 *   emu_get(host, d, bytes); emu_free(d);
 * emu_last_error() is the emulator's message for a failed launch. */
#ifndef HYB_TEST_EMU_HOST_H
#define HYB_TEST_EMU_HOST_H
#include <dlfcn.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

typedef int (*emu_fn)();
static struct {
    void *lib;
    int (*cuInit)(unsigned);
    int (*cuMemAlloc)(unsigned long long *, size_t);
    int (*cuMemFree)(unsigned long long);
    int (*cuMemcpyHtoD)(unsigned long long, const void *, size_t);
    int (*cuMemcpyDtoH)(void *, unsigned long long, size_t);
    int (*cuModuleLoadData)(void **, const void *);
    int (*cuModuleGetFunction)(void **, void *, const char *);
    int (*cuLaunchKernel)(void *, unsigned, unsigned, unsigned, unsigned, unsigned, unsigned,
                          unsigned, void *, void **, void **);
    int (*nvrtcCreateProgram)(void **, const char *, const char *, int, const char *const *,
                              const char *const *);
    int (*nvrtcCompileProgram)(void *, int, const char *const *);
    int (*nvrtcGetProgramLogSize)(void *, size_t *);
    int (*nvrtcGetProgramLog)(void *, char *);
    int (*nvrtcGetCUBINSize)(void *, size_t *);
    int (*nvrtcGetCUBIN)(void *, char *);
    int (*nvrtcDestroyProgram)(void **);
    const char *(*last_error)(void);
} emu;

static inline void *emu_sym(const char *name) {
    void *p = dlsym(emu.lib, name);
    if (!p) {
        fprintf(stderr, "emu: missing %s\n", name);
        exit(1);
    }
    return p;
}
static inline void emu_open(void) {
    const char *path = getenv("HYB_CUDA_EMU_LIB");
#ifndef HYB_CUDA_EMU_LIB_DEFAULT
#define HYB_CUDA_EMU_LIB_DEFAULT "libhyb_cuda_emu.so"
#endif
    emu.lib = dlopen(path && *path ? path : HYB_CUDA_EMU_LIB_DEFAULT, RTLD_NOW | RTLD_LOCAL);
    if (!emu.lib) {
        fprintf(stderr, "emu: cannot load the emulation library: %s\n", dlerror());
        exit(1);
    }
    *(void **)&emu.cuInit = emu_sym("cuInit");
    *(void **)&emu.cuMemAlloc = emu_sym("cuMemAlloc_v2");
    *(void **)&emu.cuMemFree = emu_sym("cuMemFree_v2");
    *(void **)&emu.cuMemcpyHtoD = emu_sym("cuMemcpyHtoD_v2");
    *(void **)&emu.cuMemcpyDtoH = emu_sym("cuMemcpyDtoH_v2");
    *(void **)&emu.cuModuleLoadData = emu_sym("cuModuleLoadData");
    *(void **)&emu.cuModuleGetFunction = emu_sym("cuModuleGetFunction");
    *(void **)&emu.cuLaunchKernel = emu_sym("cuLaunchKernel");
    *(void **)&emu.nvrtcCreateProgram = emu_sym("nvrtcCreateProgram");
    *(void **)&emu.nvrtcCompileProgram = emu_sym("nvrtcCompileProgram");
    *(void **)&emu.nvrtcGetProgramLogSize = emu_sym("nvrtcGetProgramLogSize");
    *(void **)&emu.nvrtcGetProgramLog = emu_sym("nvrtcGetProgramLog");
    *(void **)&emu.nvrtcGetCUBINSize = emu_sym("nvrtcGetCUBINSize");
    *(void **)&emu.nvrtcGetCUBIN = emu_sym("nvrtcGetCUBIN");
    *(void **)&emu.nvrtcDestroyProgram = emu_sym("nvrtcDestroyProgram");
    *(void **)&emu.last_error = emu_sym("hyb_emu_last_error");
    if (emu.cuInit(0) != 0) {
        fprintf(stderr, "emu: cuInit failed\n");
        exit(1);
    }
}

/* compile `src` and look up `kernel`; opt: one extra NVRTC option or NULL. NULL on failure (the
 * compiler's log is printed) */
static inline void *emu_build(const char *name, const char *src, const char *kernel, const char *opt) {
    void *prog = NULL, *mod = NULL, *fn = NULL;
    const char *opts[3] = {"--gpu-architecture=sm_80", "--std=c++17", opt};
    if (emu.nvrtcCreateProgram(&prog, src, name, 0, NULL, NULL) != 0) return NULL;
    int rc = emu.nvrtcCompileProgram(prog, opt ? 3 : 2, opts);
    if (rc != 0) {
        size_t n = 0;
        emu.nvrtcGetProgramLogSize(prog, &n);
        char *log = malloc(n + 1);
        emu.nvrtcGetProgramLog(prog, log);
        fprintf(stderr, "emu: %s does not build:\n%s\n", name, log);
        free(log);
        emu.nvrtcDestroyProgram(&prog);
        return NULL;
    }
    size_t n = 0;
    emu.nvrtcGetCUBINSize(prog, &n);
    char *img = malloc(n);
    emu.nvrtcGetCUBIN(prog, img);
    emu.nvrtcDestroyProgram(&prog);
    rc = emu.cuModuleLoadData(&mod, img);
    free(img);
    if (rc != 0 || emu.cuModuleGetFunction(&fn, mod, kernel) != 0) {
        fprintf(stderr, "emu: %s: kernel %s not found (rc %d)\n", name, kernel, rc);
        return NULL;
    }
    return fn;
}
static inline unsigned long long emu_alloc(size_t n) {
    unsigned long long d = 0;
    if (emu.cuMemAlloc(&d, n) != 0) {
        fprintf(stderr, "emu: cuMemAlloc(%zu) failed\n", n);
        exit(1);
    }
    return d;
}
static inline void emu_put(unsigned long long d, const void *h, size_t n) {
    emu.cuMemcpyHtoD(d, h, n);
}
static inline void emu_get(void *h, unsigned long long d, size_t n) {
    emu.cuMemcpyDtoH(h, d, n);
}
static inline void emu_free(unsigned long long d) {
    emu.cuMemFree(d);
}
static inline int emu_launch(void *fn, const unsigned g[3], const unsigned b[3], unsigned shmem,
                      void **args) {
    return emu.cuLaunchKernel(fn, g[0], g[1], g[2], b[0], b[1], b[2], shmem, NULL, args, NULL);
}
static inline const char *emu_last_error(void) {
    return emu.last_error();
}
/* HYB_EMU_TEST_DIR/<name>, whole and NUL-terminated (heap); exits with fail_code when it cannot
 * be read (a test without its kernel source cannot run). */
static inline char *emu_slurp(const char *name, int fail_code) {
    char path[4096];
    snprintf(path, sizeof path, "%s/%s", HYB_EMU_TEST_DIR, name);
    FILE *f = fopen(path, "rb");
    if (!f) {
        fprintf(stderr, "cannot open %s\n", path);
        exit(fail_code);
    }
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *s = malloc((size_t)n + 1);
    if (fread(s, 1, (size_t)n, f) != (size_t)n) exit(fail_code);
    s[n] = '\0';
    fclose(f);
    return s;
}
#endif
