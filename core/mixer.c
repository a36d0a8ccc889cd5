/* core/mixer.c: the host side of the plugin ABI (plugin.h): the service table, the loader and
 * registry of mixer plugins, and runtime mixer instances (mixer.h). */
#include "hyb/mixer.h"

#include <dirent.h>
#include <dlfcn.h>
#include <limits.h>
#include <pthread.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/stat.h>
#include <unistd.h>

#include "backend/cpu/cpu_pool.h"
#include "hyb/backend.h"
#include "hyb/config.h"
#include "io/hf_config.h"

/* ---- host services ----------------------------------------------------------------------------
 */

/* Declares char buf[2048] holding the message of a printf-style host service whose format
 * argument is `fmt` (hyb_log and hyb_error_set take no va_list). */
#define HOST_FORMAT(buf, fmt)                                                                      \
    char buf[2048];                                                                                \
    do {                                                                                           \
        va_list ap_;                                                                               \
        va_start(ap_, fmt);                                                                        \
        vsnprintf(buf, sizeof buf, fmt, ap_);                                                      \
        va_end(ap_);                                                                               \
    } while (0)

static void host_log(int level, const char *fmt, ...) {
    HOST_FORMAT(buf, fmt);
    hyb_log(level, "%s", buf);
}

static int host_error(int code, const char *fmt, ...) {
    HOST_FORMAT(buf, fmt);
    return hyb_error_set(code, "%s", buf);
}

static int host_cfg_error(const hyb_cfg_table *t, const char *key, const char *fmt, ...) {
    va_list ap;
    va_start(ap, fmt);
    int rc = hyb_cfg_verror(t, key, fmt, ap);
    va_end(ap);
    return rc;
}

/* The RNG services keep one 64-bit word of state: it seeds a hyb_rng (splitmix64 -> xoshiro256**)
 * and is replaced by the generator's next output, so consecutive calls give fresh streams. */
static void host_rng_normal(uint64_t *state, float *out, size_t n, float mean, float std) {
    hyb_rng r;
    hyb_rng_seed(&r, *state);
    hyb_rng_fill_normal(&r, out, (int64_t)n, mean, std);
    *state = hyb_rng_next(&r);
}

static void host_rng_uniform(uint64_t *state, float *out, size_t n, float lo, float hi) {
    hyb_rng r;
    hyb_rng_seed(&r, *state);
    hyb_rng_fill_uniform(&r, out, (int64_t)n, lo, hi);
    *state = hyb_rng_next(&r);
}

static const hyb_host HOST = {
    .abi_version = HYB_PLUGIN_ABI_VERSION,
    .struct_size = sizeof(hyb_host),
    .log = host_log,
    .error = host_error,
    .alloc = hyb_malloc,
    .free = hyb_free,
    .cfg_int = hyb_cfg_int,
    .cfg_float = hyb_cfg_float,
    .cfg_bool = hyb_cfg_bool,
    .cfg_string = hyb_cfg_string,
    .cfg_check_keys = hyb_cfg_check_keys,
    .cfg_error = host_cfg_error,
    .rng_normal = host_rng_normal,
    .rng_uniform = host_rng_uniform,
    .json_type = hyb_hfj_type,
    .json_object = hyb_hfj_object,
    .json_int = hyb_hfj_int,
    .json_float = hyb_hfj_float,
    .json_bool = hyb_hfj_bool,
    .json_string = hyb_hfj_string,
    .json_error = hyb_hfj_error,
    .json_set_int = hyb_hfj_set_int,
    .json_set_float = hyb_hfj_set_float,
    .json_set_bool = hyb_hfj_set_bool,
    .json_set_string = hyb_hfj_set_string,
    .json_set_null = hyb_hfj_set_null,
    .json_set_object = hyb_hfj_set_object,
    .toml_int = hyb_toml_put_int,
    .toml_float = hyb_toml_put_float,
    .toml_bool = hyb_toml_put_bool,
    .toml_string = hyb_toml_put_string,
    .parallel_for = hyb_pool_parallel_for,
    .threads = hyb_pool_threads,
};

const hyb_host *hyb_host_services(void) {
    return &HOST;
}

/* ---- registry ---------------------------------------------------------------------------------
 */

#define MAX_PLUGINS 64

typedef struct plugin_entry {
    char path[PATH_MAX];
    void *handle;
    const hyb_mixer_desc *desc;
} plugin_entry;

static plugin_entry g_plugins[MAX_PLUGINS];
static int g_n_plugins;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;

static const plugin_entry *registry_find(const char *name) {
    for (int i = 0; i < g_n_plugins; i++)
        if (strcmp(g_plugins[i].desc->name, name) == 0) return &g_plugins[i];
    return NULL;
}

int hyb_plugin_count(void) {
    pthread_mutex_lock(&g_lock);
    int n = g_n_plugins;
    pthread_mutex_unlock(&g_lock);
    return n;
}

const hyb_mixer_desc *hyb_plugin_get(int i, const char **path) {
    const hyb_mixer_desc *d = NULL;
    pthread_mutex_lock(&g_lock);
    if (i >= 0 && i < g_n_plugins) {
        d = g_plugins[i].desc;
        if (path) *path = g_plugins[i].path;
    }
    pthread_mutex_unlock(&g_lock);
    return d;
}

