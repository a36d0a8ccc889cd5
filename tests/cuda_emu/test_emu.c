/* tests/cuda_emu/test_emu.c (labels unit, cuda-emu): the CUDA emulation (core/backend/cuda/emu)
 * itself. Part 1 pins down its semantics with small kernels (semantics.cu) against host
 * references: shuffles (xor/down/up/idx, widths, half-warp masks), votes, barrier reductions on a
 * partial warp, static and dynamic shared memory, 3-D indices, atomics, f16/bf16 rounding (the
 * f16 reference is the compiler's _Float16), a WMMA tile; a deadlock, a shuffle naming a finished
 * lane and a failed device assert must fail the launch with a message, not hang. Every kernel
 * runs in forward, reverse and random thread order.
 *
 * Part 2 (planted.cu) shows that running threads in several orders catches bugs: for each
 * planted bug the correct kernel matches the host reference in all three orders and the buggy
 * one (-DPLANT) mismatches in at least one (the missing barrier, the wrong index, the race,
 * a shared array reused without the barrier between two reductions);
 * the off-by-one read and a non-atomic += between blocks are NOT caught by comparison (asserted
 * here), which is why emu_sanitize.c runs them under AddressSanitizer / ThreadSanitizer. */
#include <math.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "emu_host.h"
#include "harness.h"

static const char *const g_orders[3] = {"forward", "reverse", "random"};
static char *g_sem, *g_plant;

static char *slurp(const char *name) {
    return emu_slurp(name, 1);
}
static void set_order(int o) {
    setenv("HYB_CUDA_EMU_ORDER", g_orders[o], 1);
}
static const unsigned ONE[3] = {1, 1, 1};
/* semantics.cu's kernel `name`, built; NULL after a failed check */
static void *sem_kernel(const char *name) {
    void *k = emu_build("semantics.cu", g_sem, name, NULL);
    CHECK_MSG(k != NULL, "build %s: %s", name, emu_last_error());
    return k;
}
/* one block of nt threads (shmem bytes of dynamic shared memory) in thread order o */
static int launch_block(void *k, int o, unsigned nt, unsigned shmem, void **args) {
    set_order(o);
    const unsigned b[3] = {nt, 1, 1};
    return emu_launch(k, ONE, b, shmem, args);
}
/* x (nx bytes) to the device, k launched in order o on grid g, block b with the arguments
 * (dx, dy, extra0, extra1) (a kernel reads as many as it takes), y (ny bytes) back; 1 when the
 * launch succeeded */
static int launch_xy(void *k, int o, const void *x, size_t nx, void *y, size_t ny,
                     const unsigned g[3], const unsigned b[3], void *extra0, void *extra1) {
    unsigned long long dx = emu_alloc(nx), dy = emu_alloc(ny);
    emu_put(dx, x, nx);
    set_order(o);
    void *args[] = {&dx, &dy, extra0, extra1};
    int ok = emu_launch(k, g, b, 0, args) == 0;
    emu_get(y, dy, ny);
    emu_free(dx), emu_free(dy);
    return ok;
}

