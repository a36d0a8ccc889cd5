/* core/backend/cuda/nvrtc.c: compile CUDA C++ sources with NVRTC for an exact architecture, with
 * an on-disk cache.
 *
 * Target: for compute capability XY, `--gpu-architecture=sm_XY` producing a cubin (nvrtcGetCUBIN)
 * when this NVRTC lists sm_XY among its supported archs; otherwise PTX for the newest
 * compute_ZW <= XY it supports (the driver JIT-compiles PTX for newer GPUs).
 * Cache: ${HYB_CACHE:-$HOME/.cache/hyb}/kernels/<key>.{cubin,ptx}, key = FNV-1a 64 of
 * (source, every option, target, NVRTC version) with NUL separators; files are written atomically
 * (temporary + rename), so concurrent processes at worst compile twice. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "backend/cuda/cuda_internal.h"
#include "hyb/atomic.h"

uint64_t hyb_fnv1a64(uint64_t h, const void *data, size_t n) {
    const unsigned char *p = data;
    for (size_t i = 0; i < n; i++) {
        h ^= p[i];
        h *= 0x100000001b3ull;
    }
    return h;
}

void hyb_cuda_image_free(hyb_cuda_image *img) {
    if (!img) return;
    free(img->data);
    img->data = NULL;
    img->size = 0;
}

/* The directory of the kernel cache (no trailing slash); 0 when it cannot be determined. */
static int cache_dir(char *buf, size_t n) {
    const char *c = getenv("HYB_CACHE");
    int k;
    if (c && *c) {
        k = snprintf(buf, n, "%s/kernels", c);
    } else {
        const char *home = getenv("HOME");
        if (!home || !*home) return 0;
        k = snprintf(buf, n, "%s/.cache/hyb/kernels", home);
    }
    return k > 0 && (size_t)k < n;
}

static int read_file(const char *path, char **data, size_t *size) {
    FILE *f = fopen(path, "rb");
    if (!f) return 0;
    struct stat st;
    if (fstat(fileno(f), &st) != 0 || st.st_size <= 0) {
        fclose(f);
        return 0;
    }
    char *buf = malloc((size_t)st.st_size + 1);
    if (!buf || fread(buf, 1, (size_t)st.st_size, f) != (size_t)st.st_size) {
        free(buf);
        fclose(f);
        return 0;
    }
    buf[st.st_size] = '\0';
    fclose(f);
    *data = buf;
    *size = (size_t)st.st_size;
    return 1;
}

/* Choose the target for compute capability `arch`: *cubin = 1 with sm_arch, or PTX for the newest
 * supported compute_X <= arch. HYB_ERR_UNSUPPORTED when this NVRTC knows nothing that old. */
static int pick_target(int arch, int *target, int *cubin) {
    int n = 0;
    NVRTC_CHECK(hyb_nvrtc.nvrtcGetNumSupportedArchs(&n));
    int archs[128];
    if (n > 128) n = 128;
    NVRTC_CHECK(hyb_nvrtc.nvrtcGetSupportedArchs(archs));
    int best = 0;
    for (int i = 0; i < n; i++) {
        if (archs[i] == arch) {
            *target = arch;
            *cubin = 1;
            return HYB_OK;
        }
        if (archs[i] < arch && archs[i] > best) best = archs[i];
    }
    if (!best)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "NVRTC %d.%d cannot target compute capability %d.%d (oldest it "
                             "supports: %d.%d)",
                             hyb_cuda_nvrtc_version() / 1000, hyb_cuda_nvrtc_version() % 1000 / 10,
                             arch / 10, arch % 10, n ? archs[0] / 10 : 0, n ? archs[0] % 10 : 0);
    *target = best;
    *cubin = 0;
    return HYB_OK;
}