/* Check a descriptor returned by a plugin's entry point. */
static int validate_desc(const char *path, const hyb_mixer_desc *d) {
    if (d->abi_version != HYB_PLUGIN_ABI_VERSION)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "plugin %s: built for plugin ABI %u, this hyb has ABI %u; rebuild the "
                             "plugin against this hyb's hyb/plugin.h",
                             path, (unsigned)d->abi_version, (unsigned)HYB_PLUGIN_ABI_VERSION);
    if (d->struct_size < sizeof(hyb_mixer_desc))
        return hyb_error_set(
            HYB_ERR_FORMAT,
            "plugin %s: descriptor is %u bytes, this hyb needs at least %zu (ABI %u)", path,
            (unsigned)d->struct_size, sizeof(hyb_mixer_desc), (unsigned)HYB_PLUGIN_ABI_VERSION);
    if (!d->name || !d->name[0] || strlen(d->name) >= 64)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "plugin %s: descriptor has no name (or one of 64+ characters)", path);
    for (const char *c = d->name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-'))
            return hyb_error_set(HYB_ERR_FORMAT,
                                 "plugin %s: mixer name '%s' may only use [a-z0-9_-]", path,
                                 d->name);
    if (!d->hf_prefix)
        return hyb_error_set(HYB_ERR_FORMAT, "plugin %s (mixer '%s'): hf_prefix is NULL", path,
                             d->name);
    struct {
        const char *name;
        const void *fn;
    } req[] = {
        {"create", (const void *)d->create},
        {"destroy", (const void *)d->destroy},
        {"describe", (const void *)d->describe},
        {"n_params", (const void *)d->n_params},
        {"param_decl", (const void *)d->param_decl},
        {"saved_bytes", (const void *)d->saved_bytes},
        {"state_bytes", (const void *)d->state_bytes},
    };
    for (size_t i = 0; i < sizeof req / sizeof req[0]; i++)
        if (!req[i].fn)
            return hyb_error_set(HYB_ERR_FORMAT,
                                 "plugin %s (mixer '%s'): required vtable entry '%s' is NULL", path,
                                 d->name, req[i].name);
    /* kernels: a device with a forward needs a decode too; at least one device */
    int n_dev = 0;
    for (int dev = 0; dev < HYB_PLUGIN_MAX_DEVICES; dev++) {
        const hyb_mixer_kernels *k = &d->kernels[dev];
        if (!k->forward && !k->backward && !k->decode) continue;
        const char *dn = dev < HYB_DEV_COUNT ? hyb_device_name((hyb_device)dev) : "reserved";
        if (!k->forward || !k->decode)
            return hyb_error_set(HYB_ERR_FORMAT,
                                 "plugin %s (mixer '%s'): required vtable entry '%s' is NULL "
                                 "(kernels[%s])",
                                 path, d->name, !k->forward ? "forward" : "decode", dn);
        n_dev++;
    }
    if (!n_dev)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "plugin %s (mixer '%s'): no device has kernels (kernels[HYB_DEV_CPU] "
                             "and the rest are all NULL)",
                             path, d->name);
    if (!!d->state_snapshot != !!d->state_restore)
        return hyb_error_set(
            HYB_ERR_FORMAT,
            "plugin %s (mixer '%s'): state_snapshot and state_restore must be both "
            "set or both NULL",
            path, d->name);
    if (!!d->state_snapshot_kv != !!d->state_restore_kv ||
        (d->state_snapshot_kv && !d->state_bytes_kv))
        return hyb_error_set(HYB_ERR_FORMAT,
                             "plugin %s (mixer '%s'): state_snapshot_kv and state_restore_kv must "
                             "be both set or both NULL, and need state_bytes_kv",
                             path, d->name);
    if (!!d->hf_export != !!d->hf_import)
        return hyb_error_set(HYB_ERR_FORMAT,
                             "plugin %s (mixer '%s'): hf_export and hf_import must be both set or "
                             "both NULL",
                             path, d->name);
    if (d->hf_layer_type && (!d->hf_layer_type[0] || strlen(d->hf_layer_type) >= 16 ||
                             !strcmp(d->hf_layer_type, "i") || !d->hf_import))
        return hyb_error_set(HYB_ERR_FORMAT,
                             "plugin %s (mixer '%s'): hf_layer_type '%s' must be 1-15 characters, "
                             "not \"i\" (identity), and needs the hf hooks",
                             path, d->name, d->hf_layer_type);
    return HYB_OK;
}