/* ---- part 1: semantics ----------------------------------------------------------------------- */
static void test_warp_ops(void) {
    void *k = sem_kernel("k_warp");
    if (!k) return;
    enum { NT = 64 };
    int in[NT], out[NT * 8], want[NT * 8];
    for (int t = 0; t < NT; t++) in[t] = (t * 37 + 11) % 50;
    for (int t = 0; t < NT; t++) {
        const int base = t & ~31, lane = t & 31;
        int *w = want + t * 8;
        w[0] = in[base + (lane ^ 1)];
        w[1] = in[base + (lane ^ 16)];
        const int seg8 = lane & ~7;
        w[2] = lane + 3 <= seg8 + 7 ? in[base + lane + 3] : in[t];
        w[3] = lane >= 5 ? in[base + lane - 5] : in[t];
        w[4] = in[base + (lane & ~15) + ((t * 7) % 32) % 16];
        unsigned bal = 0;
        int any = 0, all = 1, sum = 0;
        for (int j = 0; j < 32; j++) {
            bal |= (unsigned)(in[base + j] % 3 == 0) << j;
            any |= in[base + j] == 40;
            all &= in[base + j] >= 0;
            sum += in[base + j];
        }
        w[5] = (int)bal;
        w[6] = any * 2 + all;
        w[7] = sum;
    }
    const unsigned b[3] = {NT, 1, 1};
    for (int o = 0; o < 3; o++) {
        CHECK(launch_xy(k, o, in, sizeof in, out, sizeof out, ONE, b, NULL, NULL));
        int bad = 0;
        for (int i = 0; i < NT * 8; i++) bad += out[i] != want[i];
        CHECK_MSG(bad == 0, "%s order: %d of %d warp-op results differ", g_orders[o], bad, NT * 8);
    }

    void *kh = sem_kernel("k_halfwarp");
    if (!kh) return;
    float x[32], y[32];
    for (int i = 0; i < 32; i++) x[i] = (float)(i * i % 7);
    const unsigned b32[3] = {32, 1, 1};
    for (int o = 0; o < 3; o++) {
        CHECK(launch_xy(kh, o, x, sizeof x, y, sizeof y, ONE, b32, NULL, NULL));
        for (int i = 0; i < 32; i++) {
            float s = 0;
            for (int j = i & 16; j < (i & 16) + 16; j++) s += x[j];
            CHECK_MSG(y[i] == s, "%s: half-warp sum lane %d: %g, want %g", g_orders[o], i, y[i], s);
        }
    }
}

static void test_barrier_reductions(void) {
    void *k = sem_kernel("k_bar");
    if (!k) return;
    enum { NT = 100 };
    int in[NT], out[NT];
    int cnt = 0, all = 1, any = 0;
    for (int t = 0; t < NT; t++) {
        in[t] = (t * 13) % 29;
        cnt += in[t] % 3 == 0, all &= in[t] >= 0, any |= in[t] == 7;
    }
    const unsigned b[3] = {NT, 1, 1};
    for (int o = 0; o < 3; o++) {
        CHECK(launch_xy(k, o, in, sizeof in, out, sizeof out, ONE, b, NULL, NULL));
        for (int t = 0; t < NT; t++) CHECK(out[t] == cnt * 4 + all * 2 + any);
    }
}

static void test_shared_and_ids(void) {
    void *ks = emu_build("semantics.cu", g_sem, "k_reverse", NULL);
    void *kd = emu_build("semantics.cu", g_sem, "k_reverse_dyn", NULL);
    void *ki = emu_build("semantics.cu", g_sem, "k_ids", NULL);
    CHECK(ks && kd && ki);
    if (!ks || !kd || !ki) return;
    enum { B = 256, G = 5 };
    float x[B * G], y[B * G];
    for (int i = 0; i < B * G; i++) x[i] = (float)i * 0.5f;
    unsigned long long dx = emu_alloc(sizeof x), dy = emu_alloc(sizeof y);
    emu_put(dx, x, sizeof x);
    for (int o = 0; o < 3; o++) {
        set_order(o);
        for (int dyn = 0; dyn < 2; dyn++) {
            void *args[] = {&dx, &dy};
            const unsigned g[3] = {G, 1, 1}, b[3] = {B, 1, 1};
            CHECK(emu_launch(dyn ? kd : ks, g, b, dyn ? B * sizeof(float) : 0, args) == 0);
            emu_get(y, dy, sizeof y);
            int bad = 0;
            for (int i = 0; i < B * G; i++) bad += y[i] != x[(i / B) * B + (B - 1 - i % B)];
            CHECK_MSG(bad == 0, "%s, %s shared: %d wrong", g_orders[o], dyn ? "dynamic" : "static", bad);
        }
        /* grid (3, 2, 2), block (5, 3, 2) */
        const unsigned g[3] = {3, 2, 2}, b[3] = {5, 3, 2};
        const int n = 3 * 2 * 2 * 5 * 3 * 2;
        int out[3 * 2 * 2 * 5 * 3 * 2];
        unsigned long long dout = emu_alloc(sizeof out);
        void *args[] = {&dout};
        CHECK(emu_launch(ki, g, b, 0, args) == 0);
        emu_get(out, dout, sizeof out);
        int bad = 0;
        for (int i = 0; i < n; i++) {
            const int bl = i / 30, tl = i % 30;
            const int bx = bl % 3, by = bl / 3 % 2, bz = bl / 6;
            const int tx = tl % 5, ty = tl / 5 % 3, tz = tl / 15;
            bad += out[i] != ((bz * 4 + by) * 4 + bx) * 1000 + (tz * 16 + ty) * 16 + tx;
        }
        CHECK_MSG(bad == 0, "%s: %d wrong 3-D indices", g_orders[o], bad);
        emu_free(dout);
    }
    emu_free(dx), emu_free(dy);
}

