/* test_dequant.c: hyb_convert_to_f32 decodes quantised dtypes in a program that never touches
 * the GGUF reader (guards the static-library link: core/tensor.c must pull in core/io/dequant.c).
 * The values are worked out by hand from the block layouts in core/io/dequant.c. */
#include <string.h>

#include "harness.h"
#include "hyb/tensor.h"

static void test_convert_q8_0(void) {
    /* d = 0.5 (f16 0x3800), q[j] = j - 16 -> y[j] = (j - 16) / 2 */
    unsigned char blk[34] = {0x00, 0x38};
    float out[32];
    for (int j = 0; j < 32; j++)
        blk[2 + j] = (unsigned char)(signed char)(j - 16);
    int rc = hyb_convert_to_f32(HYB_Q8_0, blk, out, 32);
    CHECK_MSG(rc == HYB_OK, "%s", hyb_error());
    int bad = 0;
    for (int j = 0; rc == HYB_OK && j < 32; j++)
        bad += out[j] != (float)(j - 16) * 0.5f;
    CHECK(bad == 0);
}

static void test_convert_q4_0(void) {
    /* d = 2 (f16 0x4000), byte j = j | (15 - j) << 4: y[j] = 2 (j - 8), y[j + 16] = 2 (7 - j) */
    unsigned char blk[18] = {0x00, 0x40};
    float out[32];
    for (int j = 0; j < 16; j++)
        blk[2 + j] = (unsigned char)(j | ((15 - j) << 4));
    CHECK(hyb_convert_to_f32(HYB_Q4_0, blk, out, 32) == HYB_OK);
    int bad = 0;
    for (int j = 0; j < 16; j++)
        bad += out[j] != 2.0f * (float)(j - 8) || out[j + 16] != 2.0f * (float)(7 - j);
    CHECK(bad == 0);
    CHECK(hyb_convert_to_f32(HYB_Q4_0, blk, out, 16) == HYB_ERR_ARG);
}

int main(void) {
    RUN(test_convert_q8_0);
    RUN(test_convert_q4_0);
    return harness_done();
}
