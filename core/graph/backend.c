/* core/graph/backend.c: the registry of backends (hyb/backend.h).
 *
 * Backends are registered under their name ("cpu", "cuda:0"); a provider per device kind opens
 * them on demand (hyb_backend_open("cuda:1") -> the CUDA provider's open(1)). The CPU backend is
 * always there. Tensors carry only their device kind, so one backend per kind is open at a time:
 * hyb_backend_get(kind) returns it. */
#include <pthread.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/backend.h"

#ifdef HYB_HAVE_CUDA
#include "backend/cuda/cuda.h"
#endif

#define MAX_BACKENDS 16
#define MAX_PROVIDERS 8

static const hyb_backend *g_backends[MAX_BACKENDS];
static int g_n_backends;
static const hyb_backend_provider *g_providers[MAX_PROVIDERS];
static int g_n_providers;
static pthread_mutex_t g_lock = PTHREAD_MUTEX_INITIALIZER;
static pthread_once_t g_once = PTHREAD_ONCE_INIT;

static void builtin_providers(void) {
#ifdef HYB_HAVE_CUDA
    g_providers[g_n_providers++] = &hyb_cuda_provider;
#endif
}

const char *hyb_device_name(hyb_device dev) {
    switch (dev) {
    case HYB_DEV_CPU:
        return "cpu";
    case HYB_DEV_CUDA:
        return "cuda";
    default:
        return "?";
    }
}

const hyb_backend *hyb_backend_get(hyb_device dev) {
    if (dev == HYB_DEV_CPU) return hyb_backend_cpu();
    if ((int)dev < 0 || (int)dev >= HYB_DEV_COUNT) {
        hyb_error_set(HYB_ERR_ARG, "no such device kind %d", (int)dev);
        return NULL;
    }
    const hyb_backend *be = NULL;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_n_backends && !be; i++)
        if (g_backends[i]->device == dev) be = g_backends[i];
    pthread_mutex_unlock(&g_lock);
    if (!be)
        hyb_error_set(
            HYB_ERR_UNSUPPORTED,
            "no %s backend is open (open one with hyb_backend_open(\"%s\") / --device %s)",
            hyb_device_name(dev), hyb_device_name(dev), hyb_device_name(dev));
    return be;
}

int hyb_backend_register(const hyb_backend *be) {
    if (!be || !be->name || !be->name[0] || (int)be->device < 0 || (int)be->device >= HYB_DEV_COUNT)
        return hyb_error_set(HYB_ERR_ARG, "hyb_backend_register: invalid backend table");
    if (be->device == HYB_DEV_CPU)
        return hyb_error_set(HYB_ERR_ARG, "hyb_backend_register: the CPU backend is built in");
    int rc = HYB_OK;
    pthread_mutex_lock(&g_lock);
    int slot = -1;
    for (int i = 0; i < g_n_backends; i++) {
        if (strcmp(g_backends[i]->name, be->name) == 0)
            slot = i; /* re-registration: replace */
        else if (g_backends[i]->device == be->device)
            rc = hyb_error_set(HYB_ERR_UNSUPPORTED,
                               "backend %s: this process already uses %s (one %s device per "
                               "process)",
                               be->name, g_backends[i]->name, hyb_device_name(be->device));
    }
    if (rc == HYB_OK) {
        if (slot < 0 && g_n_backends >= MAX_BACKENDS)
            rc = hyb_error_set(HYB_ERR, "hyb_backend_register: too many backends (%d)",
                               MAX_BACKENDS);
        else if (slot < 0)
            g_backends[g_n_backends++] = be;
        else
            g_backends[slot] = be;
    }
    pthread_mutex_unlock(&g_lock);
    return rc;
}

int hyb_backend_add_provider(const hyb_backend_provider *p) {
    pthread_once(&g_once, builtin_providers);
    if (!p || !p->kind || !p->open || !p->probe)
        return hyb_error_set(HYB_ERR_ARG, "hyb_backend_add_provider: incomplete provider");
    int rc = HYB_OK;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_n_providers; i++)
        if (strcmp(g_providers[i]->kind, p->kind) == 0) {
            g_providers[i] = p;
            goto done;
        }
    if (g_n_providers >= MAX_PROVIDERS)
        rc = hyb_error_set(HYB_ERR, "hyb_backend_add_provider: too many providers");
    else
        g_providers[g_n_providers++] = p;
done:
    pthread_mutex_unlock(&g_lock);
    return rc;
}

