/* libhyb-noentry.so: a shared object without the hyb_plugin_entry symbol (it exports a
 * misspelled one). The loader must say which symbol is missing. */
#include "stub.h"

STUB_PLUGIN(HYB_PLUGIN_ABI_VERSION, "noentry", "mixer", stub_decode, hyb_plugin_entry_v1)
