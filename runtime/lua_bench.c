/* runtime/lua_bench.c: hyb.bench, the hooks scripts/bench_cpu.lua needs to time inference.
 *
 *   local m = hyb.bench.load(path[, {kv_cache = "f16"|"q8_0"|"f32"}])
 *                                           -- a .gguf (or HF dir) model; m:load_s() its load time;
 *                                              its engines store KV caches as kv_cache (f16)
 *   m:prefill(T)                            -- wall and CPU seconds (all threads) for one prefill
 *                                              of T synthetic tokens (+ sampling the next one)
 *   m:decode(B, steps[, ctx])               -- wall and CPU seconds for `steps` decode steps of B
 *                                              sequences (+ sampling), each first prefilled with
 *                                              ctx (default 32) tokens
 * Both go through the generation API (hyb/engine.h), as hyb generate and the engine do.
 *   m:weight_bytes()                        -- bytes of weights read per decode step (f32)
 *   m:kv_bytes_per_token()                  -- bytes of KV cache read per token of context
 *   hyb.bench.mem()                         -- {rss_mb, hwm_mb} from /proc/self/status
 *   hyb.bench.bandwidth([mb])               -- {copy = B/s (memcpy, read + write bytes),
 *                                               read = B/s (all OpenMP threads summing)}
 * Synthetic ids are a fixed pseudo-random sequence so runs are comparable. */
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/stat.h>

#include "hyb/common.h"
#include "hyb/engine.h"
#include "hyb/hf.h"
#include "hyb/model.h"
#include "lhyb.h"

#define LHYB_BENCH_MT "hyb.benchmodel"

typedef struct lbench {
    hyb_model *m;
    double load_s;
    int kv; /* hyb_kv_dtype of the KV caches (option kv_cache) */
} lbench;

static lbench *check_bench(lua_State *L, int idx, const char *fname) {
    lbench *b = (lbench *)luaL_checkudata(L, idx, LHYB_BENCH_MT);
    if (!b->m) luaL_error(L, "%s: the benchmark model is closed", fname);
    return b;
}

/* CPU seconds (user + system, all threads) of the process so far */
static double cpu_seconds(void) {
    struct rusage ru;
    if (getrusage(RUSAGE_SELF, &ru) != 0) return 0;
    return (double)ru.ru_utime.tv_sec + ru.ru_utime.tv_usec * 1e-6 + (double)ru.ru_stime.tv_sec +
           ru.ru_stime.tv_usec * 1e-6;
}

static int32_t *synth_ids(int n, int V, uint32_t seed) {
    int32_t *ids = malloc(sizeof *ids * (size_t)(n > 0 ? n : 1));
    if (!ids) return NULL;
    uint32_t x = seed * 2654435761u + 12345u;
    for (int i = 0; i < n; i++) {
        x ^= x << 13;
        x ^= x >> 17;
        x ^= x << 5;
        ids[i] = (int32_t)(x % (uint32_t)V);
    }
    return ids;
}

/* hyb.bench.load(path[, {quant = "off"|"precise"|"fast", kv_cache = "f16"|"q8_0"|"f32"}])
 * (defaults as hyb.llm) */
static int l_load(lua_State *L) {
    const char *F = "hyb.bench.load";
    static const char *const allowed[] = {"quant", "kv_cache", NULL};
    const char *path = luaL_checkstring(L, 1);
    lhyb_check_opts(L, 2, F, allowed);
    const int quant = lhyb_opt_quant(L, 2, F, 1);
    const int kv = lhyb_opt_kv_cache(L, 2, F);
    lbench *b = (lbench *)lua_newuserdatauv(L, sizeof(lbench), 0);
    memset(b, 0, sizeof *b);
    b->kv = kv;
    luaL_setmetatable(L, LHYB_BENCH_MT);
    struct stat st;
    int dir = stat(path, &st) == 0 && S_ISDIR(st.st_mode);
    double t0 = hyb_time_now();
    int rc = dir ? hyb_model_load_hf_dir(path, &b->m) : hyb_model_load_gguf_ex(path, quant, &b->m);
    b->load_s = hyb_time_now() - t0;
    if (rc != HYB_OK) {
        b->m = NULL;
        return lhyb_raise_hyb(L, F);
    }
    return 1;
}

static int m_load_s(lua_State *L) {
    lua_pushnumber(L, check_bench(L, 1, "bench:load_s")->load_s);
    return 1;
}

