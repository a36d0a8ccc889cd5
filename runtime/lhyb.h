/* runtime/lhyb.h: the `hyb` Lua module (internal to the hyb executable).
 *
 *   lua_State *L = luaL_newstate();
 *   luaL_openlibs(L);
 *   lhyb_install(L);            // package.preload["hyb"] and the global `hyb`
 *
 * Object model. Every hyb object reachable from Lua is a full userdata with a metatable, __gc and
 * __close:
 *  - hyb.tensor  (lhyb_tensor): either owns a heap tensor, or borrows one that belongs to a model
 *    (a parameter) or to a model's graph (an activation such as the logits of model:forward). A
 *    borrowed tensor keeps its model alive through its user value and remembers the model's
 *    generation counter at the time it was made; when the graph is reset (the next forward) or the
 *    parameters are replaced (swap, close), the counter moves on and the tensor becomes stale:
 *    touching it raises a Lua error instead of reading freed memory.
 *  - hyb.layermap, hyb.model, hyb.loss, hyb.adamw: see lua_model.c.
 * Every C function checks its arguments and raises a Lua error that names the function, the
 * argument and the bad value. Lua never runs per-element loops: batching, comparisons and data
 * loading are C functions.
 */
#ifndef HYB_RUNTIME_LHYB_H
#define HYB_RUNTIME_LHYB_H

#include <lauxlib.h>
#include <lua.h>

#include "hyb/tensor.h"

#define LHYB_TENSOR_MT "hyb.tensor"
#define LHYB_LAYERMAP_MT "hyb.layermap"
#define LHYB_MODEL_MT "hyb.model"
#define LHYB_LOSS_MT "hyb.loss"
#define LHYB_ADAMW_MT "hyb.adamw"

typedef struct lhyb_tensor {
    hyb_tensor *t;        /* NULL once closed */
    int owned;            /* 1: freed with the userdata */
    const uint64_t *genp; /* borrowed: the owner's generation counter (NULL when owned) */
    uint64_t gen;         /* value of *genp when the tensor was handed out */
    const char *what;     /* borrowed: "graph" or "parameter", for the stale message */
} lhyb_tensor;

/* Install the module: package.preload["hyb"] = loader, and the global `hyb`. */
void lhyb_install(lua_State *L);
int luaopen_hyb(lua_State *L);

/* Register sub-modules into the table at the top of the stack. */
void lhyb_open_tensor(lua_State *L);
void lhyb_open_autograd(lua_State *L); /* tensor ops + autodiff (lua_autograd.c) */
/* Grad mode of the tensor ops (hyb.no_grad turns it off); returns the previous mode. */
int lhyb_set_grad_enabled(int on);
/* Layer-map mixer types "lua:<path>" (lua_mixer.c): the resolver over this Lua state. */
void lhyb_open_lua_mixers(lua_State *L);
void lhyb_open_model(lua_State *L);
void lhyb_open_data(lua_State *L);
void lhyb_open_generate(lua_State *L); /* hyb.llm, hyb.sampler (lua_generate.c) */
void lhyb_open_bench(lua_State *L);    /* hyb.bench (lua_bench.c) */
void lhyb_open_engine(lua_State *L);   /* hyb.engine, hyb.plan_memory (lua_engine.c) */
void lhyb_open_train(lua_State *L);    /* hyb.train, hyb.data.dataset/tokenizer (lua_train.c) */
void lhyb_open_comm(lua_State *L);     /* hyb.comm (lua_comm.c) */
void lhyb_open_serve(lua_State *L);    /* hyb.serve (lua_serve.c, serve.c) */

/* A live hyb.model at idx (raises otherwise), and pushing a new hyb.model that takes ownership
 * of m (lua_model.c; used by lua_train.c for clones and loaded checkpoints). */
struct hyb_model;
struct hyb_model *lhyb_check_model(lua_State *L, int idx, const char *fname);
void lhyb_push_model(lua_State *L, struct hyb_model *m, const char *fname);

/* t[key] = v for the table t at the top of the stack. */
void lhyb_set_int(lua_State *L, const char *key, lua_Integer v);
void lhyb_set_str(lua_State *L, const char *key, const char *s);
/* Push a new zeroed userdata of `size` bytes with `nuv` user values and the metatable `mt`. */
void *lhyb_new_object(lua_State *L, size_t size, int nuv, const char *mt);

/* Push a tensor the Lua side owns (freed by __gc). On t == NULL raises "<fname>: <hyb_error()>". */
lhyb_tensor *lhyb_push_owned(lua_State *L, hyb_tensor *t, const char *fname);
/* Push a borrowed tensor; owner_idx is the stack index of the owning userdata (kept alive). */
lhyb_tensor *lhyb_push_borrowed(lua_State *L, hyb_tensor *t, int owner_idx, const uint64_t *genp,
                                const char *what);
/* Check argument `idx` is a live hyb.tensor (not closed, not stale); fname names the caller in
 * the error ("model:forward"), argname the argument ("ids"). */
lhyb_tensor *lhyb_check_tensor(lua_State *L, int idx, const char *fname, const char *argname);
lhyb_tensor *lhyb_test_tensor(lua_State *L, int idx); /* NULL if not a tensor userdata */

/* Argument helpers; each raises "<fname>: <argname> must be ..., got <value>". */
lua_Integer lhyb_check_int(lua_State *L, int idx, const char *fname, const char *argname,
                           lua_Integer lo, lua_Integer hi);
