/* tests/test_cuda_nvrtc.c: the CUDA kernel sources compile through NVRTC (no GPU needed).
 *
 * Every embedded kernel file (core/backend/cuda/kernels) is compiled for sm_80 and sm_90, so a
 * broken kernel fails the normal `ctest -L unit` run on any machine with the CUDA toolkit. Also:
 * the on-disk cache (a second compile is a hit with identical bytes; options change the key), a
 * broken source reports the NVRTC log, the FNV-1a hash against its published test vectors, and a
 * machine without a driver gets the clear "CPU only" status instead of a crash. Skips (77) when
 * the build has no CUDA headers or NVRTC cannot be loaded. */
#include <stdlib.h>
#include <string.h>
#include <glob.h>
#include <stdio.h>
#include <unistd.h>

#include "harness.h"
#include "hyb/common.h"

#ifdef HYB_HAVE_CUDA
#include "backend/cuda/cuda.h"

static char g_cache[256];

static int contains(const char *data, size_t n, const char *needle) {
    size_t k = strlen(needle);
    for (size_t i = 0; i + k <= n; i++)
        if (memcmp(data + i, needle, k) == 0) return 1;
    return 0;
}

static void test_fnv1a(void) {
    /* published FNV-1a 64 test vectors */
    CHECK(hyb_fnv1a64(HYB_FNV64_INIT, "", 0) == 0xcbf29ce484222325ull);
    CHECK(hyb_fnv1a64(HYB_FNV64_INIT, "a", 1) == 0xaf63dc4c8601ec8cull);
    CHECK(hyb_fnv1a64(HYB_FNV64_INIT, "foobar", 6) == 0x85944171f73967e8ull);
}

/* each `__global__ void name(` of the source is a symbol of the image; returns how many */
static int check_symbols(const char *name, const char *text, const hyb_cuda_image *img, int arch) {
    const char *p = text;
    int nk = 0;
    while ((p = strstr(p, "__global__ void ")) != NULL) {
        p += strlen("__global__ void ");
        char kname[64];
        size_t k = 0;
        while (p[k] && p[k] != '(' && p[k] != ' ' && k + 1 < sizeof kname) {
            kname[k] = p[k];
            k++;
        }
        kname[k] = '\0';
        CHECK_MSG(contains(img->data, img->size, kname), "%s: kernel %s not in the sm_%d image",
                  name, kname, arch);
        nk++;
    }
    return nk;
}

/* every kernel file, both archs: a cubin (ELF) holding each extern "C" kernel it defines */
static void test_all_kernels_compile(void) {
    int nfiles = 0;
    for (int i = 0; i < hyb_cuda_n_sources; i++) {
        const char *name = hyb_cuda_sources[i].name;
        size_t ln = strlen(name);
        if (ln < 3 || strcmp(name + ln - 3, ".cu") != 0) continue;
        nfiles++;
        static const int archs[] = {80, 90};
        for (int a = 0; a < 2; a++) {
            hyb_cuda_image img;
            int rc = hyb_cuda_compile_builtin(name, archs[a], 1, &img);
            CHECK_MSG(rc == HYB_OK, "%s for sm_%d: %s", name, archs[a], hyb_error());
            if (rc != HYB_OK) continue;
            CHECK(img.is_cubin == 1);
            CHECK(img.size > 4 && memcmp(img.data, "\x7f" "ELF", 4) == 0);
            int nk = check_symbols(name, hyb_cuda_sources[i].text, &img, archs[a]);
            CHECK_MSG(nk > 0, "%s defines no kernel", name);
            hyb_cuda_image_free(&img);
        }
    }
    CHECK(nfiles >= 3); /* elementwise.cu, rows.cu, loss.cu */
    CHECK(hyb_cuda_source_text("common.cuh") != NULL);
    /* the variant builds the backend loads: store.cu with bf16 storage */
    static const char *const bf16[] = {"-DHYB_STORE_BF16"};
    for (int arch = 80; arch <= 90; arch += 10) {
        hyb_cuda_image img;
        int rc = hyb_cuda_compile_builtin_opts("store.cu", bf16, 1, arch, 1, &img);
        CHECK_MSG(rc == HYB_OK, "store.cu -DHYB_STORE_BF16 for sm_%d: %s", arch, hyb_error());
        if (rc != HYB_OK) continue;
        CHECK(check_symbols("store.cu", hyb_cuda_source_text("store.cu"), &img, arch) == 4);
        hyb_cuda_image_free(&img);
    }
}

/* ---- the plugins' kernel files ----------------------------------------------------------------
 * Every .cu file of plugins/<name>/ (and of plugins/common/) in the source tree, for sm_80 and sm_90, in
 * each variant it declares. Two comment lines in a .cu file tell this test what the plugin does
 * at run time:
 *   // hyb-prepend: a.cuh b.cuh      files the plugin puts before this one (its own directory or
 *                                     plugins/common), as the core does with common.cuh
 *   // hyb-variant: -DHD=64 -DBT=16  one set of -D options the plugin compiles it with (one line per
 *                                     set; none: compiled once without options)
 */
