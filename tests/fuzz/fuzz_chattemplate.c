/* tests/fuzz/fuzz_chattemplate.c: libFuzzer target for the chat-template interpreter
 * (core/tokenizer/chat_template.c): templates come from model files, so any bytes must render or
 * fail with a message; never a crash, leak, UB or hang (its limits on steps, memory, output and
 * nesting are what keep a hostile template finite). The input is the template; it renders over a
 * fixed conversation with a system turn, tool calls and non-ASCII text.
 *
 *   CC=clang CXX=clang++ cmake -S . -B build-fuzz -DHYB_FUZZ=ON
 *   cmake --build build-fuzz --target fuzz_chattemplate
 *   build-fuzz/tests/fuzz/fuzz_chattemplate -max_total_time=300 -max_len=4096 corpus \
 *       tests/fuzz/corpus/chattemplate
 * Without clang, ctest's fuzz_chattemplate replays the seeds (tests/fuzz/replay.c).
 */
#include <stddef.h>
#include <stdint.h>
#include <stdlib.h>
#include <string.h>

#include "hyb/common.h"
#include "hyb/tokenizer.h"

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size);

static const char *CTX =
    "{\"messages\":[{\"role\":\"system\",\"content\":\"Be brief.\"},"
    "{\"role\":\"user\",\"content\":\"Weather in Z\\u00fcrich? \\ud83d\\ude00\"},"
    "{\"role\":\"assistant\",\"content\":\"\",\"tool_calls\":[{\"type\":\"function\","
    "\"function\":{\"name\":\"weather\",\"arguments\":{\"city\":\"Z\\u00fcrich\",\"n\":2.5}}}]},"
    "{\"role\":\"tool\",\"content\":\"{\\\"t\\\": 18}\"},"
    "{\"role\":\"assistant\",\"content\":\"<think>x</think>18 C\"}],"
    "\"tools\":[{\"type\":\"function\",\"function\":{\"name\":\"weather\",\"parameters\":{}}}],"
    "\"add_generation_prompt\":true,\"bos_token\":\"<s>\",\"eos_token\":\"</s>\"}";

int LLVMFuzzerTestOneInput(const uint8_t *data, size_t size) {
    char *tmpl = malloc(size + 1);
    if (!tmpl) return 0;
    if (size) memcpy(tmpl, data, size);
    tmpl[size] = 0; /* a NUL inside ends the template, as in a C string from a model file */
    char *out = NULL;
    hyb_error_clear();
    int rc = hyb_chat_template_render(tmpl, CTX, &out);
    if (rc != HYB_OK && (!hyb_error()[0] || out)) abort(); /* an error must say why, give nothing */
    if (rc == HYB_OK && !out) abort();
    /* parsing alone agrees with rendering about syntax: a template that rendered parses */
    if (rc == HYB_OK && hyb_chat_template_check(tmpl) != HYB_OK) abort();
    free(out);
    free(tmpl);
    return 0;
}