int hyb_plugin_load_file(const char *path, const hyb_mixer_desc **out) {
    if (out) *out = NULL;
    if (!path || !path[0]) return hyb_error_set(HYB_ERR_ARG, "hyb_plugin_load_file: empty path");
    char real[PATH_MAX];
    if (!realpath(path, real)) return hyb_error_set(HYB_ERR_IO, "plugin %s: no such file", path);
    pthread_mutex_lock(&g_lock);
    int rc = HYB_OK;
    for (int i = 0; i < g_n_plugins; i++)
        if (strcmp(g_plugins[i].path, real) == 0) { /* already loaded: same descriptor */
            if (out) *out = g_plugins[i].desc;
            goto done;
        }
    if (g_n_plugins >= MAX_PLUGINS) {
        rc = hyb_error_set(HYB_ERR, "plugin %s: too many plugins loaded (max %d)", path,
                           MAX_PLUGINS);
        goto done;
    }
    dlerror();
    void *h = dlopen(real, RTLD_NOW | RTLD_LOCAL);
    if (!h) {
        const char *e = dlerror();
        rc = hyb_error_set(HYB_ERR_IO, "plugin %s: cannot load: %s", path, e ? e : "dlopen failed");
        goto done;
    }
    hyb_plugin_entry_fn entry;
    *(void **)&entry = dlsym(h, HYB_PLUGIN_ENTRY_SYMBOL);
    if (!entry) {
        dlclose(h);
        rc = hyb_error_set(HYB_ERR_FORMAT,
                           "plugin %s: no entry symbol '%s' (not a hyb mixer plugin, or the symbol "
                           "is not exported: declare it HYB_PLUGIN_EXPORT and extern \"C\")",
                           path, HYB_PLUGIN_ENTRY_SYMBOL);
        goto done;
    }
    hyb_error_clear();
    const hyb_mixer_desc *d = entry(&HOST);
    if (!d) {
        char why[1024];
        snprintf(why, sizeof why, "%s", hyb_error());
        dlclose(h);
        rc = hyb_error_set(HYB_ERR_FORMAT,
                           "plugin %s: %s returned NULL (it refused this host, plugin "
                           "ABI %u)%s%s",
                           path, HYB_PLUGIN_ENTRY_SYMBOL, (unsigned)HYB_PLUGIN_ABI_VERSION,
                           why[0] ? ": " : "", why);
        goto done;
    }
    if ((rc = validate_desc(path, d)) != HYB_OK) {
        dlclose(h);
        goto done;
    }
    const plugin_entry *dup = registry_find(d->name);
    if (dup) {
        rc = hyb_error_set(HYB_ERR_FORMAT, "plugin %s: mixer '%s' is already registered from %s",
                           path, d->name, dup->path);
        dlclose(h);
        goto done;
    }
    plugin_entry *e = &g_plugins[g_n_plugins++];
    snprintf(e->path, sizeof e->path, "%s", real);
    e->handle = h;
    e->desc = d;
    if (out) *out = d;
    hyb_log(HYB_LOG_DEBUG, "plugin %s: mixer '%s' %s", real, d->name, d->version ? d->version : "");
done:
    pthread_mutex_unlock(&g_lock);
    return rc;
}

/* ---- search path ------------------------------------------------------------------------------
 */

#define MAX_DIRS 32

typedef struct dir_list {
    int n;
    char dir[MAX_DIRS][PATH_MAX];
} dir_list;

static void dirs_add(dir_list *l, const char *d, size_t len) {
    if (len == 0 || len >= PATH_MAX || l->n >= MAX_DIRS) return;
    char tmp[PATH_MAX];
    memcpy(tmp, d, len);
    tmp[len] = 0;
    while (len > 1 && tmp[len - 1] == '/')
        tmp[--len] = 0;
    for (int i = 0; i < l->n; i++)
        if (strcmp(l->dir[i], tmp) == 0) return;
    snprintf(l->dir[l->n++], PATH_MAX, "%s", tmp);
}

/* $HYB_PLUGIN_PATH entries, the executable's directory and its ../lib/hyb, the build tree. */
static void search_dirs(dir_list *l) {
    l->n = 0;
    const char *env = getenv("HYB_PLUGIN_PATH");
    if (env) {
        const char *p = env;
        while (*p) {
            const char *c = strchr(p, ':');
            size_t len = c ? (size_t)(c - p) : strlen(p);
            dirs_add(l, p, len);
            p += len;
            if (*p == ':') p++;
        }
    }
    char exe[PATH_MAX];
    ssize_t n = readlink("/proc/self/exe", exe, sizeof exe - 1);
    if (n > 0) {
        exe[n] = 0;
        char *slash = strrchr(exe, '/');
        if (slash) {
            *slash = 0;
            dirs_add(l, exe, strlen(exe));
            /* <prefix>/bin/hyb -> <prefix>/lib/hyb */
            char lib[PATH_MAX + 16];
            char *up = strrchr(exe, '/');
            if (up) {
                *up = 0;
                snprintf(lib, sizeof lib, "%s/lib/hyb", exe[0] ? exe : "");
                dirs_add(l, lib, strlen(lib));
            }
        }
    }
#ifdef HYB_BUILD_PLUGIN_DIR
    dirs_add(l, HYB_BUILD_PLUGIN_DIR, strlen(HYB_BUILD_PLUGIN_DIR));
#endif
}

const char *hyb_plugin_search_path(char *buf, size_t n) {
    dir_list l;
    search_dirs(&l);
    size_t used = 0;
    if (n) buf[0] = 0;
    for (int i = 0; i < l.n && used < n; i++) {
        int w = snprintf(buf + used, n - used, "%s%s", i ? ":" : "", l.dir[i]);
        if (w < 0) break;
        used += (size_t)w;
    }
    return buf;
}

