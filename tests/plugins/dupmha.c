/* libhyb-dupmha.so: a valid plugin that claims the name "mha" already taken by the real one.
 * The loader must refuse the second registration and name the first file. */
#include "stub.h"

static const hyb_mixer_desc DESC = {.abi_version = HYB_PLUGIN_ABI_VERSION,
                                    .struct_size = sizeof(hyb_mixer_desc),
                                    .name = "mha",
                                    .version = "0.0.1",
                                    .hf_prefix = "self_attn",
                                    STUB_VTABLE};

HYB_PLUGIN_EXPORT const hyb_mixer_desc *hyb_plugin_entry(const hyb_host *host) {
    (void)host;
    return &DESC;
}
