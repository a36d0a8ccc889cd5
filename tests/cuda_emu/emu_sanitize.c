/* tests/cuda_emu/emu_sanitize.c: the planted bugs of planted.cu that need a sanitizer, caught by
 * the emulated build. Built twice: emu_asan (-fsanitize=address) and emu_tsan
 * (-fsanitize=thread); the emulator sees the sanitizer in the process and compiles the kernels
 * with it (nvrtc_emu.c), announces its fibers, and models barriers as release/acquire (runtime.c).
 *
 *   emu_asan            run every case below in a child process, check each report (exit 0/1)
 *   emu_asan CASE PLANT ORDER   (the child) run one kernel once
 *
 * AddressSanitizer: bug_off_by_one (reads x[n] of a cuMemAlloc block; the comparison cannot see
 * it, test_emu.c shows) and bug_shared_oob (reads s[64] of a __shared__ float[64]) must be
 * reported with the kernel's name, their correct versions must not. ThreadSanitizer: bug_race and
 * bug_missing_barrier must be reported as data races in every thread order, their correct
 * versions and ok_block_sum (shuffles, shared memory, barriers, atomics) must not.
 * "real_kernels": every kernel of core/backend/cuda/kernels, launched as the backend does on
 * exact-size buffers, must run without a report under both, in every order. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

#include "emu_host.h"

/* the driver keeps module and function handles for the process's life, as a real one does:
 * not leaks worth reporting here */
const char *__asan_default_options(void);
const char *__asan_default_options(void) {
    return "detect_leaks=0";
}

static char *slurp(const char *name) {
    return emu_slurp(name, 2);
}

/* the child: one launch of one kernel */
static int child(const char *kernel, int plant) {
    emu_open();
    char *src = slurp("planted.cu");
    void *k = emu_build("planted.cu", src, kernel, plant ? "-DPLANT=1" : NULL);
    if (!k) return 2;
    enum { N = 512 };
    float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = (float)(i % 7);
    unsigned long long dx = emu_alloc(sizeof x), dy = emu_alloc(sizeof y);
    emu_put(dx, x, sizeof x);
    emu_put(dy, x, sizeof x);
    int n = N;
    void *args[] = {&dx, &dy, &n};
    unsigned g[3] = {4, 1, 1}, b[3] = {128, 1, 1};
    if (strcmp(kernel, "bug_shared_oob") == 0) g[0] = 8, b[0] = 64;
    if (strcmp(kernel, "bug_reuse_barrier") == 0) g[0] = 2, b[0] = 256;
    if (strcmp(kernel, "bug_block_race") == 0) g[0] = 4, b[0] = 64;
    int rc = emu_launch(k, g, b, 0, args);
    emu_get(y, dy, sizeof y);
    printf("launch %s plant=%d: rc %d\n", kernel, plant, rc);
    return rc == 0 ? 0 : 3;
}

/* the child for "real_kernels": every kernel of core/backend/cuda/kernels once, on small shapes
 * with exact-size buffers (no pool rounding), as the backend launches them; a sanitizer report
 * fails the case */