static int is_file(const char *p) {
    struct stat st;
    return stat(p, &st) == 0 && S_ISREG(st.st_mode);
}

/* The mixer name of a file called libhyb-<name>.so, or 0. */
static int plugin_file_name(const char *fname, char *name, size_t n) {
    size_t len = strlen(fname);
    if (len <= 10 || strncmp(fname, "libhyb-", 7) != 0 || strcmp(fname + len - 3, ".so") != 0)
        return 0;
    size_t nl = len - 10;
    if (nl >= n) return 0;
    memcpy(name, fname + 7, nl);
    name[nl] = 0;
    return 1;
}

/* Append ", name" for each mixer name known (registered or present as a file on the path). */
static void known_mixers(const dir_list *l, char *buf, size_t n) {
    size_t used = 0;
    char names[128][64];
    int nn = 0;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_n_plugins && nn < 128; i++)
        snprintf(names[nn++], 64, "%s", g_plugins[i].desc->name);
    pthread_mutex_unlock(&g_lock);
    for (int i = 0; i < l->n; i++) {
        DIR *d = opendir(l->dir[i]);
        if (!d) continue;
        struct dirent *de;
        while ((de = readdir(d)) && nn < 128) {
            char nm[64];
            if (!plugin_file_name(de->d_name, nm, sizeof nm)) continue;
            int seen = 0;
            for (int k = 0; k < nn; k++)
                seen |= strcmp(names[k], nm) == 0;
            if (!seen) snprintf(names[nn++], 64, "%s", nm);
        }
        closedir(d);
    }
    buf[0] = 0;
    for (int k = 0; k < nn && used < n; k++) {
        int w = snprintf(buf + used, n - used, "%s%s", k ? ", " : "", names[k]);
        if (w < 0) break;
        used += (size_t)w;
    }
    if (nn == 0) snprintf(buf, n, "(none)");
}

static char g_resolver_prefix[16];
static hyb_plugin_resolver g_resolver;

void hyb_plugin_set_resolver(const char *prefix, hyb_plugin_resolver fn) {
    pthread_mutex_lock(&g_lock);
    snprintf(g_resolver_prefix, sizeof g_resolver_prefix, "%s", prefix ? prefix : "");
    g_resolver = prefix && prefix[0] ? fn : NULL;
    pthread_mutex_unlock(&g_lock);
}

int hyb_plugin_find(const char *name, const hyb_mixer_desc **out) {
    if (out) *out = NULL;
    if (!name || !name[0]) return hyb_error_set(HYB_ERR_ARG, "hyb_plugin_find: empty mixer name");
    pthread_mutex_lock(&g_lock);
    hyb_plugin_resolver res = g_resolver;
    size_t plen = strlen(g_resolver_prefix);
    int match = res && strncmp(name, g_resolver_prefix, plen) == 0;
    pthread_mutex_unlock(&g_lock);
    if (match) return res(name, out);
    if (strncmp(name, "lua:", 4) == 0)
        return hyb_error_set(HYB_ERR_UNSUPPORTED,
                             "mixer type '%s': Lua-defined mixers need the hyb executable (its "
                             "Lua runtime), not libhyb alone",
                             name);
    for (const char *c = name; *c; c++)
        if (!((*c >= 'a' && *c <= 'z') || (*c >= '0' && *c <= '9') || *c == '_' || *c == '-') ||
            c - name >= 63)
            return hyb_error_set(HYB_ERR_ARG,
                                 "bad mixer type '%.80s': a mixer type is 1-63 characters "
                                 "of [a-z0-9_-]",
                                 name);
    pthread_mutex_lock(&g_lock);
    const plugin_entry *e = registry_find(name);
    const hyb_mixer_desc *found = e ? e->desc : NULL;
    pthread_mutex_unlock(&g_lock);
    if (found) {
        if (out) *out = found;
        return HYB_OK;
    }
    dir_list l;
    search_dirs(&l);
    for (int i = 0; i < l.n; i++) {
        char p[PATH_MAX + 80];
        snprintf(p, sizeof p, "%s/libhyb-%s.so", l.dir[i], name);
        if (!is_file(p)) continue;
        const hyb_mixer_desc *d;
        HYB_TRY(hyb_plugin_load_file(p, &d));
        if (strcmp(d->name, name) != 0)
            return hyb_error_set(HYB_ERR_FORMAT,
                                 "plugin %s: file name says mixer '%s' but it "
                                 "registers '%s'",
                                 p, name, d->name);
        if (out) *out = d;
        return HYB_OK;
    }
    char path[4096], known[2048];
    hyb_plugin_search_path(path, sizeof path);
    known_mixers(&l, known, sizeof known);
    return hyb_error_set(HYB_ERR_NOTFOUND,
                         "unknown mixer type '%s': no libhyb-%s.so in the plugin search path %s "
                         "(set HYB_PLUGIN_PATH to add directories); known mixers: %s",
                         name, name, path[0] ? path : "(empty)", known);
}

