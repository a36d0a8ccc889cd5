/* tests/plugins/stub.h: a do-nothing vtable shared by the broken test plugins. Each plugin
 * includes this after (optionally) redefining HYB_PLUGIN_ABI_VERSION. */
#ifndef HYB_TEST_PLUGIN_STUB_H
#define HYB_TEST_PLUGIN_STUB_H
#include "hyb/plugin.h"

static int stub_create(const hyb_model_dims *dims, const hyb_cfg_table *cfg, void **self) {
    (void)dims;
    (void)cfg;
    *self = 0;
    return 0;
}
static void stub_destroy(void *self) {
    (void)self;
}
static int stub_describe(void *self, char *buf, size_t n) {
    (void)self;
    if (n) buf[0] = 0;
    return 0;
}
static int stub_n_params(void *self) {
    (void)self;
    return 0;
}
static int stub_param_decl(void *self, int i, hyb_param_decl *out) {
    (void)self;
    (void)i;
    (void)out;
    return -4;
}
static size_t stub_saved_bytes(void *self, int B, int T) {
    (void)self;
    (void)B;
    (void)T;
    return 0;
}
static int stub_forward(void *self, const hyb_mixer_fwd *a) {
    (void)self;
    (void)a;
    return -7;
}
static int stub_backward(void *self, const hyb_mixer_bwd *a) {
    (void)self;
    (void)a;
    return -7;
}
static size_t stub_state_bytes(void *self, int max_ctx) {
    (void)self;
    (void)max_ctx;
    return 0;
}
static int stub_decode(void *self, const hyb_mixer_dec *a) {
    (void)self;
    (void)a;
    return -7;
}

#define STUB_VTABLE                                                                                \
    .create = stub_create, .destroy = stub_destroy, .describe = stub_describe,                     \
    .n_params = stub_n_params, .param_decl = stub_param_decl, .saved_bytes = stub_saved_bytes,     \
    .state_bytes = stub_state_bytes,                                                               \
    .kernels[HYB_DEV_CPU] = {stub_forward, stub_backward, stub_decode}
#endif