lua_Integer lhyb_opt_int(lua_State *L, int idx, const char *fname, const char *argname,
                         lua_Integer lo, lua_Integer hi, lua_Integer def);
double lhyb_check_number(lua_State *L, int idx, const char *fname, const char *argname);
/* A string argument (lua_type exactly LUA_TSTRING, so numbers are refused). */
const char *lhyb_check_string(lua_State *L, int idx, const char *fname, const char *argname);
/* A userdata with metatable `mt` at idx, else raises "<fname>: expected <what>, got <value>"
 * (what: "a hyb.model"). */
void *lhyb_check_udata(lua_State *L, int idx, const char *mt, const char *fname, const char *what);
/* Check an options table at idx (nil/none allowed: returns 0); errors on keys not in `allowed`
 * (NULL-terminated) so that typos do not pass silently. Returns 1 when a table is present. */
int lhyb_check_opts(lua_State *L, int idx, const char *fname, const char *const *allowed);
/* Field getters for an options table at idx (absent/nil -> def). */
double lhyb_opt_field_number(lua_State *L, int idx, const char *fname, const char *key, double def);
lua_Integer lhyb_opt_field_int(lua_State *L, int idx, const char *fname, const char *key,
                               lua_Integer lo, lua_Integer hi, lua_Integer def);
int lhyb_opt_field_bool(lua_State *L, int idx, const char *fname, const char *key, int def);
const char *lhyb_opt_field_string(lua_State *L, int idx, const char *fname, const char *key,
                                  const char *def);
/* The backend named by the option `device` of the table at idx ("cpu", "cuda", "cuda:N"), opened;
 * NULL when absent (the CPU). A device that cannot be opened raises its one-line reason. */
struct hyb_backend;
const struct hyb_backend *lhyb_opt_device(lua_State *L, int idx, const char *fname);
/* The option `quant` ("off" | "precise" | "fast" | "auto") of the table at idx, for loading a GGUF
 * (hyb_model_load_gguf_ex's quant argument). Given: sets the process-wide mode (hyb/hf.h
 * hyb_quant_mode_set) and returns 0 for off, else 1. Absent: an inference load (inference 1)
 * takes the mode HYB_QUANT chose, else HYB_QUANT_DEFAULT_MODE, and returns 1 unless that is off;
 * a training load (inference 0) returns 0 (f32: trainable). "auto": as absent with inference 1.
 * A bad value raises naming it. */
int lhyb_opt_quant(lua_State *L, int idx, const char *fname, int inference);
/* The option `kv_cache` of the table at idx ("f16", "q8_0", "f32") as a hyb_kv_dtype;
 * HYB_KV_DEFAULT (f16) when absent; another value raises "<fname>: kv_cache: unknown KV cache
 * type 'x' (allowed: f16, q8_0, f32)". */
int lhyb_opt_kv_cache(lua_State *L, int idx, const char *fname);
/* A short description of the value at idx for messages: "-3", "2.5", "string \"x\"", "nil". */
const char *lhyb_describe(lua_State *L, int idx, char *buf, size_t n);

/* Read `n` integer ids from a Lua array or a tensor (i32, or f32 holding integers) at idx into a
 * scratch buffer owned by a new userdata pushed on the stack (garbage-collected). Entries must be
 * in [lo, hi]. Raises on a wrong count, a non-integer or a value out of range. */
int32_t *lhyb_check_ids(lua_State *L, int idx, const char *fname, const char *argname, int64_t n,
                        int64_t lo, int64_t hi);
/* Same for n floats (mask weights). */
float *lhyb_check_floats(lua_State *L, int idx, const char *fname, const char *argname, int64_t n);

/* Raise a Lua error with a printf-style message (C formats: %lld, %g ... which luaL_error does not
 * know), prefixed with the calling script's "file:line: " like luaL_error. Never returns. */
int lhyb_error(lua_State *L, const char *fmt, ...)
#if defined(__GNUC__)
    __attribute__((format(printf, 2, 3)))
#endif
    ;
/* Raise "<fname>: <hyb_error()>" (never returns). */
int lhyb_raise_hyb(lua_State *L, const char *fname);

/* t[k] = v (a number) for the table t on the top of the stack (lua_engine.c; lhyb_set_int and
 * lhyb_set_str above are lua_util.c's). */
void lhyb_set_num(lua_State *L, const char *k, double v);
/* The userdata at idx whose metatable is `mt`; otherwise raise "<fname>: expected a <mt>, got
 * <what it is>" (lua_train.c; used by the classes of lua_train.c, lua_generate.c, lua_engine.c). */
void *lhyb_test_class(lua_State *L, int idx, const char *mt, const char *fname);
/* Register the metatable `mt` of a class (once: nothing happens when it exists; lua_util.c):
 * __index = a table of `methods`, and __gc, __close, __tostring for those not NULL. Leaves the
 * stack as it was. */
void lhyb_register_class(lua_State *L, const char *mt, const luaL_Reg *methods, lua_CFunction gc,
                         lua_CFunction close, lua_CFunction tostring);

/* runtime/repl.c: the interactive prompt over L (hyb installed); returns the exit status. */
int lhyb_repl(lua_State *L);
/* 1 when hyb runs with --verbose / HYB_VERBOSE (errors then carry tracebacks). */
int lhyb_verbose(void);

#endif
