/* core/graph/backend.c: the registry of backends, one per device. */
#include "hyb/backend.h"

static const hyb_backend *g_backends[2];

const hyb_backend *hyb_backend_get(hyb_device dev) {
    if ((int)dev < 0 || (int)dev > 1) {
        hyb_error_set(HYB_ERR_ARG, "no such device %d", (int)dev);
        return NULL;
    }
    if (dev == HYB_DEV_CPU) return hyb_backend_cpu();
    if (!g_backends[dev]) {
        hyb_error_set(HYB_ERR_UNSUPPORTED, "no backend registered for device %s",
                      dev == HYB_DEV_CUDA ? "cuda" : "?");
        return NULL;
    }
    return g_backends[dev];
}

int hyb_backend_register(const hyb_backend *be) {
    if (!be || (int)be->device < 0 || (int)be->device > 1)
        return hyb_error_set(HYB_ERR_ARG, "hyb_backend_register: invalid backend");
    if (be->device == HYB_DEV_CPU)
        return hyb_error_set(HYB_ERR_ARG, "hyb_backend_register: the CPU backend is built in");
    g_backends[be->device] = be;
    return HYB_OK;
}