static char *slurp(const char *path) {
    FILE *f = fopen(path, "rb");
    if (!f) return NULL;
    fseek(f, 0, SEEK_END);
    long n = ftell(f);
    fseek(f, 0, SEEK_SET);
    char *b = malloc((size_t)n + 1);
    if (b && fread(b, 1, (size_t)n, f) != (size_t)n) {
        free(b);
        b = NULL;
    }
    if (b) b[n] = '\0';
    fclose(f);
    return b;
}

/* the text after `tag` up to the end of the line, from *p on; advances *p; NULL when none */
static int next_tag(const char **p, const char *tag, char *out, size_t n) {
    const char *q = strstr(*p, tag);
    if (!q) return 0;
    q += strlen(tag);
    size_t k = 0;
    while (q[k] && q[k] != '\n' && k + 1 < n) {
        out[k] = q[k];
        k++;
    }
    out[k] = '\0';
    *p = q + k;
    return 1;
}

static char *plugin_full_source(const char *dir, const char *common, const char *text) {
    size_t cap = strlen(text) + 1, len = 0;
    char *full = malloc(cap);
    full[0] = '\0';
    char line[512];
    const char *p = text;
    if (next_tag(&p, "// hyb-prepend:", line, sizeof line)) {
        for (char *save = NULL, *tok = strtok_r(line, " \t", &save); tok;
             tok = strtok_r(NULL, " \t", &save)) {
            char path[2600];
            snprintf(path, sizeof path, "%s/%s", dir, tok);
            char *h = slurp(path);
            if (!h) {
                snprintf(path, sizeof path, "%s/%s", common, tok);
                h = slurp(path);
            }
            CHECK_MSG(h != NULL, "hyb-prepend: %s found neither in %s nor in %s", tok, dir, common);
            if (!h) continue;
            cap += strlen(h) + 1;
            full = realloc(full, cap);
            memcpy(full + len, h, strlen(h));
            len += strlen(h);
            full[len++] = '\n';
            full[len] = '\0';
            free(h);
        }
    }
    memcpy(full + len, text, strlen(text) + 1);
    return full;
}

static void test_plugin_kernels_compile(void) {
    const char *src = getenv("HYB_SOURCE_DIR");
    if (!src) {
        printf("   skipped: HYB_SOURCE_DIR is not set\n");
        return;
    }
    char pattern[1024], common[1024];
    snprintf(pattern, sizeof pattern, "%s/plugins/*/*.cu", src);
    snprintf(common, sizeof common, "%s/plugins/common", src);
    glob_t g;
    if (glob(pattern, 0, NULL, &g) != 0) {
        printf("   no plugin kernel files under %s/plugins\n", src);
        return;
    }
    int ncompiled = 0;
    for (size_t i = 0; i < g.gl_pathc; i++) {
        const char *path = g.gl_pathv[i];
        char *text = slurp(path);
        CHECK_MSG(text != NULL, "cannot read %s", path);
        if (!text) continue;
        char dir[1024];
        snprintf(dir, sizeof dir, "%s", path);
        *strrchr(dir, '/') = '\0';
        char *full = plugin_full_source(dir, common, text);
        const char *name = strrchr(path, '/') + 1;
        /* the variants: each line's options, or one empty set */
        char vars[16][512];
        int nv = 0;
        for (const char *p = text; nv < 16 && next_tag(&p, "// hyb-variant:", vars[nv], sizeof vars[nv]);)
            nv++;
        if (nv == 0) vars[nv++][0] = '\0';
        for (int v = 0; v < nv; v++) {
            const char *opts[16];
            int nopts = 0;
            char buf[sizeof vars[0]];
            memcpy(buf, vars[v], sizeof buf);
            for (char *save = NULL, *tok = strtok_r(buf, " \t", &save); tok && nopts < 16;
                 tok = strtok_r(NULL, " \t", &save))
                opts[nopts++] = tok;
            static const int archs[] = {80, 90};
            for (int a = 0; a < 2; a++) {
                hyb_cuda_image img;
                int rc = hyb_cuda_nvrtc_compile(name, full, opts, nopts, archs[a], 1, &img);
                CHECK_MSG(rc == HYB_OK, "%s [%s] for sm_%d: %s", path, vars[v], archs[a],
                          hyb_error());
                if (rc != HYB_OK) continue;
                CHECK(img.is_cubin == 1);
                CHECK_MSG(check_symbols(name, text, &img, archs[a]) > 0, "%s defines no kernel",
                          path);
                hyb_cuda_image_free(&img);
                ncompiled++;
            }
        }
        printf("   %s: %d variant(s) for sm_80 and sm_90\n", path + strlen(src) + 1, nv);
        free(full);
        free(text);
    }
    globfree(&g);
    CHECK(ncompiled > 0);
}

