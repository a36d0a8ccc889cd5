/* tests/fuzz/fuzz_hfconfig.c: libFuzzer target for the HF config.json reader
 * (hyb_llama_config_from_json) and the layer map generated from it.
 *
 * Any input must give HYB_OK or an error with a message; never a crash, leak or UB (a number too
 * large for an int included). On success the generated layer map text is parsed as a layer map,
 * which must succeed or fail with a message too.
 *
 * Build and run (clang with libFuzzer, from the repository root; tests/fuzz/CMakeLists.txt):
 *   CC=clang CXX=clang++ cmake -S . -B build-fuzz -DHYB_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_hfconfig
 *   mkdir -p corpus && cp tests/fuzz/corpus/hfconfig/[a-z]* corpus/
 *   build-fuzz/tests/fuzz/fuzz_hfconfig -max_total_time=300 -max_len=4096 corpus
 * Without clang, ctest's unit test fuzz_hfconfig replays the seeds (tests/fuzz/replay.c).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/config.h"
#include "hyb/hf.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *text = malloc(size + 1);
    if (!text) return 0;
    if (size) memcpy(text, data, size);
    text[size] = 0;
    hyb_llama_config c;
    hyb_error_clear();
    if (hyb_llama_config_from_json(text, "fuzz/config.json", &c) != HYB_OK) {
        if (!hyb_error()[0]) abort(); /* an error must say why */
        free(text);
        return 0;
    }
    free(text);
    static char map_text[1 << 16];
    hyb_error_clear();
    if (hyb_llama_layermap_text(&c, map_text, sizeof map_text) != HYB_OK) {
        if (!hyb_error()[0]) abort();
        return 0;
    }
    hyb_layermap *map = NULL;
    hyb_error_clear();
    if (hyb_layermap_parse(map_text, "generated.toml", &map) != HYB_OK) {
        if (!hyb_error()[0] || map) abort();
        return 0;
    }
    char desc[4096];
    hyb_layermap_describe(map, desc, sizeof desc);
    hyb_layermap_free(map);
    return 0;
}
