/* libhyb-badabi.so: a plugin built against a future plugin ABI (this one + 1). The loader must
 * refuse it with a message naming both versions. */
#include "stub.h"

static const hyb_mixer_desc DESC = {.abi_version = HYB_PLUGIN_ABI_VERSION + 1,
                                    .struct_size = sizeof(hyb_mixer_desc),
                                    .name = "badabi",
                                    .version = "0.0.1",
                                    .hf_prefix = "mixer",
                                    STUB_VTABLE};

HYB_PLUGIN_EXPORT const hyb_mixer_desc *hyb_plugin_entry(const hyb_host *host) {
    (void)host;
    return &DESC;
}
