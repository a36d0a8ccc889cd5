/* libhyb-dupmha.so: a valid plugin that claims the name "mha" already taken by the real one.
 * The loader must refuse the second registration and name the first file. */
#include "stub.h"

STUB_PLUGIN(HYB_PLUGIN_ABI_VERSION, "mha", "self_attn", stub_decode, hyb_plugin_entry)
