/* runtime/lua_hyb.c: the `hyb` module table: constructors (lua_tensor.c, lua_model.c), hyb.data
 * (lua_data.c), hyb.optim, and the small functions below (plugins, time, version). */
#include <stdlib.h>
#include <string.h>
#include <unistd.h>

#include "hyb/common.h"
#include "hyb/mixer.h"
#include "hyb/backend.h"
#include "lhyb.h"

/* hyb.plugins() -> { {name=, version=, path=, description=, devices={"cpu", ...}}, ... } */
static int l_plugins(lua_State *L) {
    hyb_plugin_scan();
    int n = hyb_plugin_count();
    lua_createtable(L, n, 0);
    for (int i = 0; i < n; i++) {
        const char *path = NULL;
        const hyb_mixer_desc *d = hyb_plugin_get(i, &path);
        if (!d) continue;
        lua_createtable(L, 0, 5);
        lhyb_set_str(L, "name", d->name ? d->name : "");
        lhyb_set_str(L, "version", d->version ? d->version : "");
        lhyb_set_str(L, "path", path ? path : "");
        lhyb_set_str(L, "description", d->description ? d->description : "");
        lua_createtable(L, 2, 0);
        int k = 0;
        for (int dev = 0; dev < HYB_DEV_COUNT; dev++)
            if (d->kernels[dev].forward) {
                lua_pushstring(L, hyb_device_name((hyb_device)dev));
                lua_rawseti(L, -2, ++k);
            }
        lua_setfield(L, -2, "devices");
        lua_rawseti(L, -2, (lua_Integer)lua_rawlen(L, -2) + 1);
    }
    return 1;
}

/* hyb.devices() -> { {name = "cpu", status = "available ..."}, {name = "cuda", status = ...} } */
static int l_devices(lua_State *L) {
    char name[64], status[512];
    lua_newtable(L);
    for (int i = 0; hyb_backend_describe(i, name, sizeof name, status, sizeof status) == HYB_OK;
         i++) {
        lua_createtable(L, 0, 2);
        lhyb_set_str(L, "name", name);
        lhyb_set_str(L, "status", status);
        lua_rawseti(L, -2, i + 1);
    }
    return 1;
}

/* hyb.device(name) -> the opened backend's name ("cpu", "cuda:0"); raises the one-line reason
 * when the device cannot be used */
static int l_device(lua_State *L) {
    const char *name = luaL_checkstring(L, 1);
    const hyb_backend *be = NULL;
    if (hyb_backend_open(name, &be) != HYB_OK) return lhyb_raise_hyb(L, "hyb.device");
    lua_pushstring(L, be->name);
    return 1;
}

/* hyb.plugin_path() -> the plugin search path (':'-joined) */
static int l_plugin_path(lua_State *L) {
    char buf[8192];
    buf[0] = 0;
    lua_pushstring(L, hyb_plugin_search_path(buf, sizeof buf));
    return 1;
}

/* hyb.time() -> monotonic seconds */
static int l_time(lua_State *L) {
    lua_pushnumber(L, hyb_time_now());
    return 1;
}

/* hyb.isatty("stdout" | "stderr" | "stdin") -> whether that stream is a terminal (progress bars
 * are drawn only there). HYB_TTY=0 / HYB_TTY=1 in the environment overrides the answer (tests). */
static int l_isatty(lua_State *L) {
    static const char *const names[] = {"stdin", "stdout", "stderr", NULL};
    const char *s = luaL_optstring(L, 1, "stdout");
    int fd = -1;
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0) fd = i;
    if (fd < 0)
        return lhyb_error(L, "hyb.isatty: stream must be \"stdin\", \"stdout\" or \"stderr\", got \"%s\"",
                          s);
    const char *ov = getenv("HYB_TTY");
    if (ov && (strcmp(ov, "0") == 0 || strcmp(ov, "1") == 0)) {
        lua_pushboolean(L, ov[0] == '1');
        return 1;
    }
    lua_pushboolean(L, isatty(fd));
    return 1;
}

/* hyb.log_level("debug" | "info" | "warn" | "error") */
static int l_log_level(lua_State *L) {
    static const char *const names[] = {"debug", "info", "warn", "error", NULL};
    const char *s = lhyb_check_string(L, 1, "hyb.log_level", "level");
    for (int i = 0; names[i]; i++)
        if (strcmp(names[i], s) == 0) {
            hyb_log_set_level(i);
            return 0;
        }
    return lhyb_error(L,
                      "hyb.log_level: level must be \"debug\", \"info\", \"warn\" or \"error\", "
                      "got \"%s\"",
                      s);
}

/* hyb.threads([n]) -> the CPU compute threads in force (the caller included); with n, sets them
 * first: n >= 1, or 0 for the default (OMP_NUM_THREADS, else the cores this process may use) */
static int l_threads(lua_State *L) {
    if (!lua_isnoneornil(L, 1)) {
        lua_Integer n = luaL_checkinteger(L, 1);
        if (n < 0 || n > 1024)
            return lhyb_error(L, "hyb.threads: n must be in [0, 1024] (0 = default), got %lld",
                              (long long)n);
        if (hyb_set_threads((int)n) != HYB_OK) return lhyb_error(L, "hyb.threads: %s", hyb_error());
    }
    lua_pushinteger(L, hyb_threads());
    return 1;
}

int luaopen_hyb(lua_State *L) {
    static const luaL_Reg funcs[] = {{"plugins", l_plugins},
                                     {"devices", l_devices},
                                     {"device", l_device},
                                     {"plugin_path", l_plugin_path},
                                     {"time", l_time},
                                     {"isatty", l_isatty},
                                     {"log_level", l_log_level},
                                     {"threads", l_threads},
                                     {NULL, NULL}};
    luaL_newlib(L, funcs);
    lhyb_open_tensor(L);
    lhyb_open_model(L);
    lhyb_open_data(L);
    lhyb_open_generate(L);
    lhyb_open_train(L);
    lhyb_open_bench(L);  /* hyb.bench (lua_bench.c) */
    lhyb_open_engine(L); /* hyb.engine, hyb.plan_memory (lua_engine.c) */
    lhyb_open_serve(L);  /* hyb.serve (lua_serve.c) */
    lhyb_open_comm(L);   /* hyb.comm (lua_comm.c) */
    lhyb_set_str(L, "version", HYB_VERSION);
    return 1;
}

void lhyb_install(lua_State *L) {
    luaL_getsubtable(L, LUA_REGISTRYINDEX, LUA_PRELOAD_TABLE);
    lua_pushcfunction(L, luaopen_hyb);
    lua_setfield(L, -2, "hyb");
    lua_pop(L, 1);
    /* the global: require("hyb") so that both are the same table */
    luaL_requiref(L, "hyb", luaopen_hyb, 1);
    lua_pop(L, 1);
}