int hyb_plugin_scan(void) {
    dir_list l;
    search_dirs(&l);
    int count = 0;
    const hyb_mixer_desc *seen[MAX_PLUGINS];
    for (int i = 0; i < l.n; i++) {
        DIR *d = opendir(l.dir[i]);
        if (!d) continue;
        struct dirent *de;
        while ((de = readdir(d))) {
            char nm[64], p[PATH_MAX + 300];
            if (!plugin_file_name(de->d_name, nm, sizeof nm)) continue;
            snprintf(p, sizeof p, "%s/%s", l.dir[i], de->d_name);
            if (!is_file(p)) continue;
            const hyb_mixer_desc *desc;
            if (hyb_plugin_load_file(p, &desc) == HYB_OK) {
                int dup = 0; /* the same file reached through two spellings of a directory */
                for (int k = 0; k < count; k++)
                    dup |= seen[k] == desc;
                if (!dup && count < MAX_PLUGINS) seen[count++] = desc;
            } else
                hyb_log(HYB_LOG_WARN, "%s", hyb_error());
        }
        closedir(d);
    }
    return count;
}

/* ---- mixer instances --------------------------------------------------------------------------
 */

/* A distinct, reproducible stream per (seed, layer, parameter). */
static uint64_t mix_seed(uint64_t seed, int layer, int i) {
    uint64_t z = seed ^ (0x9E3779B97F4A7C15ull * (uint64_t)(layer + 1)) ^
                 (0xBF58476D1CE4E5B9ull * (uint64_t)(i + 1));
    z = (z ^ (z >> 30)) * 0xBF58476D1CE4E5B9ull;
    z = (z ^ (z >> 27)) * 0x94D049BB133111EBull;
    return z ^ (z >> 31);
}

static int apply_init(hyb_tensor *t, const hyb_param_decl *d, uint64_t stream) {
    float *p = hyb_tensor_f32(t);
    int64_t n = hyb_tensor_numel(t);
    hyb_rng r;
    hyb_rng_seed(&r, stream);
    switch (d->init) {
    case HYB_INIT_ZEROS:
        memset(p, 0, (size_t)n * sizeof(float));
        break;
    case HYB_INIT_ONES:
        for (int64_t i = 0; i < n; i++)
            p[i] = 1.0f;
        break;
    case HYB_INIT_NORMAL:
        hyb_rng_fill_normal(&r, p, n, 0.0f, d->init_a);
        break;
    case HYB_INIT_UNIFORM:
        hyb_rng_fill_uniform(&r, p, n, -d->init_a, d->init_a);
        break;
    case HYB_INIT_CUSTOM:
        memset(p, 0, (size_t)n * sizeof(float));
        break;
    default:
        return hyb_error_set(HYB_ERR_FORMAT, "parameter %s: unknown init kind %d", t->name,
                             d->init);
    }
    return HYB_OK;
}

int hyb_mixer_new(const char *type, const hyb_model_dims *dims, const hyb_cfg_table *cfg,
                  uint64_t seed, hyb_mixer **out) {
    return hyb_mixer_new_ex(type, dims, cfg, seed, 0, out);
}

int hyb_mixer_new_ex(const char *type, const hyb_model_dims *dims, const hyb_cfg_table *cfg,
                     uint64_t seed, unsigned flags, hyb_mixer **out) {
    *out = NULL;
    if (!dims) return hyb_error_set(HYB_ERR_ARG, "hyb_mixer_new: dims is NULL");
    const hyb_mixer_desc *d;
    HYB_TRY(hyb_plugin_find(type, &d));
    hyb_mixer *m = hyb_malloc(sizeof *m);
    if (!m) return HYB_ERR_NOMEM;
    m->desc = d;
    m->dims = *dims;
    snprintf(m->type, sizeof m->type, "%s", d->name);
    int rc;
    hyb_error_clear();
    if ((rc = d->create(dims, cfg, &m->self)) != HYB_OK) {
        if (!hyb_error()[0])
            hyb_error_set(rc, "mixer '%s' (layer %d): create failed", type, dims->layer);
        m->self = NULL;
        goto fail;
    }
    int np = d->n_params(m->self);
    if (np < 0 || np > 1024) {
        rc = hyb_error_set(HYB_ERR_FORMAT, "mixer '%s': n_params returned %d", type, np);
        goto fail;
    }
    m->n_params = np;
    m->decls = hyb_malloc(sizeof(hyb_param_decl) * (size_t)(np ? np : 1));
    m->params = hyb_malloc(sizeof(hyb_tensor *) * (size_t)(np ? np : 1));
    if (!m->decls || !m->params) {
        rc = HYB_ERR_NOMEM;
        goto fail;
    }
    for (int i = 0; i < np; i++) {
        hyb_param_decl *pd = &m->decls[i];
        if ((rc = d->param_decl(m->self, i, pd)) != HYB_OK) goto fail;
        pd->name[sizeof pd->name - 1] = 0;
        if (pd->ndim < 1 || pd->ndim > 4) {
            rc = hyb_error_set(HYB_ERR_FORMAT, "mixer '%s': parameter %d (%s) has ndim %d", type, i,
                               pd->name, pd->ndim);
            goto fail;
        }
        for (int k = 0; k < i; k++)
            if (strcmp(m->decls[k].name, pd->name) == 0) {
                rc = hyb_error_set(HYB_ERR_FORMAT, "mixer '%s': parameter name '%s' declared twice",
                                   type, pd->name);
                goto fail;
            }
        hyb_tensor *t = (flags & HYB_MIXER_NO_DATA) ? hyb_param_no_data(HYB_F32, pd->ndim, pd->shape)
                                                    : hyb_tensor_new(HYB_F32, pd->ndim, pd->shape);
        if (!t) {
            rc = hyb_error_wrap(HYB_ERR_ARG, "mixer '%s' parameter %s", type, pd->name);
            goto fail;
        }
        m->params[i] = t;
        snprintf(t->name, sizeof t->name, "%s%s%s", d->hf_prefix, d->hf_prefix[0] ? "." : "",
                 pd->name);
        t->requires_grad = 1;
        t->owner = HYB_OWN_PARAM;
        if (!(flags & HYB_MIXER_LAZY_GRAD) && (rc = hyb_tensor_grad_ensure(t)) != HYB_OK) goto fail;
        if (!(flags & (HYB_MIXER_NO_INIT | HYB_MIXER_NO_DATA)) &&
            (rc = apply_init(t, pd, mix_seed(seed, dims->layer, i))) != HYB_OK)
            goto fail;
    }
    if (d->init_params && !(flags & (HYB_MIXER_NO_INIT | HYB_MIXER_NO_DATA))) {
        float **pp = hyb_malloc(sizeof(float *) * (size_t)(np ? np : 1));
        if (!pp) {
            rc = HYB_ERR_NOMEM;
            goto fail;
        }
        for (int i = 0; i < np; i++)
            pp[i] = hyb_tensor_f32(m->params[i]);
        rc = d->init_params(m->self, pp, mix_seed(seed, dims->layer, -1));
        hyb_free(pp);
        if (rc != HYB_OK) goto fail;
    }
    *out = m;
    return HYB_OK;
fail:
    hyb_mixer_free(m);
    return rc;
}

