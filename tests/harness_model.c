/* tests/harness_model.c: the harness helpers that need hyb_core (declared in harness.h). */
#include <stdlib.h>
#include <string.h>

#include <cJSON.h>

#include "harness.h"
#include "hyb/model.h"

hyb_model *harness_build_model(const char *map_text, const char *name, unsigned long long seed) {
    hyb_layermap *map = NULL;
    if (hyb_layermap_parse(map_text, name, &map) != HYB_OK) {
        harness_fail(__FILE__, __LINE__, "layer map %s: %s", name, hyb_error());
        return NULL;
    }
    hyb_model *m = NULL;
    if (hyb_model_build(map, seed, &m) != HYB_OK) {
        harness_fail(__FILE__, __LINE__, "build %s: %s", name, hyb_error());
        return NULL;
    }
    return m;
}

float *harness_logits(hyb_model *m, const int32_t *ids, int b, int t) {
    hyb_graph *g = hyb_graph_new();
    hyb_graph_set_grad(g, 0);
    hyb_tensor *y = hyb_model_forward(m, g, ids, b, t);
    float *out = NULL;
    if (y) {
        CHECK(y->ndim == 3 && y->shape[0] == b && y->shape[1] == t && y->shape[2] == m->V);
        out = malloc(hyb_tensor_nbytes(y));
        memcpy(out, hyb_tensor_f32(y), hyb_tensor_nbytes(y));
    } else {
        harness_fail(__FILE__, __LINE__, "forward: %s", hyb_error());
    }
    hyb_graph_free(g);
    return out;
}

cJSON *harness_read_json(const char *path) {
    char *text = harness_read_file(path, NULL);
    cJSON *j = text ? cJSON_Parse(text) : NULL;
    free(text);
    return j;
}

double harness_jnum(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsNumber(v) ? v->valuedouble : -1.0;
}

const char *harness_jstr(const cJSON *o, const char *key) {
    const cJSON *v = cJSON_GetObjectItemCaseSensitive(o, key);
    return cJSON_IsString(v) ? v->valuestring : "";
}
