/* runtime/lua_data.c: training data for Lua scripts (hyb.data). All per-element work is here.
 *
 *   local tokens = hyb.data.bytes("examples/data")          -- i32 [N], one id (0..255) per byte
 *   local train, val = hyb.data.split(tokens, 0.9)
 *   local ids, targets = hyb.data.batch(train, 8, 64, step, 1234)   -- i32 [8, 64] each
 *
 * hyb.data.bytes takes a file, a directory (its *.txt files in name order) or a table of files.
 * hyb.data.batch picks B windows of T + 1 tokens at offsets drawn from a generator seeded by
 * (seed, step), so a run is reproducible and a resumed run sees the same batches; targets are the
 * ids shifted by one.
 */
#include <dirent.h>
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>

#include "hyb/common.h"
#include "lhyb.h"

#define NAME_LEN 1024

static int cmp_names(const void *a, const void *b) {
    return strcmp((const char *)a, (const char *)b);
}

/* Push the list of files to read (a Lua table of strings) for the argument at idx. */
static void collect_files(lua_State *L, int idx, const char *F) {
    char buf[96];
    lua_newtable(L);
    int list = lua_gettop(L);
    int n = 0;
    if (lua_type(L, idx) == LUA_TTABLE) {
        lua_Integer len = (lua_Integer)lua_rawlen(L, idx);
        if (len == 0) lhyb_error(L, "%s: the list of files is empty", F);
        for (lua_Integer i = 1; i <= len; i++) {
            lua_rawgeti(L, idx, i);
            if (lua_type(L, -1) != LUA_TSTRING)
                lhyb_error(L, "%s: file %d must be a string, got %s", F, (int)i,
                           lhyb_describe(L, -1, buf, sizeof buf));
            lua_rawseti(L, list, ++n);
        }
        return;
    }
    if (lua_type(L, idx) != LUA_TSTRING)
        lhyb_error(L, "%s: expected a file, a directory or a table of files, got %s", F,
                   lhyb_describe(L, idx, buf, sizeof buf));
    const char *path = lua_tostring(L, idx);
    struct stat st;
    if (stat(path, &st) != 0) lhyb_error(L, "%s: cannot open '%s': %s", F, path, strerror(errno));
    if (!S_ISDIR(st.st_mode)) {
        lua_pushvalue(L, idx);
        lua_rawseti(L, list, 1);
        return;
    }
    /* a directory: its *.txt files, sorted by name */
    DIR *d = opendir(path);
    if (!d) lhyb_error(L, "%s: cannot open directory '%s': %s", F, path, strerror(errno));
    int cap = 0, cnt = 0;
    struct dirent *e;
    while ((e = readdir(d)) != NULL) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] != '.' && len > 4 && strcmp(e->d_name + len - 4, ".txt") == 0) cap++;
    }
    rewinddir(d);
    /* names live in a userdata so a Lua error below cannot leak them (the DIR is closed first) */
    char *names = (char *)lua_newuserdatauv(L, (size_t)(cap > 0 ? cap : 1) * NAME_LEN, 0);
    while ((e = readdir(d)) != NULL && cnt < cap) {
        size_t len = strlen(e->d_name);
        if (e->d_name[0] != '.' && len > 4 && len < NAME_LEN &&
            strcmp(e->d_name + len - 4, ".txt") == 0)
            memcpy(names + (size_t)cnt++ * NAME_LEN, e->d_name, len + 1);
    }
    closedir(d);
    if (cnt == 0) lhyb_error(L, "%s: directory '%s' has no *.txt files", F, path);
    qsort(names, (size_t)cnt, NAME_LEN, cmp_names);
    size_t plen = strlen(path);
    int slash = plen > 0 && path[plen - 1] == '/';
    for (int i = 0; i < cnt; i++) {
        lua_pushfstring(L, "%s%s%s", path, slash ? "" : "/", names + (size_t)i * NAME_LEN);
        lua_rawseti(L, list, ++n);
    }
    lua_pop(L, 1); /* names */
}

/* hyb.data.bytes(path | dir | {paths}) -> i32 tensor [N] of byte values */
static int l_bytes(lua_State *L) {
    const char *F = "hyb.data.bytes";
    collect_files(L, 1, F);
    int list = lua_gettop(L);
    int nfiles = (int)lua_rawlen(L, list);
    int64_t total = 0;
    for (int i = 1; i <= nfiles; i++) {
        lua_rawgeti(L, list, i);
        const char *p = lua_tostring(L, -1);
        struct stat st;
        if (stat(p, &st) != 0)
            return lhyb_error(L, "%s: cannot open '%s': %s", F, p, strerror(errno));
        if (!S_ISREG(st.st_mode)) return lhyb_error(L, "%s: '%s' is not a regular file", F, p);
        total += (int64_t)st.st_size;
        lua_pop(L, 1);
    }
    if (total < 2)
        return lhyb_error(L, "%s: the data holds %lld bytes; at least 2 are needed", F,
                          (long long)total);
    int64_t shape[1] = {total};
    lhyb_tensor *b = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 1, shape), F);
    int32_t *out = (int32_t *)b->t->data;
    int64_t at = 0;
    unsigned char chunk[65536];
    for (int i = 1; i <= nfiles; i++) {
        lua_rawgeti(L, list, i);
        const char *p = lua_tostring(L, -1);
        FILE *f = fopen(p, "rb");
        if (!f) return lhyb_error(L, "%s: cannot open '%s': %s", F, p, strerror(errno));
        size_t got;
        while ((got = fread(chunk, 1, sizeof chunk, f)) > 0) {
            if (at + (int64_t)got > total) {
                fclose(f);
                return lhyb_error(L, "%s: '%s' grew while being read", F, p);
            }
            for (size_t k = 0; k < got; k++)
                out[at + (int64_t)k] = chunk[k];
            at += (int64_t)got;
        }
        int err = ferror(f);
        fclose(f);
        if (err) return lhyb_error(L, "%s: error reading '%s'", F, p);
        lua_pop(L, 1);
    }
    if (at != total) return lhyb_error(L, "%s: the files shrank while being read", F);
    return 1;
}