void hyb_mixer_free(hyb_mixer *m) {
    if (!m) return;
    if (m->params)
        for (int i = 0; i < m->n_params; i++)
            if (m->params[i]) {
                hyb_tensor_free(m->params[i]->grad);
                m->params[i]->grad = NULL;
                hyb_tensor_free(m->params[i]);
            }
    hyb_free(m->params);
    hyb_free(m->decls);
    if (m->self && m->desc->destroy) m->desc->destroy(m->self);
    hyb_free(m);
}

size_t hyb_mixer_state_bytes(const hyb_mixer *m, int max_ctx) {
    return hyb_mixer_state_bytes_kv(m, max_ctx, HYB_KV_F32);
}

size_t hyb_mixer_state_bytes_kv(const hyb_mixer *m, int max_ctx, int kv) {
    if (m->desc->state_bytes_kv) return m->desc->state_bytes_kv(m->self, max_ctx, kv);
    return m->desc->state_bytes(m->self, max_ctx);
}

static const char *const KV_NAMES[HYB_KV_COUNT] = {"f32", "f16", "q8_0"};

const char *hyb_kv_dtype_name(int kv) {
    return kv >= 0 && kv < HYB_KV_COUNT ? KV_NAMES[kv] : NULL;
}

int hyb_kv_dtype_parse(const char *s, const char *what, int *out) {
    for (int k = 0; s && k < HYB_KV_COUNT; k++)
        if (!strcmp(s, KV_NAMES[k])) {
            *out = k;
            return HYB_OK;
        }
    return hyb_error_set(HYB_ERR_ARG, "%s: unknown KV cache type '%s' (allowed: f16, q8_0, f32)",
                         what ? what : "kv_cache", s ? s : "(null)");
}

/* Parameter pointers in declaration order into a caller buffer (small: stack for <= 64). */
static const float **param_ptrs(const hyb_mixer *m, const float **stack, int cap) {
    const float **p =
        m->n_params <= cap ? stack : hyb_malloc(sizeof(float *) * (size_t)m->n_params);
    if (!p) return NULL;
    for (int i = 0; i < m->n_params; i++)
        p[i] = (const float *)m->params[i]->data; /* f32, or GGUF blocks (param_dtypes) */
    return p;
}

/* The device its parameters live on (the CPU for a mixer without parameters). */
static hyb_device mixer_device(const hyb_mixer *m) {
    return m->n_params > 0 ? m->params[0]->device : HYB_DEV_CPU;
}

static const char *op_name(hyb_mixer_op op) {
    return op == HYB_MIXER_FORWARD ? "forward" : op == HYB_MIXER_BACKWARD ? "backward" : "decode";
}