/* the rewrite's less common forms (k_forms): y[t] = 106 x[63 - t] */
static void test_shared_forms(void) {
    void *k = sem_kernel("k_forms");
    if (!k) return;
    float x[64], y[64];
    for (int i = 0; i < 64; i++) x[i] = (float)(i * 3 % 11);
    unsigned long long dx = emu_alloc(sizeof x), dy = emu_alloc(sizeof y);
    emu_put(dx, x, sizeof x);
    for (int o = 0; o < 3; o++) {
        void *args[] = {&dx, &dy};
        CHECK(launch_block(k, o, 64, 64 * sizeof(float), args) == 0);
        emu_get(y, dy, sizeof y);
        int bad = 0;
        for (int t = 0; t < 64; t++) bad += y[t] != 106.0f * x[63 - t];
        CHECK_MSG(bad == 0, "%s: %d of 64 wrong", g_orders[o], bad);
    }
    emu_free(dx), emu_free(dy);
}

static void test_atomics(void) {
    void *k = sem_kernel("k_atomics");
    if (!k) return;
    enum { N = 5000 };
    static int in[N];
    int hist[16] = {0}, want[16] = {0}, mx = -1, wmx = -1;
    float fs = 0;
    double ds = 0, wds = 0;
    for (int i = 0; i < N; i++) {
        in[i] = (int)((i * 2654435761u) % 100003u);
        want[in[i] & 15]++;
        wmx = in[i] > wmx ? in[i] : wmx;
        wds += in[i];
    }
    unsigned long long din = emu_alloc(sizeof in), dh = emu_alloc(sizeof hist);
    unsigned long long df = emu_alloc(4), dm = emu_alloc(4), dd = emu_alloc(8);
    emu_put(din, in, sizeof in);
    for (int o = 0; o < 3; o++) {
        set_order(o);
        memset(hist, 0, sizeof hist);
        fs = 0, mx = -1, ds = 0;
        emu_put(dh, hist, sizeof hist), emu_put(df, &fs, 4), emu_put(dm, &mx, 4), emu_put(dd, &ds, 8);
        int n = N;
        void *args[] = {&din, &n, &dh, &df, &dm, &dd};
        const unsigned g[3] = {7, 1, 1}, b[3] = {96, 1, 1};
        CHECK(emu_launch(k, g, b, 0, args) == 0);
        emu_get(hist, dh, sizeof hist), emu_get(&fs, df, 4), emu_get(&mx, dm, 4), emu_get(&ds, dd, 8);
        CHECK(memcmp(hist, want, sizeof hist) == 0);
        CHECK(fs == 0.5f * N); /* exact: multiples of 0.5 below 2^23 */
        CHECK(mx == wmx);
        CHECK(ds == wds); /* integers below 2^53 */
    }
    emu_free(din), emu_free(dh), emu_free(df), emu_free(dm), emu_free(dd);
}

