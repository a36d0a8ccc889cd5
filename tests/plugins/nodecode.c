/* libhyb-nodecode.so: right ABI, but the required `decode` entry is NULL. The loader must name
 * the missing entry. */
#include "stub.h"

static const hyb_mixer_desc DESC = {.abi_version = HYB_PLUGIN_ABI_VERSION,
                                    .struct_size = sizeof(hyb_mixer_desc),
                                    .name = "nodecode",
                                    .version = "0.0.1",
                                    .hf_prefix = "mixer",
                                    .create = stub_create,
                                    .destroy = stub_destroy,
                                    .describe = stub_describe,
                                    .n_params = stub_n_params,
                                    .param_decl = stub_param_decl,
                                    .saved_bytes = stub_saved_bytes,
                                    .state_bytes = stub_state_bytes,
                                    .kernels[HYB_DEV_CPU] = {stub_forward, stub_backward, 0}};

HYB_PLUGIN_EXPORT const hyb_mixer_desc *hyb_plugin_entry(const hyb_host *host) {
    (void)host;
    (void)stub_decode;
    return &DESC;
}