static char *real_source(const char *file) {
    char a[256], b[256];
    snprintf(a, sizeof a, "../../core/backend/cuda/kernels/common.cuh");
    snprintf(b, sizeof b, "../../core/backend/cuda/kernels/%s", file);
    char *c = slurp(a), *k = slurp(b);
    char *s = malloc(strlen(c) + strlen(k) + 2);
    sprintf(s, "%s\n%s", c, k);
    free(c), free(k);
    return s;
}
static unsigned long long dev_f(size_t n, float lo, float hi) {
    float *h = malloc(sizeof(float) * n);
    for (size_t i = 0; i < n; i++) h[i] = lo + (hi - lo) * (float)((i * 2654435761u) % 1000u) / 1000.0f;
    unsigned long long d = emu_alloc(sizeof(float) * n);
    emu_put(d, h, sizeof(float) * n);
    free(h);
    return d;
}
static unsigned long long dev_i(size_t n, int mod) {
    int *h = malloc(sizeof(int) * n);
    for (size_t i = 0; i < n; i++) h[i] = (int)((i * 40503u + 7u) % (unsigned)mod);
    unsigned long long d = emu_alloc(sizeof(int) * n);
    emu_put(d, h, sizeof(int) * n);
    free(h);
    return d;
}
static unsigned long long dev_h(size_t n) { /* n bf16 values in [-2, 2) */
    unsigned short *h = malloc(2 * n);
    for (size_t i = 0; i < n; i++) {
        float f = -2.0f + 4.0f * (float)((i * 2654435761u) % 1000u) / 1000.0f;
        unsigned int u;
        memcpy(&u, &f, 4);
        h[i] = (unsigned short)(u >> 16);
    }
    unsigned long long d = emu_alloc(2 * n);
    emu_put(d, h, 2 * n);
    free(h);
    return d;
}
#define LAUNCH(file_src, name, gx, gy, ...)                                                        \
    do {                                                                                           \
        void *k_ = emu_build(#name, file_src, #name, "-DHYB_BLOCK=256");                          \
        void *a_[] = {__VA_ARGS__};                                                              \
        const unsigned g_[3] = {(gx), (gy), 1}, b_[3] = {256, 1, 1};                             \
        int rc_ = k_ ? emu_launch(k_, g_, b_, 0, a_) : -1;                                       \
        printf("%-22s rc %d\n", #name, rc_);                                                     \
        bad += rc_ != 0;                                                                         \
    } while (0)
static int real_kernels(void) {
    emu_open();
    char *ew = real_source("elementwise.cu"), *rows_src = real_source("rows.cu");
    char *loss = real_source("loss.cu");
    int bad = 0;
    long long n = 1000, D = 96, nid = 37, V = 50, R = 5, BT = 10, Vl = 700;
    int T = 5, H = 3, hd = 16, inverse = 1, reverse = 1;
    float alpha = 0.5f, theta = 10000.0f, eps = 1e-5f, scale = 0.25f, temp = 2.0f;
    float b1 = 0.9f, b2 = 0.999f, shrink = 0.99f, step = 1e-3f, isb = 1.1f;
    unsigned long long a = dev_f(n, -1, 1), b = dev_f(n, -1, 1), y = dev_f(n, 0, 1), c = dev_f(n, 0, 1);
    unsigned long long e = dev_f(n, 0, 1), bf = emu_alloc(2 * (size_t)n);
    LAUNCH(ew, hyb_add, 3, 1, &a, &b, &y, &n);
    LAUNCH(ew, hyb_axpy, 3, 1, &y, &a, &alpha, &n);
    LAUNCH(ew, hyb_swiglu_fwd, 3, 1, &a, &b, &y, &n);
    LAUNCH(ew, hyb_swiglu_bwd, 3, 1, &a, &b, &y, &c, &e, &n);
    LAUNCH(ew, hyb_f32_to_bf16, 2, 1, &a, &bf, &n);
    LAUNCH(ew, hyb_bf16_to_f32, 2, 1, &bf, &y, &n);
    LAUNCH(ew, hyb_adamw, 3, 1, &a, &b, &c, &e, &n, &b1, &b2, &eps, &shrink, &step, &isb);
    unsigned long long W = dev_f((size_t)(V * D), -1, 1), ids = dev_i((size_t)nid, (int)V);
    unsigned long long ey = dev_f((size_t)(nid * D), 0, 1), dW = dev_f((size_t)(V * D), 0, 1);
    LAUNCH(ew, hyb_embedding_fwd, 4, 1, &W, &ids, &ey, &nid, &D);
    LAUNCH(ew, hyb_embedding_bwd, 4, 1, &dW, &ids, &ey, &nid, &D);
    unsigned long long rx = dev_f((size_t)(BT * H * hd), -1, 1), pos = dev_i((size_t)T, 100);
    LAUNCH(ew, hyb_rope, 2, 1, &rx, &BT, &T, &H, &hd, &pos, &theta, &inverse);
    /* rows: R rows of D (not a multiple of the block) */
    unsigned long long x = dev_f((size_t)(R * D), -2, 2), w = dev_f((size_t)D, 0.5f, 1.5f);
    unsigned long long yy = dev_f((size_t)(R * D), 0, 1), rstd = dev_f((size_t)R, 0, 1);
    unsigned long long dy = dev_f((size_t)(R * D), -1, 1), dx = dev_f((size_t)(R * D), 0, 1);
    unsigned long long dw = dev_f((size_t)D, 0, 1);
    long long per = 5;
    LAUNCH(rows_src, hyb_rmsnorm_fwd, (unsigned)R, 1, &x, &w, &yy, &rstd, &R, &D, &eps);
    LAUNCH(rows_src, hyb_rmsnorm_bwd_dx, (unsigned)R, 1, &x, &w, &rstd, &dy, &dx, &R, &D);
    LAUNCH(rows_src, hyb_rmsnorm_bwd_dw, 1, 2, &x, &rstd, &dy, &dw, &R, &D, &per);
    LAUNCH(rows_src, hyb_softmax_fwd, (unsigned)R, 1, &x, &yy, &R, &D);
    LAUNCH(rows_src, hyb_softmax_bwd, (unsigned)R, 1, &yy, &dy, &dx, &R, &D);
    /* losses: R rows of Vl, one row ignored (w = 0) */
    unsigned long long lg = dev_f((size_t)(R * Vl), -5, 5), tg = dev_f((size_t)(R * Vl), -5, 5);
    unsigned long long tgt = dev_i((size_t)R, (int)Vl), lw = dev_f((size_t)R, 0.5f, 1.5f);
    float zero = 0.0f;
    emu_put(lw + 4 * 3, &zero, 4);
    unsigned long long lse = dev_f((size_t)R, 0, 1), rl = dev_f((size_t)R, 0, 1);
    unsigned long long dl = dev_f((size_t)(R * Vl), 0, 1), st = dev_f((size_t)(3 * R), 0, 1);
    LAUNCH(loss, hyb_ce_fwd, (unsigned)R, 1, &lg, &tgt, &lw, &lse, &rl, &R, &Vl);
    LAUNCH(loss, hyb_ce_bwd, (unsigned)R, 1, &lg, &tgt, &lw, &lse, &dl, &R, &Vl, &scale);
    LAUNCH(loss, hyb_kl_fwd, (unsigned)R, 1, &lg, &tg, &lw, &st, &R, &Vl, &temp, &reverse);
    LAUNCH(loss, hyb_kl_bwd, (unsigned)R, 1, &lg, &tg, &lw, &st, &dl, &R, &Vl, &temp, &reverse, &scale);
    /* fused add + rmsnorm, in place (h = a) as trunk() may call it */
    unsigned long long ra = dev_f((size_t)(R * D), -2, 2), rb = dev_f((size_t)(R * D), -1, 1);
    LAUNCH(rows_src, hyb_add_rmsnorm_fwd, (unsigned)R, 1, &ra, &rb, &w, &ra, &yy, &rstd, &R, &D,
           &eps);
    /* multi-tensor AdamW: tensors of 1000, 4097 (two chunks) and 1 element, a grid of 2 for 4
     * chunks (the grid-stride path); the table laid out as hyb_adamw_tensor */
    struct {
        unsigned long long p, g, m, v;
        long long n, first_block;
        float shrink, step_size;
    } tab[3];
    const long long tn[3] = {1000, 4097, 1}, tf[3] = {0, 1, 3};
    for (int i = 0; i < 3; i++) {
        tab[i].p = dev_f((size_t)tn[i], -1, 1), tab[i].g = dev_f((size_t)tn[i], -1, 1);
        tab[i].m = dev_f((size_t)tn[i], -1, 1), tab[i].v = dev_f((size_t)tn[i], 0, 1);
        tab[i].n = tn[i], tab[i].first_block = tf[i], tab[i].shrink = shrink, tab[i].step_size = step;
    }
    unsigned long long dtab = emu_alloc(sizeof tab);
    emu_put(dtab, tab, sizeof tab);
    int cnt = 3;
    long long nblk = 4;
    LAUNCH(ew, hyb_adamw_multi, 2, 1, &dtab, &cnt, &nblk, &b1, &b2, &eps, &isb);
    /* sampling: 4 rows of Vl (greedy; plain; top-k + top-p; top-p + penalties) */
    char *smp = real_source("sample.cu");
    struct {
        float t;
        int k;
        float p, pen, u;
        int greedy;
    } prm[4] = {{0.0f, 0, 1.0f, 1.3f, 0.0f, 1},
                {1.0f, 0, 1.0f, 1.0f, 0.3f, 0},
                {0.8f, 40, 0.9f, 1.0f, 0.7f, 0},
                {1.2f, 0, 0.5f, 1.2f, 0.999f, 0}};
    const int off[5] = {0, 3, 3, 3, 5}, tok[5] = {1, 7, 9, 2, 650};
    long long Rs = 4;
    unsigned long long dprm = emu_alloc(sizeof prm), doff = emu_alloc(sizeof off);
    unsigned long long dtok = emu_alloc(sizeof tok), dout = dev_i(4, 1);
    emu_put(dprm, prm, sizeof prm), emu_put(doff, off, sizeof off), emu_put(dtok, tok, sizeof tok);
    unsigned long long sw = dev_f((size_t)(Rs * Vl), 0, 1), sp = dev_f((size_t)(Rs * Vl), 0, 1);
    LAUNCH(smp, hyb_sample, (unsigned)Rs, 1, &lg, &sw, &sp, &dprm, &doff, &dtok, &dout, &Vl);
    /* store.cu: the f32 build and the bf16 one (the backend's -DHYB_STORE_BF16) */
    char *store = real_source("store.cu"), *store16 = malloc(strlen(store) + 40);
    sprintf(store16, "#define HYB_STORE_BF16 1\n%s", store);
    LAUNCH(store, hyb_st_rmsnorm_fwd, (unsigned)R, 1, &x, &w, &yy, &rstd, &R, &D, &eps);
    LAUNCH(store, hyb_st_add_rmsnorm_fwd, (unsigned)R, 1, &ra, &rb, &w, &ra, &yy, &rstd, &R, &D,
           &eps);
    LAUNCH(store, hyb_st_swiglu_fwd, 3, 1, &a, &b, &y, &n);
    LAUNCH(store, hyb_st_add, 3, 1, &a, &b, &y, &n);
    unsigned long long ha = dev_h((size_t)n), hb = dev_h((size_t)n), hy = dev_h((size_t)n);
    unsigned long long hx = dev_h((size_t)(R * D)), hw = dev_h((size_t)D);
    unsigned long long hh = dev_h((size_t)(R * D)), hz = dev_h((size_t)(R * D));
    LAUNCH(store16, hyb_st_rmsnorm_fwd, (unsigned)R, 1, &hx, &hw, &hz, &rstd, &R, &D, &eps);
    LAUNCH(store16, hyb_st_add_rmsnorm_fwd, (unsigned)R, 1, &hx, &hh, &hw, &hx, &hz, &rstd, &R,
           &D, &eps);
    LAUNCH(store16, hyb_st_swiglu_fwd, 3, 1, &ha, &hb, &hy, &n);
    LAUNCH(store16, hyb_st_add, 3, 1, &ha, &hb, &hy, &n);
    free(smp), free(store), free(store16);
    free(ew), free(rows_src), free(loss);
    printf("real kernels: %d launches failed\n", bad);
    return bad ? 3 : 0;
}

typedef struct {
    const char *kernel;
    int plant;
    const char *order;
    const char *expect; /* text the report must contain; NULL: no report, exit 0 */
} tcase;

static int run_case(const char *self, const tcase *c) {
    char out[] = "/tmp/hyb_emu_sanXXXXXX";
    int fd = mkstemp(out);
    if (fd < 0) return 0;
    pid_t pid = fork();
    if (pid == 0) {
        dup2(fd, 1), dup2(fd, 2);
        setenv("HYB_CUDA_EMU_ORDER", c->order, 1);
        char plant[2] = {(char)('0' + c->plant), 0};
        execl(self, self, c->kernel, plant, (char *)NULL);
        _exit(127);
    }
    int st = 0;
    waitpid(pid, &st, 0);
    close(fd);
    FILE *f = fopen(out, "rb");
    char *log = calloc(1, 1 << 20);
    size_t n = f ? fread(log, 1, (1 << 20) - 1, f) : 0;
    if (f) fclose(f);
    unlink(out);
    log[n] = '\0';
    const int code = WIFEXITED(st) ? WEXITSTATUS(st) : 128;
    const int reported = strstr(log, "ERROR: AddressSanitizer") || strstr(log, "WARNING: ThreadSanitizer");
    int ok;
    if (c->expect)
        ok = code != 0 && strstr(log, c->expect) && strstr(log, c->kernel);
    else
        ok = code == 0 && !reported;
    printf("%s %-20s %-7s %-7s: %s (exit %d)\n", ok ? "ok  " : "FAIL", c->kernel,
           c->plant ? "planted" : "correct", c->order,
           c->expect ? (ok ? "reported" : "NOT reported") : (reported ? "false report" : "clean"),
           code);
    if (!ok || getenv("HYB_EMU_SAN_VERBOSE")) {
        /* the first lines of the report */
        char *p = log;
        for (int l = 0; l < 30 && p && *p; l++) {
            char *e = strchr(p, '\n');
            printf("    | %.*s\n", e ? (int)(e - p) : (int)strlen(p), p);
            p = e ? e + 1 : NULL;
        }
    }
    free(log);
    return ok;
}

int main(int argc, char **argv) {
    if (argc == 3 && strcmp(argv[1], "real_kernels") == 0) return real_kernels();
    if (argc == 3) return child(argv[1], atoi(argv[2]));
    const char *mode = strstr(argv[0], "tsan") ? "thread" : "address";
    static const char *const orders[] = {"forward", "reverse", "random"};
    tcase cases[32];
    int nc = 0;
    if (strcmp(mode, "address") == 0) {
        for (int o = 0; o < 3; o++) {
            cases[nc++] = (tcase){"bug_off_by_one", 1, orders[o], "heap-buffer-overflow"};
            cases[nc++] = (tcase){"bug_shared_oob", 1, orders[o], "use-after-poison"};
        }
        cases[nc++] = (tcase){"bug_off_by_one", 0, "forward", NULL};
        cases[nc++] = (tcase){"bug_shared_oob", 0, "forward", NULL};
        cases[nc++] = (tcase){"ok_block_sum", 0, "random", NULL};
        for (int o = 0; o < 3; o++) cases[nc++] = (tcase){"real_kernels", 0, orders[o], NULL};
    } else {
        for (int o = 0; o < 3; o++) {
            cases[nc++] = (tcase){"bug_race", 1, orders[o], "data race"};
            cases[nc++] = (tcase){"bug_missing_barrier", 1, orders[o], "data race"};
        }
        cases[nc++] = (tcase){"ok_block_sum", 0, "random", NULL};
        cases[nc++] = (tcase){"bug_reuse_barrier", 1, "forward", "data race"};
        cases[nc++] = (tcase){"bug_block_race", 1, "forward", "data race"};
        cases[nc++] = (tcase){"bug_block_race", 0, "forward", NULL};
        cases[nc++] = (tcase){"bug_reuse_barrier", 0, "random", NULL};
        cases[nc++] = (tcase){"bug_race", 0, "random", NULL};
        cases[nc++] = (tcase){"bug_missing_barrier", 0, "random", NULL};
        cases[nc++] = (tcase){"real_kernels", 0, "random", NULL}; /* a TSan child costs ~1 s */
    }
    int failed = 0;
    for (int i = 0; i < nc; i++) failed += !run_case(argv[0], &cases[i]);
    printf("%s: %d cases, %d failed\n", mode, nc, failed);
    return failed ? 1 : 0;
}
