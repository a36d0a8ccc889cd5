/* libhyb-nodecode.so: right ABI, but the required `decode` entry is NULL. The loader must name
 * the missing entry. */
#include "stub.h"

STUB_PLUGIN(HYB_PLUGIN_ABI_VERSION, "nodecode", "mixer", 0, hyb_plugin_entry)
