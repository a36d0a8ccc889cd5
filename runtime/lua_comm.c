/* runtime/lua_comm.c: hyb.comm, the process's communicator in Lua (hyb/comm.h,
 * docs/DISTRIBUTED.md). Under `mpirun -np N hyb ...` every rank runs the same script; without a
 * launcher hyb.comm.size() is 1 and every collective returns at once.
 *
 *   hyb.comm.rank(), hyb.comm.size(), hyb.comm.kind()   -- 0-based rank, world size, "single"|"mpi"
 *   hyb.comm.have_mpi()                                   -- built with MPI
 *   hyb.comm.allreduce({x, y, ...}) -> {sum x, sum y, ...} (f64 sums over the ranks)
 *   hyb.comm.broadcast(s, root) -> root's string (s is ignored on the other ranks; may be nil)
 *   hyb.comm.barrier([timeout_s])
 *   hyb.comm.timeout([seconds]) -> the deadline of blocking collectives (sets it when given)
 *   hyb.comm.abort(msg[, code])                           -- end every rank, naming this one
 *   hyb.comm.same_params(model) -> same, hash             -- every rank's parameters bitwise
 *       equal to rank 0's? (FNV-1a 64 of all parameter bytes; hash: this rank's, 16 hex digits)
 *   hyb.comm.bench_allreduce(n[, bucket_mb = 25]) -> seconds: after a barrier, n host floats
 *       summed over the ranks in buckets (two in flight), as a step's gradients are (benchmarks)
 *   hyb.comm.kill()                                       -- tests: SIGKILL this process */
#include <signal.h>
#include <stdio.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/comm.h"
#include "hyb/model.h"
#include "lhyb.h"

static int c_rank(lua_State *L) {
    lua_pushinteger(L, hyb_comm_rank(hyb_comm_world()));
    return 1;
}
static int c_size(lua_State *L) {
    lua_pushinteger(L, hyb_comm_size(hyb_comm_world()));
    return 1;
}
static int c_kind(lua_State *L) {
    lua_pushstring(L, hyb_comm_kind(hyb_comm_world()));
    return 1;
}
static int c_have_mpi(lua_State *L) {
    lua_pushboolean(L, hyb_comm_have_mpi());
    return 1;
}

static int c_allreduce(lua_State *L) {
    const char *F = "hyb.comm.allreduce";
    luaL_checktype(L, 1, LUA_TTABLE);
    lua_Integer n = (lua_Integer)lua_rawlen(L, 1);
    double *v = lua_newuserdatauv(L, sizeof(double) * (size_t)(n > 0 ? n : 1), 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_rawgeti(L, 1, i);
        if (!lua_isnumber(L, -1))
            return lhyb_error(L, "%s: element %d is a %s, not a number", F, (int)i,
                              luaL_typename(L, -1));
        v[i - 1] = lua_tonumber(L, -1);
        lua_pop(L, 1);
    }
    if (hyb_comm_allreduce_f64(hyb_comm_world(), v, (size_t)n) != HYB_OK)
        return lhyb_raise_hyb(L, F);
    lua_createtable(L, (int)n, 0);
    for (lua_Integer i = 1; i <= n; i++) {
        lua_pushnumber(L, v[i - 1]);
        lua_rawseti(L, -2, i);
    }
    return 1;
}

static int c_broadcast(lua_State *L) {
    const char *F = "hyb.comm.broadcast";
    hyb_comm *c = hyb_comm_world();
    lua_Integer root = luaL_optinteger(L, 2, 0);
    if (root < 0 || root >= hyb_comm_size(c))
        return lhyb_error(L, "%s: root %d out of range [0, %d)", F, (int)root, hyb_comm_size(c));
    size_t len = 0;
    const char *s = NULL;
    if (hyb_comm_rank(c) == root) {
        s = luaL_checklstring(L, 1, &len);
    }
    double n = (double)len;
    if (hyb_comm_broadcast(c, &n, sizeof n, (int)root) != HYB_OK) return lhyb_raise_hyb(L, F);
    len = (size_t)n;
    char *buf = lua_newuserdatauv(L, len ? len : 1, 0);
    if (s) memcpy(buf, s, len);
    if (hyb_comm_broadcast(c, buf, len, (int)root) != HYB_OK) return lhyb_raise_hyb(L, F);
    lua_pushlstring(L, buf, len);
    return 1;
}

static int c_barrier(lua_State *L) {
    double to = luaL_optnumber(L, 1, 0);
    if (hyb_comm_barrier(hyb_comm_world(), to) != HYB_OK) return lhyb_raise_hyb(L, "hyb.comm.barrier");
    return 0;
}