static void test_half_bf16(void) {
    void *k = sem_kernel("k_half");
    if (!k) return;
    enum { N = 4096 };
    static float x[N], back[N];
    static uint16_t h[N], b[N];
    uint64_t r = 88172645463325252ull;
    for (int i = 0; i < N; i++) { /* magnitudes from 2^-30 (f16 subnormals, zero) to 2^20 (inf) */
        r ^= r << 13, r ^= r >> 7, r ^= r << 17;
        const float m = 1.0f + (float)(r >> 40) / 16777216.0f;
        x[i] = (r & 1 ? -1.0f : 1.0f) * ldexpf(m, (int)((r >> 8) % 51) - 30);
    }
    x[0] = 0.0f, x[1] = NAN, x[2] = 65504.0f, x[3] = 65520.0f, x[4] = 1.00048828125f; /* tie */
    unsigned long long dx = emu_alloc(sizeof x), dh = emu_alloc(sizeof h), db = emu_alloc(sizeof b);
    unsigned long long dbk = emu_alloc(sizeof back);
    emu_put(dx, x, sizeof x);
    int n = N;
    void *args[] = {&dx, &dh, &db, &dbk, &n};
    const unsigned g[3] = {N / 128, 1, 1}, bl[3] = {128, 1, 1};
    CHECK(emu_launch(k, g, bl, 0, args) == 0);
    emu_get(h, dh, sizeof h), emu_get(b, db, sizeof b), emu_get(back, dbk, sizeof back);
    int badh = 0, badb = 0, badk = 0;
    for (int i = 0; i < N; i++) {
        const _Float16 ref = (_Float16)x[i];
        uint16_t hb;
        memcpy(&hb, &ref, 2);
        if (x[i] != x[i]) badh += (h[i] & 0x7fff) <= 0x7c00; /* any NaN */
        else badh += h[i] != hb;
        badb += b[i] != harness_bf16(x[i]);
        uint32_t ub = (uint32_t)harness_bf16(x[i]) << 16;
        float fb;
        memcpy(&fb, &ub, 4);
        const float want = (float)ref + fb;
        badk += !(back[i] == want || (back[i] != back[i] && want != want));
    }
    CHECK_MSG(badh == 0, "%d of %d f16 conversions differ from _Float16", badh, N);
    CHECK_MSG(badb == 0, "%d of %d bf16 conversions differ", badb, N);
    CHECK_MSG(badk == 0, "%d of %d round trips differ", badk, N);
    emu_free(dx), emu_free(dh), emu_free(db), emu_free(dbk);
}

static void test_wmma(void) {
    void *k = sem_kernel("k_wmma");
    if (!k) return;
    uint16_t a[256], b[256];
    float af[256], bf[256], c[256];
    for (int i = 0; i < 256; i++) { /* small multiples of 1/8: every product and sum is exact */
        af[i] = (float)((i * 7) % 17 - 8) / 8.0f;
        bf[i] = (float)((i * 5) % 13 - 6) / 8.0f;
        _Float16 ha = (_Float16)af[i], hb = (_Float16)bf[i];
        memcpy(&a[i], &ha, 2), memcpy(&b[i], &hb, 2);
    }
    unsigned long long da = emu_alloc(sizeof a), db = emu_alloc(sizeof b), dc = emu_alloc(sizeof c);
    emu_put(da, a, sizeof a), emu_put(db, b, sizeof b);
    for (int o = 0; o < 3; o++) {
        set_order(o);
        void *args[] = {&da, &db, &dc};
        const unsigned bl[3] = {32, 1, 1};
        CHECK(emu_launch(k, ONE, bl, 0, args) == 0);
        emu_get(c, dc, sizeof c);
        int bad = 0;
        for (int i = 0; i < 16; i++)
            for (int j = 0; j < 16; j++) {
                float s = 0;
                for (int kk = 0; kk < 16; kk++) s += af[i * 16 + kk] * bf[j * 16 + kk]; /* B col-major */
                bad += c[i * 16 + j] != s;
            }
        CHECK_MSG(bad == 0, "%s: %d of 256 WMMA outputs differ", g_orders[o], bad);
    }
    emu_free(da), emu_free(db), emu_free(dc);
}