static hyb_tensor *check_tokens(lua_State *L, int idx, const char *F, int64_t min_n) {
    hyb_tensor *t = lhyb_check_tensor(L, idx, F, "tokens")->t;
    if (t->dtype != HYB_I32 || t->device != HYB_DEV_CPU || !hyb_tensor_is_contiguous(t)) {
        char buf[128];
        lhyb_error(L, "%s: tokens must be a contiguous CPU i32 tensor, got %s", F,
                   hyb_tensor_shape_str(t, buf, sizeof buf));
    }
    if (hyb_tensor_numel(t) < min_n)
        lhyb_error(L, "%s: tokens holds %lld ids; at least %lld are needed", F,
                   (long long)hyb_tensor_numel(t), (long long)min_n);
    return t;
}

/* hyb.data.batch(tokens, B, T, step, seed) -> ids [B, T], targets [B, T] (i32) */
static int l_batch(lua_State *L) {
    const char *F = "hyb.data.batch";
    lua_Integer B = lhyb_check_int(L, 2, F, "B", 1, 1 << 20);
    lua_Integer T = lhyb_check_int(L, 3, F, "T", 1, 1 << 24);
    lua_Integer step = lhyb_check_int(L, 4, F, "step", 0, LUA_MAXINTEGER);
    lua_Integer seed = lhyb_check_int(L, 5, F, "seed", 0, LUA_MAXINTEGER);
    if (B * T > ((lua_Integer)1 << 31) - 1) return lhyb_error(L, "%s: B*T is too large", F);
    hyb_tensor *tok = check_tokens(L, 1, F, T + 1);
    const int32_t *src = (const int32_t *)tok->data;
    int64_t N = hyb_tensor_numel(tok);
    int64_t shape[2] = {B, T};
    lhyb_tensor *ids = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 2, shape), F);
    lhyb_tensor *tgt = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 2, shape), F);
    int32_t *pi = (int32_t *)ids->t->data, *pt = (int32_t *)tgt->t->data;
    hyb_rng r;
    hyb_rng_seed(&r, (uint64_t)seed * 0x9E3779B97F4A7C15ull + (uint64_t)step);
    uint64_t span = (uint64_t)(N - T); /* offsets 0 .. N-T-1 leave room for the shifted target */
    for (lua_Integer b = 0; b < B; b++) {
        int64_t off = (int64_t)(hyb_rng_next(&r) % span);
        memcpy(pi + b * T, src + off, (size_t)T * sizeof(int32_t));
        memcpy(pt + b * T, src + off + 1, (size_t)T * sizeof(int32_t));
    }
    return 2;
}

/* hyb.data.split(tokens, fraction) -> first, rest (copies; fraction of the ids go to the first) */
static int l_split(lua_State *L) {
    const char *F = "hyb.data.split";
    hyb_tensor *tok = check_tokens(L, 1, F, 4);
    double frac = lhyb_check_number(L, 2, F, "fraction");
    if (!(frac > 0 && frac < 1))
        return lhyb_error(L, "%s: fraction must be in (0, 1), got %g", F, frac);
    int64_t N = hyb_tensor_numel(tok);
    int64_t n1 = (int64_t)((double)N * frac);
    if (n1 < 2 || N - n1 < 2)
        return lhyb_error(L, "%s: splitting %lld ids at %g leaves a part with fewer than 2", F,
                          (long long)N, frac);
    int64_t s1[1] = {n1}, s2[1] = {N - n1};
    lhyb_tensor *a = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 1, s1), F);
    lhyb_tensor *b = lhyb_push_owned(L, hyb_tensor_new(HYB_I32, 1, s2), F);
    memcpy(a->t->data, tok->data, (size_t)n1 * sizeof(int32_t));
    memcpy(b->t->data, (const int32_t *)tok->data + n1, (size_t)(N - n1) * sizeof(int32_t));
    return 2;
}

void lhyb_open_data(lua_State *L) {
    static const luaL_Reg funcs[] = {
        {"bytes", l_bytes}, {"batch", l_batch}, {"split", l_split}, {NULL, NULL}};
    luaL_newlib(L, funcs);
    lua_setfield(L, -2, "data");
}