static const hyb_backend_provider *find_provider(const char *kind, size_t len) {
    pthread_once(&g_once, builtin_providers);
    const hyb_backend_provider *p = NULL;
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_n_providers && !p; i++)
        if (strlen(g_providers[i]->kind) == len && strncmp(g_providers[i]->kind, kind, len) == 0)
            p = g_providers[i];
    pthread_mutex_unlock(&g_lock);
    return p;
}

static void known_devices(char *buf, size_t n) {
    size_t k = (size_t)snprintf(buf, n, "cpu");
    pthread_once(&g_once, builtin_providers);
    pthread_mutex_lock(&g_lock);
    for (int i = 0; i < g_n_providers && k < n; i++)
        k += (size_t)snprintf(buf + k, n - k, ", %s[:N]", g_providers[i]->kind);
    pthread_mutex_unlock(&g_lock);
}

int hyb_backend_open(const char *name, const hyb_backend **out) {
    if (out) *out = NULL;
    if (!name || !name[0]) return hyb_error_set(HYB_ERR_ARG, "device name is empty");
    if (strcmp(name, "cpu") == 0 || strcmp(name, "cpu:0") == 0) {
        if (out) *out = hyb_backend_cpu();
        return HYB_OK;
    }
    /* "<kind>" or "<kind>:<ordinal>" */
    const char *colon = strchr(name, ':');
    size_t klen = colon ? (size_t)(colon - name) : strlen(name);
    long ordinal = 0;
    if (colon) {
        char *end = NULL;
        ordinal = strtol(colon + 1, &end, 10);
        if (end == colon + 1 || *end || ordinal < 0 || ordinal > 1023)
            return hyb_error_set(HYB_ERR_ARG,
                                 "device '%.64s': the ordinal after ':' must be a number in "
                                 "[0, 1023]",
                                 name);
    }
    char full[96];
    snprintf(full, sizeof full, "%.*s:%ld", (int)(klen < 64 ? klen : 64), name, ordinal);
    pthread_mutex_lock(&g_lock);
    const hyb_backend *found = NULL;
    for (int i = 0; i < g_n_backends && !found; i++)
        if (strcmp(g_backends[i]->name, full) == 0) found = g_backends[i];
    pthread_mutex_unlock(&g_lock);
    if (found) {
        if (out) *out = found;
        return HYB_OK;
    }
    const hyb_backend_provider *p = find_provider(name, klen);
    if (!p) {
        char known[256];
        known_devices(known, sizeof known);
        if (klen == 4 && strncmp(name, "cuda", 4) == 0)
            return hyb_error_set(HYB_ERR_UNSUPPORTED,
                                 "device '%.64s': this hyb was built without CUDA (no CUDA "
                                 "headers at build time); devices: %s",
                                 name, known);
        return hyb_error_set(HYB_ERR_ARG, "unknown device '%.64s'; devices: %s", name, known);
    }
    const hyb_backend *be = NULL;
    int rc = p->open((int)ordinal, &be);
    if (rc != HYB_OK) return hyb_error_wrap(rc, "device '%s'", full);
    if (!be) return hyb_error_set(HYB_ERR, "device '%s': the provider opened no backend", full);
    if (out) *out = be;
    return HYB_OK;
}

int hyb_backend_describe(int i, char *name, size_t name_n, char *status, size_t status_n) {
    pthread_once(&g_once, builtin_providers);
    if (i == 0) {
        snprintf(name, name_n, "cpu");
        snprintf(status, status_n, "available (OpenBLAS + OpenMP)");
        return HYB_OK;
    }
    pthread_mutex_lock(&g_lock);
    const hyb_backend_provider *p = i - 1 < g_n_providers ? g_providers[i - 1] : NULL;
    pthread_mutex_unlock(&g_lock);
    if (!p) {
#ifndef HYB_HAVE_CUDA
        if (i - 1 == g_n_providers) {
            snprintf(name, name_n, "cuda");
            snprintf(status, status_n, "not available: this hyb was built without CUDA");
            return HYB_OK;
        }
#endif
        return HYB_ERR_NOTFOUND;
    }
    snprintf(name, name_n, "%s", p->kind);
    int n = p->probe();
    if (n > 0)
        snprintf(status, status_n, "available: %d device%s (%s:0 .. %s:%d)", n, n == 1 ? "" : "s",
                 p->kind, p->kind, n - 1);
    else
        snprintf(status, status_n, "not available: %s", n < 0 ? hyb_error() : "no device found");
    return HYB_OK;
}