static int c_timeout(lua_State *L) {
    hyb_comm *c = hyb_comm_world();
    double old = c->timeout_s;
    if (!lua_isnoneornil(L, 1)) {
        double s = luaL_checknumber(L, 1);
        if (!(s > 0)) return lhyb_error(L, "hyb.comm.timeout: seconds must be > 0, got %g", s);
        hyb_comm_set_timeout(c, s);
    }
    lua_pushnumber(L, old);
    return 1;
}

static int c_abort(lua_State *L) {
    const char *msg = luaL_optstring(L, 1, "aborted");
    int code = (int)luaL_optinteger(L, 2, 1);
    fflush(stdout);
    hyb_comm_abort(hyb_comm_world(), code, msg);
    return 0;
}

static int c_kill(lua_State *L) {
    fflush(stdout);
    fflush(stderr);
    raise(SIGKILL);
    return 0;
}

static int c_same_params(lua_State *L) {
    const char *F = "hyb.comm.same_params";
    hyb_model *m = lhyb_check_model(L, 1, F);
    int np;
    hyb_tensor **p = hyb_model_params(m, &np);
    uint64_t h = 1469598103934665603ull;
    for (int i = 0; i < np; i++) {
        size_t nb = hyb_tensor_nbytes(p[i]);
        unsigned char *buf = malloc(nb ? nb : 1);
        if (!buf) return lhyb_error(L, "%s: out of memory", F);
        if (hyb_tensor_download(p[i], buf) != HYB_OK) {
            free(buf);
            return lhyb_raise_hyb(L, F);
        }
        for (size_t k = 0; k < nb; k++)
            h = (h ^ buf[k]) * 1099511628211ull;
        free(buf);
    }
    hyb_comm *c = hyb_comm_world();
    uint64_t h0 = h;
    if (hyb_comm_broadcast(c, &h0, sizeof h0, 0) != HYB_OK) return lhyb_raise_hyb(L, F);
    double differ = h0 != h;
    if (hyb_comm_allreduce_f64(c, &differ, 1) != HYB_OK) return lhyb_raise_hyb(L, F);
    char hex[17];
    snprintf(hex, sizeof hex, "%016llx", (unsigned long long)h);
    lua_pushboolean(L, differ == 0);
    lua_pushstring(L, hex);
    return 2;
}

static int c_bench_allreduce(lua_State *L) {
    const char *F = "hyb.comm.bench_allreduce";
    lua_Integer n = luaL_checkinteger(L, 1);
    double mb = luaL_optnumber(L, 2, 25);
    if (n < 1 || n > ((lua_Integer)1 << 34) || !(mb > 0 && mb <= 65536))
        return lhyb_error(L, "%s: n %lld must be in [1, 2^34] and bucket_mb %g in (0, 65536]", F,
                          (long long)n, mb);
    float *x = malloc(sizeof(float) * (size_t)n);
    if (!x) return lhyb_error(L, "%s: out of memory (%lld floats)", F, (long long)n);
    for (lua_Integer i = 0; i < n; i++)
        x[i] = 1.0f;
    hyb_comm *c = hyb_comm_world();
    size_t cap = (size_t)(mb * 262144);
    if (cap < 1) cap = 1;
    int rc = hyb_comm_barrier(c, 0);
    double t0 = hyb_time_now();
    hyb_comm_req *fly[2] = {NULL, NULL};
    int nf = 0;
    for (size_t off = 0; rc == HYB_OK && off < (size_t)n; off += cap) {
        size_t k = (size_t)n - off < cap ? (size_t)n - off : cap;
        if (nf == 2) {
            rc = hyb_comm_wait(c, fly[0]);
            fly[0] = fly[1];
            nf = 1;
        }
        if (rc == HYB_OK) rc = hyb_comm_iallreduce_f32(c, x + off, k, &fly[nf++]);
    }
    for (int i = 0; i < nf && rc == HYB_OK; i++)
        rc = hyb_comm_wait(c, fly[i]);
    double dt = hyb_time_now() - t0;
    int ok = rc == HYB_OK && x[0] == (float)hyb_comm_size(c) && x[n - 1] == (float)hyb_comm_size(c);
    free(x);
    if (rc != HYB_OK) return lhyb_raise_hyb(L, F);
    if (!ok) return lhyb_error(L, "%s: wrong sums", F);
    lua_pushnumber(L, dt);
    return 1;
}

void lhyb_open_comm(lua_State *L) {
    static const luaL_Reg funcs[] = {{"rank", c_rank},           {"size", c_size},
                                     {"kind", c_kind},           {"have_mpi", c_have_mpi},
                                     {"allreduce", c_allreduce}, {"broadcast", c_broadcast},
                                     {"barrier", c_barrier},     {"timeout", c_timeout},
                                     {"abort", c_abort},         {"kill", c_kill},
                                     {"same_params", c_same_params},
                                     {"bench_allreduce", c_bench_allreduce},
                                     {NULL, NULL}};
    luaL_newlib(L, funcs);
    lua_setfield(L, -2, "comm");
}
