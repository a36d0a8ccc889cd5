/* core/memplan.c: up-front memory planning (hyb/memplan.h). */
#include "hyb/memplan.h"

#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/mixer.h"
#include "hyb/model.h"
#include "hyb/plugin.h"

/* a + b and a * b, saturating at UINT64_MAX (a plan past 16 EiB is refused anyway) */
static uint64_t add_sat(uint64_t a, uint64_t b) {
    return a > UINT64_MAX - b ? UINT64_MAX : a + b;
}
static uint64_t mul_sat(uint64_t a, uint64_t b) {
    return b && a > UINT64_MAX / b ? UINT64_MAX : a * b;
}

int hyb_mem_plan_weights(const hyb_layermap *map, uint64_t *bytes) {
    *bytes = 0;
    if (!map) return hyb_error_set(HYB_ERR_ARG, "hyb_mem_plan_weights: no layer map");
    const uint64_t D = (uint64_t)map->d_model, V = (uint64_t)map->vocab_size,
                   F = (uint64_t)map->d_ff, L = (uint64_t)map->n_layers;
    /* embed, final norm, lm_head unless tied; per layer two norms and the MLP's three matrices */
    uint64_t n = add_sat(mul_sat(V, D), D);
    if (!map->tie_embeddings) n = add_sat(n, mul_sat(V, D));
    n = add_sat(n, mul_sat(L, add_sat(2 * D, mul_sat(3 * F, D))));
    for (int l = 0; l < map->n_layers; l++) {
        const hyb_mixer_spec *spec = &map->mixers[map->layer_mixer[l]];
        if (strcmp(spec->type, HYB_MIXER_IDENTITY) == 0) continue;
        const hyb_mixer_desc *d;
        int rc = hyb_plugin_find(spec->type, &d);
        if (rc != HYB_OK)
            return hyb_error_wrap(rc, "%s: layer %d (mixer '%s', type '%s')", spec->where, l,
                                  spec->name, spec->type);
        hyb_model_dims dims;
        memset(&dims, 0, sizeof dims);
        dims.d_model = map->d_model;
        dims.n_layers = map->n_layers;
        dims.layer = l;
        dims.max_seq = map->max_seq;
        dims.norm_eps = (float)map->norm_eps;
        void *self = NULL;
        if ((rc = d->create(&dims, spec->table, &self)) != HYB_OK)
            return hyb_error_wrap(rc, "%s: layer %d (mixer '%s', type '%s')", spec->where, l,
                                  spec->name, spec->type);
        int np = d->n_params(self);
        for (int i = 0; i < np && rc == HYB_OK; i++) {
            hyb_param_decl pd;
            memset(&pd, 0, sizeof pd);
            if ((rc = d->param_decl(self, i, &pd)) != HYB_OK) break;
            uint64_t k = 1;
            for (int a = 0; a < pd.ndim && a < 4; a++)
                k = mul_sat(k, pd.shape[a] > 0 ? (uint64_t)pd.shape[a] : 0);
            n = add_sat(n, k);
        }
        d->destroy(self);
        if (rc != HYB_OK) return hyb_error_wrap(rc, "%s: layer %d", spec->where, l);
    }
    *bytes = mul_sat(n, sizeof(float));
    return HYB_OK;
}

int hyb_mem_plan_state(const struct hyb_model *m, int n_seq, int max_ctx, uint64_t *bytes) {
    return hyb_mem_plan_state_kv(m, n_seq, max_ctx, HYB_KV_DEFAULT, bytes);
}

int hyb_mem_plan_state_kv(const struct hyb_model *m, int n_seq, int max_ctx, int kv,
                          uint64_t *bytes) {
    *bytes = 0;
    if (!m || n_seq <= 0 || max_ctx <= 0)
        return hyb_error_set(HYB_ERR_ARG, "hyb_mem_plan_state: bad arguments");
    uint64_t total = 0;
    for (int l = 0; l < m->L; l++) {
        const hyb_mixer *mx = m->layers[l].mixer;
        if (!mx) continue;
        uint64_t per = hyb_mixer_state_bytes_kv(mx, max_ctx, kv);
        per = add_sat(per, 63) & ~(uint64_t)63;
        total = add_sat(total, mul_sat(per, (uint64_t)n_seq));
    }
    *bytes = total;
    return HYB_OK;
}

/* A number from a one-value file ("max" or garbage: 0). */
static uint64_t read_u64_file(const char *path) {
    FILE *f = fopen(path, "r");
    if (!f) return 0;
    char buf[64] = {0};
    size_t n = fread(buf, 1, sizeof buf - 1, f);
    fclose(f);
    buf[n] = 0;
    char *end;
    unsigned long long v = strtoull(buf, &end, 10);
    return end == buf ? 0 : (uint64_t)v;
}

uint64_t hyb_mem_available(const char **source) {
    const char *src = "unknown";
    uint64_t avail = 0;
    const char *env = getenv("HYB_MEM_LIMIT");
    if (env && *env) {
        char *end;
        unsigned long long v = strtoull(env, &end, 10);
        if (end != env && *end == 0) {
            if (source) *source = "HYB_MEM_LIMIT";
            return (uint64_t)v;
        }
    }
    FILE *f = fopen("/proc/meminfo", "r");
    if (f) {
        char line[256];
        unsigned long long kb;
        while (fgets(line, sizeof line, f))
            if (sscanf(line, "MemAvailable: %llu kB", &kb) == 1) {
                avail = (uint64_t)kb * 1024;
                src = "MemAvailable in /proc/meminfo";
                break;
            }
        fclose(f);
    }
    /* cgroup v2: what this group may still take */
    uint64_t max = read_u64_file("/sys/fs/cgroup/memory.max");
    if (max) {
        uint64_t cur = read_u64_file("/sys/fs/cgroup/memory.current");
        uint64_t left = max > cur ? max - cur : 0;
        if (!avail || left < avail) {
            avail = left;
            src = "the cgroup's memory.max - memory.current";
        }
    }
    if (source) *source = src;
    return avail;
}

static const char *human(uint64_t b, char *buf, size_t n) {
    if (b >= (1ull << 30))
        snprintf(buf, n, "%.2f GiB", (double)b / (double)(1ull << 30));
    else if (b >= (1ull << 20))
        snprintf(buf, n, "%.1f MiB", (double)b / (double)(1ull << 20));
    else
        snprintf(buf, n, "%" PRIu64 " bytes", b);
    return buf;
}

int hyb_mem_check(const char *what, uint64_t need, const char *detail) {
    const char *src = NULL;
    uint64_t avail = hyb_mem_available(&src);
    if (avail == 0 || need <= avail) return HYB_OK;
    char a[32], b[32];
    return hyb_error_set(HYB_ERR_NOMEM,
                         "%s needs %s (%s), but only %s of memory is available (%s)", what,
                         human(need, a, sizeof a), detail ? detail : "", human(avail, b, sizeof b),
                         src);
}