static void test_launch_errors(void) {
    static const struct {
        const char *kernel, *msg;
    } cases[] = {{"k_deadlock", "deadlock"},
                 {"k_exited_lane", "has finished"},
                 {"k_assert", "assertion `in[threadIdx.x] != 5' failed"}};
    int in[32];
    for (int i = 0; i < 32; i++) in[i] = i;
    unsigned long long d = emu_alloc(sizeof in);
    emu_put(d, in, sizeof in);
    for (int c = 0; c < 3; c++) {
        void *k = emu_build("semantics.cu", g_sem, cases[c].kernel, NULL);
        CHECK(k != NULL);
        if (!k) continue;
        for (int o = 0; o < 3; o++) {
            set_order(o);
            void *args[] = {&d};
            const unsigned bl[3] = {32, 1, 1};
            const int rc = emu_launch(k, ONE, bl, 0, args);
            CHECK_MSG(rc != 0 && strstr(emu_last_error(), cases[c].msg),
                      "%s (%s): rc %d, message \"%s\"", cases[c].kernel, g_orders[o], rc,
                      emu_last_error());
        }
    }
    emu_free(d);
}

/* ---- part 2: planted bugs -------------------------------------------------------------------- */
/* run planted kernel `name` (plant = 0 correct, 1 buggy) in order o; 1 when the output matches */
typedef int (*plant_case)(void *k, int order);

static int run_missing_barrier(void *k, int o) {
    enum { B = 128, G = 3 };
    float x[B * G], y[B * G];
    for (int i = 0; i < B * G; i++) x[i] = (float)(i % 97) + 1.0f;
    const unsigned g[3] = {G, 1, 1}, b[3] = {B, 1, 1};
    int ok = launch_xy(k, o, x, sizeof x, y, sizeof y, g, b, NULL, NULL);
    for (int i = 0; i < B * G && ok; i++) ok = y[i] == x[(i / B) * B + B - 1 - i % B];
    return ok;
}
static int run_wrong_index(void *k, int o) {
    enum { R = 37, C = 45 };
    float x[R * C], y[R * C];
    for (int i = 0; i < R * C; i++) x[i] = (float)i;
    int rows = R, cols = C;
    const unsigned g[3] = {(C + 15) / 16, (R + 15) / 16, 1}, b[3] = {16, 16, 1};
    int ok = launch_xy(k, o, x, sizeof x, y, sizeof y, g, b, &rows, &cols);
    for (int i = 0; i < R * C && ok; i++) ok = y[i] == 2.0f * x[i];
    return ok;
}
static int run_off_by_one(void *k, int o) {
    enum { N = 1000 };
    float x[N], y[N];
    for (int i = 0; i < N; i++) x[i] = (float)(i % 13);
    int n = N;
    const unsigned g[3] = {(N + 127) / 128, 1, 1}, b[3] = {128, 1, 1};
    int ok = launch_xy(k, o, x, sizeof x, y, sizeof y, g, b, &n, NULL);
    for (int i = 0; i < N && ok; i++) ok = y[i] == x[i] + (i + 1 < N ? x[i + 1] : 0.0f);
    return ok;
}
static int run_race(void *k, int o) {
    enum { B = 128, G = 4 };
    float x[G], y[B * G];
    for (int i = 0; i < G; i++) x[i] = 1.5f + (float)i;
    const unsigned g[3] = {G, 1, 1}, b[3] = {B, 1, 1};
    int ok = launch_xy(k, o, x, sizeof x, y, sizeof y, g, b, NULL, NULL);
    for (int i = 0; i < B * G && ok; i++) ok = y[i] == x[i / B] * (float)(i % B);
    return ok;
}

static int run_reuse_barrier(void *k, int o) {
    enum { B = 256, G = 3 };
    float x[B * G], y[2 * G];
    for (int i = 0; i < B * G; i++) x[i] = (float)(i % 5) - 1.0f; /* small integers: exact sums */
    const unsigned g[3] = {G, 1, 1}, b[3] = {B, 1, 1};
    int ok = launch_xy(k, o, x, sizeof x, y, sizeof y, g, b, NULL, NULL);
    for (int blk = 0; blk < G && ok; blk++) {
        float s1 = 0, s2 = 0;
        for (int i = 0; i < B; i++) s1 += x[blk * B + i], s2 += x[blk * B + i] * x[blk * B + i];
        ok = y[blk] == s1 && y[blk + G] == s2;
    }
    return ok;
}