int hyb_mixer_kernel_check(const hyb_mixer *m, hyb_device dev, hyb_mixer_op op) {
    const hyb_mixer_kernels *k =
        (int)dev >= 0 && (int)dev < HYB_PLUGIN_MAX_DEVICES ? &m->desc->kernels[dev] : NULL;
    const void *fn = !k                         ? NULL
                     : op == HYB_MIXER_FORWARD  ? (const void *)k->forward
                     : op == HYB_MIXER_BACKWARD ? (const void *)k->backward
                                                : (const void *)k->decode;
    if (fn) return HYB_OK;
    char have[128];
    size_t used = 0;
    have[0] = 0;
    for (int d = 0; d < HYB_DEV_COUNT && used < sizeof have; d++)
        if (m->desc->kernels[d].forward)
            used += (size_t)snprintf(have + used, sizeof have - used, "%s%s", used ? ", " : "",
                                     hyb_device_name((hyb_device)d));
    return hyb_error_set(HYB_ERR_UNSUPPORTED,
                         "mixer '%s' (layer %d) has no %s kernel for device %s (its plugin has "
                         "kernels for: %s)",
                         m->type, m->dims.layer, op_name(op), hyb_device_name(dev),
                         have[0] ? have : "no device");
}

int hyb_mixer_decode(hyb_mixer *m, const float *x, float *y, int n, void *const *states,
                     const int32_t *pos, int max_ctx) {
    return hyb_mixer_decode_kv(m, x, y, n, states, pos, max_ctx, HYB_KV_F32);
}

int hyb_mixer_decode_kv(hyb_mixer *m, const float *x, float *y, int n, void *const *states,
                        const int32_t *pos, int max_ctx, int kv) {
    if (n <= 0 || !x || !y || !states || !pos || max_ctx <= 0)
        return hyb_error_set(
            HYB_ERR_ARG, "mixer '%s' (layer %d): decode with n = %d, max_ctx = %d%s", m->type,
            m->dims.layer, n, max_ctx, (!x || !y || !states || !pos) ? " and a NULL buffer" : "");
    const hyb_device dev = mixer_device(m);
    HYB_TRY(hyb_mixer_kernel_check(m, dev, HYB_MIXER_DECODE));
    const hyb_backend *be = hyb_backend_get(dev);
    if (!be)
        return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "mixer '%s' (layer %d) decode", m->type,
                              m->dims.layer);
    const float *stack[64];
    int dstack[64];
    const float **pp = param_ptrs(m, stack, 64);
    int *dt = m->n_params <= 64 ? dstack : hyb_malloc(sizeof(int) * (size_t)m->n_params);
    if (!pp || !dt) {
        if (pp && pp != stack) hyb_free((void *)pp);
        if (dt && dt != dstack) hyb_free(dt);
        return HYB_ERR_NOMEM;
    }
    for (int i = 0; i < m->n_params; i++)
        dt[i] = (int)m->params[i]->dtype;
    hyb_mixer_dec a = {.n = n,
                       .param_dtypes = dt,
                       .be = be,
                       .x = x,
                       .y = y,
                       .params = pp,
                       .states = states,
                       .pos = pos,
                       .max_ctx = max_ctx,
                       .kv = kv};
    int rc = m->desc->kernels[dev].decode(m->self, &a);
    if (pp != stack) hyb_free((void *)pp);
    if (dt != dstack) hyb_free(dt);
    return rc;
}

int hyb_mixer_move(hyb_mixer *m, const hyb_backend *be) {
    HYB_TRY(hyb_mixer_kernel_check(m, be->device, HYB_MIXER_FORWARD));
    HYB_TRY(hyb_mixer_kernel_check(m, be->device, HYB_MIXER_DECODE));
    for (int i = 0; i < m->n_params; i++)
        if (m->params[i]->dtype != HYB_F32 && be->device != HYB_DEV_CPU)
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "mixer '%s' (layer %d): parameter '%s' is quantized (%s), which "
                                 "computes on the CPU only; load the model with quant = off "
                                 "(--quant off) to run it on %s",
                                 m->type, m->dims.layer, m->decls[i].name,
                                 hyb_dtype_name(m->params[i]->dtype), be->name);
    for (int i = 0; i < m->n_params; i++) {
        int rc = hyb_tensor_move(m->params[i], be);
        if (rc != HYB_OK)
            return hyb_error_wrap(rc, "mixer '%s' (layer %d): parameter '%s' to %s", m->type,
                                  m->dims.layer, m->decls[i].name, be->name);
    }
    return HYB_OK;
}

const hyb_backend *hyb_mixer_backend(const hyb_mixer *m) {
    return hyb_backend_get(mixer_device(m));
}

int64_t hyb_mixer_state_snapshot(const hyb_mixer *m, const void *state, int pos, int max_ctx,
                                 void *dst) {
    return hyb_mixer_state_snapshot_kv(m, state, pos, max_ctx, HYB_KV_F32, dst);
}

int64_t hyb_mixer_state_snapshot_kv(const hyb_mixer *m, const void *state, int pos, int max_ctx,
                                    int kv, void *dst) {
    const hyb_backend *be = hyb_mixer_backend(m);
    if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "mixer '%s' state snapshot", m->type);
    const int kvh = m->desc->state_bytes_kv != NULL;
    if (kvh ? m->desc->state_snapshot_kv != NULL : m->desc->state_snapshot != NULL) {
        int64_t n = kvh ? m->desc->state_snapshot_kv(m->self, be, state, pos, max_ctx, kv, dst)
                        : m->desc->state_snapshot(m->self, be, state, pos, max_ctx, dst);
        if (n < 0)
            return hyb_error_wrap((int)n, "mixer '%s' (layer %d): snapshot of %d tokens", m->type,
                                  m->dims.layer, pos);
        return n;
    }
    size_t n = hyb_mixer_state_bytes_kv(m, max_ctx, kv);
    if (dst) HYB_TRY(be->copy(be, dst, state, n));
    return (int64_t)n;
}

