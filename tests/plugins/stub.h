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
static size_t stub_state_bytes(void *self, int max_ctx) {
    (void)self;
    (void)max_ctx;
    return 0;
}
/* a kernel that fails (-7) whatever it is given */
#define STUB_KERNEL(fn, args_t)                                                                    \
    static int fn(void *self, const args_t *a) {                                                   \
        (void)self;                                                                                \
        (void)a;                                                                                   \
        return -7;                                                                                 \
    }
STUB_KERNEL(stub_forward, hyb_mixer_fwd)
STUB_KERNEL(stub_backward, hyb_mixer_bwd)
STUB_KERNEL(stub_decode, hyb_mixer_dec)

/* the stub entries, with `decode` as the CPU decode kernel (stub_decode, or 0 for a plugin
 * missing it) */
#define STUB_VTABLE(decode)                                                                        \
    .create = stub_create, .destroy = stub_destroy, .describe = stub_describe,                     \
    .n_params = stub_n_params, .param_decl = stub_param_decl, .saved_bytes = stub_saved_bytes,     \
    .state_bytes = stub_state_bytes, .kernels[HYB_DEV_CPU] = {stub_forward, stub_backward, decode}

/* A whole stub plugin: its descriptor DESC (ABI version `abi`, mixer `name`, HF prefix
 * `hf_prefix`, CPU decode kernel `decode`) and the exported function `entry` returning it (the
 * loader looks for hyb_plugin_entry). */
#define STUB_PLUGIN(abi, name_, hf_prefix_, decode, entry)                                         \
    static const hyb_mixer_desc DESC = {.abi_version = (abi),                                      \
                                        .struct_size = sizeof(hyb_mixer_desc),                     \
                                        .name = name_,                                             \
                                        .version = "0.0.1",                                        \
                                        .hf_prefix = hf_prefix_,                                   \
                                        STUB_VTABLE(decode)};                                      \
    HYB_PLUGIN_EXPORT const hyb_mixer_desc *entry(const hyb_host *host) {                          \
        (void)host;                                                                                \
        (void)stub_decode;                                                                         \
        return &DESC;                                                                              \
    }
#endif