int hyb_cuda_nvrtc_compile(const char *name, const char *src, const char *const *opts, int nopts,
                           int arch, int use_cache, hyb_cuda_image *out) {
    memset(out, 0, sizeof *out);
    HYB_TRY(hyb_cuda_nvrtc_load());
    if (nopts < 0 || nopts > 60 || (nopts > 0 && !opts))
        return hyb_error_set(HYB_ERR_ARG, "hyb_cuda_nvrtc_compile(%s): bad option list (%d)",
                             name, nopts);
    int target = 0, cubin = 0;
    HYB_TRY(pick_target(arch, &target, &cubin));

    char archopt[64];
    snprintf(archopt, sizeof archopt, "--gpu-architecture=%s_%d", cubin ? "sm" : "compute",
             target);
    const char *all[64];
    int na = 0;
    all[na++] = archopt;
    all[na++] = "--std=c++17";
    all[na++] = "-default-device";
    for (int i = 0; i < nopts; i++)
        all[na++] = opts[i];

    /* cache key */
    const int ver = hyb_cuda_nvrtc_version();
    uint64_t h = hyb_fnv1a64(HYB_FNV64_INIT, src, strlen(src) + 1);
    for (int i = 0; i < na; i++)
        h = hyb_fnv1a64(h, all[i], strlen(all[i]) + 1);
    h = hyb_fnv1a64(h, &ver, sizeof ver);
    snprintf(out->key, sizeof out->key, "%016llx", (unsigned long long)h);

    const char *env = getenv("HYB_KERNEL_CACHE");
    if (env && strcmp(env, "0") == 0) use_cache = 0;
    char dir[1024], path[1200];
    int have_dir = use_cache && cache_dir(dir, sizeof dir);
    if (have_dir) {
        snprintf(path, sizeof path, "%s/%s.%s", dir, out->key, cubin ? "cubin" : "ptx");
        if (read_file(path, &out->data, &out->size)) {
            if (!cubin) out->size += 1; /* PTX: include the NUL read_file appended */
            out->is_cubin = cubin;
            out->from_cache = 1;
            return HYB_OK;
        }
    }

    nvrtcProgram prog = NULL;
    int rc = HYB_OK;
    NVRTC_CHECK(hyb_nvrtc.nvrtcCreateProgram(&prog, src, name, 0, NULL, NULL));
    nvrtcResult cr = hyb_nvrtc.nvrtcCompileProgram(prog, na, all);
    if (cr != NVRTC_SUCCESS) {
        size_t ln = 0;
        char *log = NULL;
        if (hyb_nvrtc.nvrtcGetProgramLogSize(prog, &ln) == NVRTC_SUCCESS && ln > 0 &&
            (log = malloc(ln + 1)) != NULL) {
            if (hyb_nvrtc.nvrtcGetProgramLog(prog, log) != NVRTC_SUCCESS) log[0] = '\0';
            log[ln] = '\0';
        }
        hyb_log(HYB_LOG_ERROR, "NVRTC failed to compile %s for %s:\n%s", name, archopt,
                log ? log : "(no log)");
        rc = hyb_error_set(HYB_ERR, "NVRTC failed to compile kernel source %s for %s (%s):\n%.1500s",
                           name, archopt, hyb_nvrtc.nvrtcGetErrorString(cr), log ? log : "(no log)");
        free(log);
        goto done;
    }
    size_t n = 0;
    if (cubin) {
        NVRTC_CHECK_GOTO(hyb_nvrtc.nvrtcGetCUBINSize(prog, &n), rc, done);
        out->data = malloc(n ? n : 1);
        if (!out->data) goto oom;
        NVRTC_CHECK_GOTO(hyb_nvrtc.nvrtcGetCUBIN(prog, out->data), rc, done);
    } else {
        NVRTC_CHECK_GOTO(hyb_nvrtc.nvrtcGetPTXSize(prog, &n), rc, done); /* includes the NUL */
        out->data = malloc(n ? n : 1);
        if (!out->data) goto oom;
        NVRTC_CHECK_GOTO(hyb_nvrtc.nvrtcGetPTX(prog, out->data), rc, done);
    }
    out->size = n;
    out->is_cubin = cubin;
    if (have_dir) {
        /* a cache that cannot be written is not an error: warn and go on */
        size_t wn = cubin ? n : (n ? n - 1 : 0);
        if (hyb_mkdir_p(dir) != HYB_OK || hyb_atomic_write_buf(path, out->data, wn) != HYB_OK)
            hyb_log(HYB_LOG_WARN, "kernel cache not written (%s)", hyb_error());
        hyb_error_clear();
    }
    goto done;
oom:
    rc = hyb_error_set(HYB_ERR_NOMEM, "NVRTC output of %s: out of memory (%zu bytes)", name, n);
done:
    hyb_nvrtc.nvrtcDestroyProgram(&prog);
    if (rc != HYB_OK) hyb_cuda_image_free(out);
    return rc;
}

const char *hyb_cuda_source_text(const char *name) {
    for (int i = 0; i < hyb_cuda_n_sources; i++)
        if (strcmp(hyb_cuda_sources[i].name, name) == 0) return hyb_cuda_sources[i].text;
    return NULL;
}

char *hyb_cuda_source_full(const char *name) {
    const char *common = hyb_cuda_source_text("common.cuh");
    const char *text = hyb_cuda_source_text(name);
    if (!common || !text) {
        hyb_error_set(HYB_ERR_NOTFOUND, "no embedded CUDA kernel source named %s", name);
        return NULL;
    }
    size_t a = strlen(common), b = strlen(text);
    char *s = malloc(a + b + 2);
    if (!s) {
        hyb_error_set(HYB_ERR_NOMEM, "kernel source %s: out of memory", name);
        return NULL;
    }
    memcpy(s, common, a);
    s[a] = '\n';
    memcpy(s + a + 1, text, b + 1);
    return s;
}

int hyb_cuda_compile_builtin(const char *name, int arch, int use_cache, hyb_cuda_image *out) {
    return hyb_cuda_compile_builtin_opts(name, NULL, 0, arch, use_cache, out);
}

int hyb_cuda_compile_builtin_opts(const char *name, const char *const *extra, int n_extra, int arch,
                                  int use_cache, hyb_cuda_image *out) {
    memset(out, 0, sizeof *out);
    if (n_extra < 0 || n_extra > 7 || (n_extra > 0 && !extra))
        return hyb_error_set(HYB_ERR_ARG, "%s: bad extra options (%d)", name, n_extra);
    char *src = hyb_cuda_source_full(name);
    if (!src) return HYB_ERR_NOTFOUND;
    const char *opts[8] = {"-DHYB_BLOCK=256"};
    for (int i = 0; i < n_extra; i++)
        opts[1 + i] = extra[i];
    int rc = hyb_cuda_nvrtc_compile(name, src, opts, 1 + n_extra, arch, use_cache, out);
    free(src);
    return rc;
}
