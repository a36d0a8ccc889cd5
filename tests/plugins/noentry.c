/* libhyb-noentry.so: a shared object without the hyb_plugin_entry symbol (it exports a
 * misspelled one). The loader must say which symbol is missing. */
#include "stub.h"

static const hyb_mixer_desc DESC = {.abi_version = HYB_PLUGIN_ABI_VERSION,
                                    .struct_size = sizeof(hyb_mixer_desc),
                                    .name = "noentry",
                                    .version = "0.0.1",
                                    .hf_prefix = "mixer",
                                    STUB_VTABLE};

HYB_PLUGIN_EXPORT const hyb_mixer_desc *hyb_plugin_entry_v1(const hyb_host *host) {
    (void)host;
    return &DESC;
}