/* Both timings run the generation API (hyb/engine.h), the path hyb generate, hyb chat and the
 * engine take: engine steps with their prefill, batched decode and sampling (greedy). */

/* An engine of n_req slots of max_ctx tokens with n_req greedy requests of T synthetic prompt
 * tokens and max_tokens new ones queued. */
static int bench_engine(hyb_model *m, int kv, int n_req, int T, int max_ctx, int max_tokens,
                        uint32_t seed, hyb_engine **out) {
    hyb_engine_opts o = hyb_engine_defaults();
    o.kv_cache = kv;
    o.slots = n_req;
    o.max_ctx = max_ctx;
    hyb_request_params p = hyb_request_defaults();
    p.max_tokens = max_tokens;
    int32_t *ids = synth_ids(n_req * T, m->V, seed);
    if (!ids) return hyb_error_set(HYB_ERR_NOMEM, "out of memory for %d prompts", n_req);
    int rc = hyb_engine_new(m, &o, out);
    for (int i = 0; i < n_req && rc == HYB_OK; i++)
        rc = hyb_engine_submit(*out, ids + (size_t)i * T, T, &p, NULL);
    free(ids);
    return rc;
}

/* Wall and CPU seconds of `steps` engine steps (all of them when steps < 0), pushed. */
static int timed_steps(lua_State *L, const char *F, hyb_engine *e, int steps) {
    double t0 = hyb_time_now(), c0 = cpu_seconds();
    int rc = HYB_OK;
    for (int k = 0; (steps < 0 || k < steps) && hyb_engine_pending(e) && rc == HYB_OK; k++)
        rc = hyb_engine_step(e);
    double dt = hyb_time_now() - t0, dc = cpu_seconds() - c0;
    if (rc == HYB_OK && hyb_engine_pending(e))
        rc = hyb_error_set(HYB_ERR, "%d requests still running after the timed steps",
                           hyb_engine_pending(e));
    hyb_engine_free(e);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_pushnumber(L, dt);
    lua_pushnumber(L, dc);
    return 2;
}

/* bench:prefill(T) -> wall and CPU seconds of the engine step that prefills T synthetic tokens
 * and samples the first new token */
static int m_prefill(lua_State *L) {
    const char *F = "bench:prefill";
    lbench *b = check_bench(L, 1, F);
    int T = (int)lhyb_check_int(L, 2, F, "T", 1, 1 << 20);
    hyb_engine *e = NULL;
    if (bench_engine(b->m, b->kv, 1, T, T + 1, 1, 1, &e) != HYB_OK) {
        hyb_engine_free(e);
        return lhyb_raise_hyb(L, F);
    }
    return timed_steps(L, F, e, -1);
}

/* bench:decode(B, steps[, ctx = 32]) -> wall and CPU seconds of `steps` engine steps, each one
 * batched decode of B sequences (after ctx prompt tokens each) and B greedy samples; the first
 * step (prefill and the first decode) is not counted */
static int m_decode(lua_State *L) {
    const char *F = "bench:decode";
    lbench *b = check_bench(L, 1, F);
    int B = (int)lhyb_check_int(L, 2, F, "B", 1, 4096);
    int steps = (int)lhyb_check_int(L, 3, F, "steps", 1, 1 << 20);
    int ctx = lua_isnoneornil(L, 4) ? 32 : (int)lhyb_check_int(L, 4, F, "ctx", 1, 1 << 20);
    hyb_engine *e = NULL;
    /* max_tokens: one from the prefill, one per decode */
    int rc = bench_engine(b->m, b->kv, B, ctx, ctx + steps + 2, steps + 2, 7, &e);
    if (rc == HYB_OK) rc = hyb_engine_step(e); /* admit, prefill, first decode */
    if (rc != HYB_OK) {
        hyb_engine_free(e);
        return lhyb_raise_hyb(L, F);
    }
    return timed_steps(L, F, e, steps);
}

/* Bytes of f32 weights one decode step reads: every parameter except the embedding table, of
 * which one row per token is read -- unless it is also the (tied) lm_head. */
static int m_weight_bytes(lua_State *L) {
    lbench *b = check_bench(L, 1, "bench:weight_bytes");
    int n = 0;
    hyb_tensor **p = hyb_model_params(b->m, &n);
    int64_t bytes = 0;
    for (int i = 0; i < n; i++) {
        if (p[i] == b->m->embed && b->m->lm_head != b->m->embed)
            bytes += (int64_t)b->m->D * 4;
        else
            bytes += hyb_tensor_numel(p[i]) * 4;
    }
    lua_pushinteger(L, (lua_Integer)bytes);
    return 1;
}

