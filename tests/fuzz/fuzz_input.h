/* tests/fuzz/fuzz_input.h: what the file-format fuzz targets share. */
#ifndef HYB_FUZZ_INPUT_H
#define HYB_FUZZ_INPUT_H
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/common.h"

/* an exact-size copy of the input, so ASan sees any read past the end (NULL: out of memory) */
static inline uint8_t *fuzz_copy(const uint8_t *data, size_t size) {
    uint8_t *buf = malloc(size ? size : 1);
    if (buf && size) memcpy(buf, data, size);
    return buf;
}

/* After an open of buf that returned rc (got_obj: it left an object): 0 when it succeeded; else
 * (1) the error must come with a message and no object (abort otherwise), and buf is freed. */
static inline int fuzz_refused(int rc, int got_obj, uint8_t *buf) {
    if (rc == HYB_OK) return 0;
    if (!hyb_error()[0] || got_obj) abort();
    free(buf);
    return 1;
}
#endif