static void test_cache_hit(void) {
    const char *src = "extern \"C\" __global__ void k(float *x) { x[threadIdx.x] *= SCALE; }\n";
    const char *o1[] = {"-DSCALE=2.0f"}, *o2[] = {"-DSCALE=3.0f"};
    hyb_cuda_image a, b, c;
    CHECK(hyb_cuda_nvrtc_compile("cache.cu", src, o1, 1, 90, 1, &a) == HYB_OK);
    CHECK(a.from_cache == 0);
    char path[512];
    snprintf(path, sizeof path, "%s/kernels/%s.cubin", g_cache, a.key);
    CHECK_MSG(access(path, R_OK) == 0, "cache file %s missing", path);
    CHECK(hyb_cuda_nvrtc_compile("cache.cu", src, o1, 1, 90, 1, &b) == HYB_OK);
    CHECK(b.from_cache == 1);
    CHECK(b.size == a.size && a.data && b.data && memcmp(a.data, b.data, a.size) == 0);
    CHECK(strcmp(a.key, b.key) == 0);
    /* another -D value, another arch: other keys, compiled afresh */
    CHECK(hyb_cuda_nvrtc_compile("cache.cu", src, o2, 1, 90, 1, &c) == HYB_OK);
    CHECK(c.from_cache == 0 && strcmp(c.key, a.key) != 0);
    hyb_cuda_image_free(&c);
    CHECK(hyb_cuda_nvrtc_compile("cache.cu", src, o1, 1, 80, 1, &c) == HYB_OK);
    CHECK(c.from_cache == 0 && strcmp(c.key, a.key) != 0);
    hyb_cuda_image_free(&a);
    hyb_cuda_image_free(&b);
    hyb_cuda_image_free(&c);
}

static void test_broken_source_shows_log(void) {
    const char *src = "extern \"C\" __global__ void broken(float *x) { x[0] = undefined_name; }\n";
    hyb_cuda_image img;
    int rc = hyb_cuda_nvrtc_compile("broken_kernel.cu", src, NULL, 0, 90, 1, &img);
    CHECK(rc != HYB_OK);
    CHECK(img.data == NULL);
    const char *e = hyb_error();
    CHECK_MSG(strstr(e, "broken_kernel.cu") != NULL, "error lacks the source name: %s", e);
    CHECK_MSG(strstr(e, "undefined_name") != NULL, "error lacks the NVRTC log: %s", e);
    CHECK_MSG(strstr(e, "sm_90") != NULL, "error lacks the arch: %s", e);
}

static void test_unknown_source(void) {
    hyb_cuda_image img;
    CHECK(hyb_cuda_compile_builtin("no_such.cu", 90, 1, &img) == HYB_ERR_NOTFOUND);
    CHECK(strstr(hyb_error(), "no_such.cu") != NULL);
}

/* Without a driver, loading reports it clearly; with one, it loads. Never a crash. */
static void test_driver_status(void) {
    int rc = hyb_cuda_load();
    if (rc != HYB_OK) {
        CHECK(strlen(hyb_error()) > 0);
        printf("  (driver status: %s)\n", hyb_error());
        if (rc == HYB_ERR_UNSUPPORTED && strstr(hyb_error(), "libcuda.so.1"))
            CHECK(strstr(hyb_error(), "no CUDA driver found") != NULL);
    }
}

/* Without a driver the backend stays unregistered and its entry points fail cleanly. */
static void test_no_device_is_clean(void) {
    if (hyb_cuda_load() == HYB_OK) return; /* a driver is present: cuda_ops covers it */
    CHECK(hyb_cuda_init(0) != HYB_OK);
    CHECK(strstr(hyb_error(), "no CUDA driver found") != NULL || strstr(hyb_error(), "cuBLAS") != NULL);
    CHECK(hyb_cuda_ready() == 0 && hyb_cuda_arch() == 0);
    CHECK(hyb_backend_cuda() == NULL);
    CHECK(hyb_backend_get(HYB_DEV_CUDA) == NULL);
    CHECK(hyb_cuda_malloc(1024) == NULL);
    CHECK(strstr(hyb_error(), "not initialised") != NULL);
    hyb_cuda_free(NULL);
    CHECK(hyb_cuda_sync() == HYB_OK);
}

int main(void) {
    if (hyb_cuda_nvrtc_load() != HYB_OK) {
        printf("skipped: %s\n", hyb_error());
        return HARNESS_SKIP;
    }
    /* a private kernel cache for this run */
    snprintf(g_cache, sizeof g_cache, "/tmp/hyb_test_nvrtc_%d", (int)getpid());
    setenv("HYB_CACHE", g_cache, 1);
    unsetenv("HYB_KERNEL_CACHE");
    printf("NVRTC %d.%d, cache %s\n", hyb_cuda_nvrtc_version() / 1000,
           hyb_cuda_nvrtc_version() % 1000 / 10, g_cache);
    RUN(test_fnv1a);
    RUN(test_all_kernels_compile);
    RUN(test_plugin_kernels_compile);
    RUN(test_cache_hit);
    RUN(test_broken_source_shows_log);
    RUN(test_unknown_source);
    RUN(test_driver_status);
    RUN(test_no_device_is_clean);
    harness_rm_rf(g_cache);
    return harness_done();
}
#else
int main(void) {
    printf("skipped: built without the CUDA headers\n");
    return HARNESS_SKIP;
}
#endif