int hyb_mixer_state_restore(const hyb_mixer *m, void *state, const void *src, int pos,
                            int max_ctx) {
    return hyb_mixer_state_restore_kv(m, state, src, pos, max_ctx, HYB_KV_F32);
}

int hyb_mixer_state_restore_kv(const hyb_mixer *m, void *state, const void *src, int pos,
                               int max_ctx, int kv) {
    const hyb_backend *be = hyb_mixer_backend(m);
    if (!be) return hyb_error_wrap(HYB_ERR_UNSUPPORTED, "mixer '%s' state restore", m->type);
    const int kvh = m->desc->state_bytes_kv != NULL;
    if (kvh ? m->desc->state_restore_kv != NULL : m->desc->state_restore != NULL) {
        int rc = kvh ? m->desc->state_restore_kv(m->self, be, state, src, pos, max_ctx, kv)
                     : m->desc->state_restore(m->self, be, state, src, pos, max_ctx);
        if (rc != HYB_OK)
            return hyb_error_wrap(rc, "mixer '%s' (layer %d): restore of %d tokens", m->type,
                                  m->dims.layer, pos);
        return HYB_OK;
    }
    return be->copy(be, state, src, hyb_mixer_state_bytes_kv(m, max_ctx, kv));
}

int hyb_mixer_init_from(hyb_mixer *dst, const hyb_mixer *src, const hyb_cfg_table *src_cfg,
                        uint64_t seed) {
    if (!dst->desc->init_from)
        return hyb_error_set(
            HYB_ERR_UNSUPPORTED,
            "mixer '%s' (layer %d) cannot be initialised from another mixer ('%s'): "
            "its plugin has no init_from",
            dst->type, dst->dims.layer, src->type);
    if (mixer_device(dst) != HYB_DEV_CPU)
        return hyb_error_set(HYB_ERR_ARG,
                             "mixer '%s' (layer %d): init_from runs on the CPU before the mixer "
                             "moves to its device",
                             dst->type, dst->dims.layer);
    const float *stack[64];
    const float **sp = param_ptrs(src, stack, 64);
    float **dp = hyb_malloc(sizeof(float *) * (size_t)(dst->n_params ? dst->n_params : 1));
    float **host = NULL; /* host f32 copies of a source on a device or in GGUF blocks */
    int need_host = mixer_device(src) != HYB_DEV_CPU;
    for (int i = 0; i < src->n_params; i++)
        need_host |= src->params[i]->dtype != HYB_F32;
    if (sp && dp && need_host) {
        host = hyb_malloc(sizeof(float *) * (size_t)(src->n_params ? src->n_params : 1));
        for (int i = 0; host && i < src->n_params; i++) {
            const hyb_tensor *p = src->params[i];
            const int quant = p->dtype != HYB_F32;
            if (!quant && p->device == HYB_DEV_CPU) continue; /* host[i] NULL: sp[i] as it is */
            size_t nb = (size_t)hyb_tensor_numel(p) * sizeof(float);
            host[i] = hyb_malloc(nb ? nb : 1);
            int ok = host[i] != NULL;
            if (ok && quant) /* a frozen projection kept in GGUF blocks: init_from reads f32 */
                ok = p->device == HYB_DEV_CPU &&
                     hyb_dequantize(p->dtype, p->data, host[i], hyb_tensor_numel(p)) == HYB_OK;
            else if (ok)
                ok = hyb_tensor_download(p, host[i]) == HYB_OK;
            if (!ok) {
                for (int k = 0; k <= i; k++)
                    hyb_free(host[k]);
                hyb_free(host);
                if (sp != stack) hyb_free((void *)sp);
                hyb_free(dp);
                return hyb_error_wrap(HYB_ERR_NOMEM, "mixer '%s': reading '%s' for init_from",
                                      dst->type, p->name);
            }
            sp[i] = host[i];
        }
    }
    if (!sp || !dp || (need_host && !host)) {
        if (sp && sp != stack) hyb_free((void *)sp);
        hyb_free(dp);
        return HYB_ERR_NOMEM;
    }
    for (int i = 0; i < dst->n_params; i++)
        dp[i] = hyb_tensor_f32(dst->params[i]);
    hyb_mixer_src s = {.type = src->type,
                       .n_params = src->n_params,
                       .decls = src->decls,
                       .params = sp,
                       .cfg = src_cfg};
    hyb_error_clear();
    int rc = dst->desc->init_from(dst->self, dp, &s, mix_seed(seed, dst->dims.layer, -2));
    if (rc != HYB_OK && !hyb_error()[0])
        hyb_error_set(rc, "mixer '%s': init_from '%s' failed", dst->type, src->type);
    if (host) {
        for (int i = 0; i < src->n_params; i++)
            hyb_free(host[i]);
        hyb_free(host);
    }
    if (sp != stack) hyb_free((void *)sp);
    hyb_free(dp);
    return rc;
}
