/* libhyb-badabi.so: a plugin built against a future plugin ABI (this one + 1). The loader must
 * refuse it with a message naming both versions. */
#include "stub.h"

STUB_PLUGIN(HYB_PLUGIN_ABI_VERSION + 1, "badabi", "mixer", stub_decode, hyb_plugin_entry)