/* Bytes of decode state per sequence and context token: from a kvstate of 1 x 2 tokens minus
 * one of 1 x 1 token (recurrent layers contribute nothing per token). */
static int m_kv_bytes(lua_State *L) {
    const char *F = "bench:kv_bytes_per_token";
    lbench *b = check_bench(L, 1, F);
    hyb_kvstate *s1 = NULL, *s2 = NULL;
    if (hyb_kvstate_new_ex(b->m, 1, 64, b->kv, &s1) != HYB_OK) return lhyb_raise_hyb(L, F);
    if (hyb_kvstate_new_ex(b->m, 1, 128, b->kv, &s2) != HYB_OK) {
        hyb_kvstate_free(s1);
        return lhyb_raise_hyb(L, F);
    }
    lua_pushinteger(L, (lua_Integer)((s2->bytes - s1->bytes) / 64));
    hyb_kvstate_free(s1);
    hyb_kvstate_free(s2);
    return 1;
}

static int m_close(lua_State *L) {
    lbench *b = (lbench *)luaL_checkudata(L, 1, LHYB_BENCH_MT);
    hyb_model_free(b->m);
    b->m = NULL;
    return 0;
}

/* hyb.bench.mem() -> {rss_mb, hwm_mb} */
static int l_mem(lua_State *L) {
    double rss = -1, hwm = -1;
    FILE *f = fopen("/proc/self/status", "r");
    if (f) {
        char line[256];
        long v;
        while (fgets(line, sizeof line, f)) {
            if (sscanf(line, "VmRSS: %ld kB", &v) == 1) rss = v / 1024.0;
            if (sscanf(line, "VmHWM: %ld kB", &v) == 1) hwm = v / 1024.0;
        }
        fclose(f);
    }
    lua_createtable(L, 0, 2);
    lhyb_set_num(L, "rss_mb", rss);
    lhyb_set_num(L, "hwm_mb", hwm);
    return 1;
}

/* hyb.bench.bandwidth([mb = 256]) -> {copy = bytes/s, read = bytes/s}, best of 5 */
static int l_bandwidth(lua_State *L) {
    const char *F = "hyb.bench.bandwidth";
    int mb = lua_isnoneornil(L, 1) ? 256 : (int)lhyb_check_int(L, 1, F, "mb", 1, 1 << 16);
    size_t n = (size_t)mb << 20;
    float *a = malloc(n), *c = malloc(n);
    if (!a || !c) {
        free(a);
        free(c);
        return luaL_error(L, "%s: out of memory for 2 x %d MiB", F, mb);
    }
    memset(a, 1, n);
    memset(c, 0, n);
    double best_copy = 1e30, best_read = 1e30;
    volatile float sink = 0;
    const int64_t nf = (int64_t)(n / sizeof(float));
    for (int r = 0; r < 5; r++) {
        double t0 = hyb_time_now();
        memcpy(c, a, n);
        double t1 = hyb_time_now();
        float acc = 0;
#pragma omp parallel for simd reduction(+ : acc) schedule(static)
        for (int64_t i = 0; i < nf; i++)
            acc += a[i];
        double t2 = hyb_time_now();
        sink += acc + c[r];
        if (t1 - t0 < best_copy) best_copy = t1 - t0;
        if (t2 - t1 < best_read) best_read = t2 - t1;
    }
    (void)sink;
    free(a);
    free(c);
    lua_createtable(L, 0, 2);
    lhyb_set_num(L, "copy", 2.0 * (double)n / best_copy);
    lhyb_set_num(L, "read", (double)n / best_read);
    return 1;
}

void lhyb_open_bench(lua_State *L) {
    static const luaL_Reg methods[] = {{"load_s", m_load_s},
                                       {"prefill", m_prefill},
                                       {"decode", m_decode},
                                       {"weight_bytes", m_weight_bytes},
                                       {"kv_bytes_per_token", m_kv_bytes},
                                       {"close", m_close},
                                       {NULL, NULL}};
    lhyb_register_class(L, LHYB_BENCH_MT, methods, m_close, m_close, NULL);
    static const luaL_Reg funcs[] = {
        {"load", l_load}, {"mem", l_mem}, {"bandwidth", l_bandwidth}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    lua_setfield(L, -2, "bench");
}