static int run_block_race(void *k, int o) {
    enum { B = 64, G = 4 };
    float x[B * G], y[B];
    for (int i = 0; i < B * G; i++) x[i] = (float)(i % 9);
    memset(y, 0, sizeof y);
    unsigned long long dx = emu_alloc(sizeof x), dy = emu_alloc(sizeof y);
    emu_put(dx, x, sizeof x), emu_put(dy, y, sizeof y);
    set_order(o);
    void *args[] = {&dx, &dy};
    const unsigned g[3] = {G, 1, 1}, b[3] = {B, 1, 1};
    int ok = emu_launch(k, g, b, 0, args) == 0;
    emu_get(y, dy, sizeof y);
    for (int t = 0; t < B && ok; t++) {
        float s = 0;
        for (int blk = 0; blk < G; blk++) s += x[blk * B + t];
        ok = y[t] == s;
    }
    emu_free(dx), emu_free(dy);
    return ok;
}

/* correct kernel: matches in every order; planted: `caught` says whether some order mismatches */
static void planted(const char *kernel, plant_case run, int expect_caught) {
    void *good = emu_build("planted.cu", g_plant, kernel, NULL);
    void *bad = emu_build("planted.cu", g_plant, kernel, "-DPLANT=1");
    CHECK(good && bad);
    if (!good || !bad) return;
    int caught_in = 0;
    char orders[64] = "";
    for (int o = 0; o < 3; o++) {
        CHECK_MSG(run(good, o), "%s (correct) mismatches in %s order", kernel, g_orders[o]);
        if (!run(bad, o)) {
            caught_in++;
            strcat(orders, " "), strcat(orders, g_orders[o]);
        }
    }
    printf("  %s: planted bug mismatches in %d of 3 orders:%s\n", kernel, caught_in, orders);
    if (expect_caught) CHECK_MSG(caught_in > 0, "%s: planted bug not caught in any order", kernel);
    else CHECK_MSG(caught_in == 0, "%s: expected the comparison to miss this bug", kernel);
}
static void test_planted_missing_barrier(void) { planted("bug_missing_barrier", run_missing_barrier, 1); }
static void test_planted_wrong_index(void) { planted("bug_wrong_index", run_wrong_index, 1); }
/* caught because a warp runs ahead of the others through its shuffles (runtime.c) */
static void test_planted_reuse_barrier(void) { planted("bug_reuse_barrier", run_reuse_barrier, 1); }
static void test_planted_race(void) { planted("bug_race", run_race, 1); }
/* the comparison cannot see it (the value read is unused): emu_sanitize.c's ASan run does */
/* blocks run one after another here: a race between blocks gives the right sum (emu_tsan sees it) */
static void test_planted_block_race_needs_tsan(void) { planted("bug_block_race", run_block_race, 0); }
static void test_planted_off_by_one_needs_asan(void) { planted("bug_off_by_one", run_off_by_one, 0); }

int main(void) {
    emu_open();
    g_sem = slurp("semantics.cu");
    g_plant = slurp("planted.cu");
    RUN(test_warp_ops);
    RUN(test_barrier_reductions);
    RUN(test_shared_and_ids);
    RUN(test_shared_forms);
    RUN(test_atomics);
    RUN(test_half_bf16);
    RUN(test_wmma);
    RUN(test_launch_errors);
    RUN(test_planted_missing_barrier);
    RUN(test_planted_wrong_index);
    RUN(test_planted_race);
    RUN(test_planted_reuse_barrier);
#if defined(__SANITIZE_ADDRESS__)
    /* in an AddressSanitizer build the kernels are built with ASan too (emu_sanitize.c's check),
     * so this planted out-of-bounds read aborts here by design: emu_asan covers it */
    printf("skip test_planted_off_by_one_needs_asan: this build has AddressSanitizer (emu_asan "
           "runs it)\n");
#else
    RUN(test_planted_off_by_one_needs_asan);
#endif
    RUN(test_planted_block_race_needs_tsan);
    free(g_sem), free(g_plant);
    return harness_done();
}
