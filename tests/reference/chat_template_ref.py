#!/usr/bin/env python3
"""Golden renderings of chat templates by jinja2 itself, set up as HF transformers'
apply_chat_template sets it up (ImmutableSandboxedEnvironment, trim_blocks, lstrip_blocks, the
loopcontrols extension, raise_exception, a tojson that keeps key order and non-ASCII text), for
tests/test_chat_template.c, which renders the same cases with hyb's interpreter
(core/tokenizer/chat_template.c) and compares byte for byte.

    python -m venv /tmp/v && /tmp/v/bin/pip install jinja2
    /tmp/v/bin/python tests/reference/chat_template_ref.py > tests/data/chat_template/golden.json

The templates below are written in the style of the model families' own (ChatML with tools,
Llama 3, Mistral, Gemma, Phi-3, DeepSeek-R1) to exercise what those use; SmolLM2's is the one in
its GGUF file. A case with "error" expects the render to fail (the text: a part of the message).
"""
import json
import sys

import jinja2
import jinja2.ext
from jinja2.sandbox import ImmutableSandboxedEnvironment


def make_env():
    def raise_exception(message):
        raise jinja2.exceptions.TemplateError(message)

    def tojson(x, ensure_ascii=False, indent=None, separators=None, sort_keys=False):
        return json.dumps(x, ensure_ascii=ensure_ascii, indent=indent, separators=separators,
                          sort_keys=sort_keys)

    env = ImmutableSandboxedEnvironment(trim_blocks=True, lstrip_blocks=True,
                                        extensions=[jinja2.ext.loopcontrols])
    env.filters["tojson"] = tojson
    env.globals["raise_exception"] = raise_exception
    return env


SMOLLM2 = bytes.fromhex(open("tests/data/gguf/smollm2_golden.txt").read().split(
    "tokenizer.chat_template ")[1].split()[0]).decode()

CHATML_TOOLS = """{%- if tools %}
    {{- '<|im_start|>system\\n' }}
    {%- if messages[0]['role'] == 'system' %}
        {{- messages[0]['content'] }}
    {%- else %}
        {{- 'You are a helpful assistant.' }}
    {%- endif %}
    {{- "\\n\\n# Tools\\n\\n<tools>" }}
    {%- for tool in tools %}
        {{- "\\n" }}
        {{- tool | tojson }}
    {%- endfor %}
    {{- "\\n</tools><|im_end|>\\n" }}
{%- else %}
    {%- if messages[0]['role'] == 'system' %}
        {{- '<|im_start|>system\\n' + messages[0]['content'] + '<|im_end|>\\n' }}
    {%- else %}
        {{- '<|im_start|>system\\nYou are a helpful assistant.<|im_end|>\\n' }}
    {%- endif %}
{%- endif %}
{%- for message in messages %}
    {%- if (message.role == "user") or (message.role == "system" and not loop.first) or (message.role == "assistant" and not message.tool_calls) %}
        {{- '<|im_start|>' + message.role + '\\n' + message.content + '<|im_end|>' + '\\n' }}
    {%- elif message.role == "assistant" %}
        {{- '<|im_start|>' + message.role }}
        {%- if message.content %}
            {{- '\\n' + message.content }}
        {%- endif %}
        {%- for tool_call in message.tool_calls %}
            {%- if tool_call.function is defined %}
                {%- set tool_call = tool_call.function %}
            {%- endif %}
            {{- '\\n<tool_call>\\n{"name": "' }}
            {{- tool_call.name }}
            {{- '", "arguments": ' }}
            {{- tool_call.arguments | tojson }}
            {{- '}\\n</tool_call>' }}
        {%- endfor %}
        {{- '<|im_end|>\\n' }}
    {%- elif message.role == "tool" %}
        {%- if (loop.index0 == 0) or (messages[loop.index0 - 1].role != "tool") %}
            {{- '<|im_start|>user' }}
        {%- endif %}
        {{- '\\n<tool_response>\\n' }}
        {{- message.content }}
        {{- '\\n</tool_response>' }}
        {%- if loop.last or (messages[loop.index0 + 1].role != "tool") %}
            {{- '<|im_end|>\\n' }}
        {%- endif %}
    {%- endif %}
{%- endfor %}
{%- if add_generation_prompt %}
    {{- '<|im_start|>assistant\\n' }}
{%- endif %}
"""

LLAMA3 = """{% set loop_messages = messages %}{% for message in loop_messages %}{% set content = '<|start_header_id|>' + message['role'] + '<|end_header_id|>\n\n'+ message['content'] | trim + '<|eot_id|>' %}{% if loop.index0 == 0 %}{% set content = bos_token + content %}{% endif %}{{ content }}{% endfor %}{% if add_generation_prompt %}{{ '<|start_header_id|>assistant<|end_header_id|>\n\n' }}{% endif %}"""

MISTRAL = """{%- if messages[0]['role'] == 'system' %}
    {%- set system_message = messages[0]['content'] %}
    {%- set loop_messages = messages[1:] %}
{%- else %}
    {%- set loop_messages = messages %}
{%- endif %}

{{- bos_token }}
{%- for message in loop_messages %}
    {%- if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}
        {{- raise_exception('After the optional system message, conversation roles must alternate user/assistant/user/assistant/...') }}
    {%- endif %}
    {%- if message['role'] == 'user' %}
        {%- if loop.first and system_message is defined %}
            {{- ' [INST] ' + system_message + '\\n\\n' + message['content'] + ' [/INST]' }}
        {%- else %}
            {{- ' [INST] ' + message['content'] + ' [/INST]' }}
        {%- endif %}
    {%- elif message['role'] == 'assistant' %}
        {{- ' ' + message['content'] + eos_token}}
    {%- else %}
        {{- raise_exception('Only user and assistant roles are supported, with the exception of an initial optional system message!') }}
    {%- endif %}
{%- endfor %}
"""

GEMMA = """{{ bos_token }}{% if messages[0]['role'] == 'system' %}{{ raise_exception('System role not supported') }}{% endif %}{% for message in messages %}{% if (message['role'] == 'user') != (loop.index0 % 2 == 0) %}{{ raise_exception('Conversation roles must alternate user/assistant/user/assistant/...') }}{% endif %}{% if (message['role'] == 'assistant') %}{% set role = 'model' %}{% else %}{% set role = message['role'] %}{% endif %}{{ '<start_of_turn>' + role + '\n' + message['content'] | trim + '<end_of_turn>\n' }}{% endfor %}{% if add_generation_prompt %}{{'<start_of_turn>model\n'}}{% endif %}"""

PHI3 = """{% for message in messages %}{% if message['role'] == 'system' and message['content'] %}{{'<|system|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'user' %}{{'<|user|>
' + message['content'] + '<|end|>
'}}{% elif message['role'] == 'assistant' %}{{'<|assistant|>
' + message['content'] + '<|end|>
'}}{% endif %}{% endfor %}{% if add_generation_prompt %}{{ '<|assistant|>
' }}{% else %}{{ eos_token }}{% endif %}"""

DEEPSEEK = """{% if not add_generation_prompt is defined %}{% set add_generation_prompt = false %}{% endif %}{% set ns = namespace(is_first=false, is_tool=false, system_prompt='', is_first_sp=true) %}{%- for message in messages %}{%- if message['role'] == 'system' %}{%- if ns.is_first_sp %}{% set ns.system_prompt = ns.system_prompt + message['content'] %}{% set ns.is_first_sp = false %}{%- else %}{% set ns.system_prompt = ns.system_prompt + '\\n\\n' + message['content'] %}{%- endif %}{%- endif %}{%- endfor %}{{ bos_token }}{{ ns.system_prompt }}{%- for message in messages %}{%- if message['role'] == 'user' %}{%- set ns.is_tool = false -%}{{'<｜User｜>' + message['content']}}{%- endif %}{%- if message['role'] == 'assistant' and message['content'] is not none %}{% set content = message['content'] %}{% if '</think>' in content %}{% set content = content.split('</think>')[-1] %}{% endif %}{{'<｜Assistant｜>' + content + '<｜end▁of▁sentence｜>'}}{%- endif %}{%- endfor -%}{% if add_generation_prompt %}{{'<｜Assistant｜><think>\\n'}}{% endif %}"""

FEATURES = """{#- a comment -#}
{%- macro turn(role, text, suffix='|') -%}
[{{ role | upper }}] {{ text }}{{ suffix }}
{%- endmacro -%}
{% for m in messages if m.role != 'system' %}
  {{ turn(m.role, m.content) }} {{ loop.index }}/{{ loop.length }}{% if loop.first %} first{% endif %}{% if loop.last %} last{% endif %}

{% else %}
no messages
{% endfor %}
{% set names = messages | map(attribute='role') | list %}
roles: {{ names | join(', ') }}; unique: {{ names | unique | list | length }}
users: {{ messages | selectattr('role', 'equalto', 'user') | list | length }}
others: {{ messages | rejectattr('role', 'equalto', 'user') | map(attribute='role') | join('+') }}
{% for k, v in {'a': 1, 'b': [2, 3], 'c': none}.items() %}{{ k }}={{ v }};{% endfor %}

{% for i in range(10) %}{% if i is divisibleby 3 %}{% continue %}{% endif %}{% if i > 7 %}{% break %}{% endif %}{{ i }}{% endfor %}

{{ 'abcdef'[1:4] }} {{ 'abcdef'[::-2] }} {{ [1, 2, 3, 4][-2:] }} {{ 'x,y,,z'.split(',') }} {{ '  pad  '.strip() }}|{{ '  pad  '.lstrip() }}|{{ '  pad  '.rstrip() }}|
{{ 7 // 2 }} {{ -7 // 2 }} {{ 7 % 3 }} {{ -7 % 3 }} {{ 7 / 2 }} {{ 2 ** 10 }} {{ 1.5 + 2 }} {{ 0.1 + 0.2 }} {{ 10 / 4 }} {{ 3 * 'ab' }}
{{ 'a' ~ 1 ~ none ~ true }} {{ 'x' if none else 'y' }} {{ 'z' if 0 }}| {{ undefined_var is defined }} {{ undefined_var | default('dflt') }} {{ '' | default('e', true) }}
{{ 'Hello World'.lower() }} {{ 'hello world'.title() }} {{ 'hello' | capitalize }} {{ 'a-b-c'.replace('-', '+') }} {{ 'abc'.startswith('ab') }} {{ 'abc'.endswith(('x', 'c')) }}
{{ [3, 1, 2] | first }} {{ [3, 1, 2] | last }} {{ [3, 1, 2] | reverse | list }} {{ 'héllo' | length }} {{ {'k': 'v'} | length }} {{ 'é' in 'café' }} {{ 2 in [1, 2] }} {{ 'k' not in {'k': 1} }}
{{ {'b': 1, 'a': [1.5, 'é', none, true]} | tojson }} {{ [1, {'x': 'y'}] | tojson(indent=2) }}
{%- set block %}
inside {{ 1 + 1 }}
{%- endset %}
[{{ block }}] {{ "esc\\t\\"q\\" \\u00e9 \\x41" }} {{ 'it''s' }} {{ "a" "b" }}
    {% if true %}
    indented block tag above is stripped
    {% endif %}
{{- '  dash-stripped' }}
{{ messages[0].content | trim }}|{{ messages[-1]['role'] }}|{{ messages[5] is defined }}
{% set ns = namespace(count=0) %}{% for m in messages %}{% set ns.count = ns.count + 1 %}{% endfor %}count={{ ns.count }}
{% set x = 1 %}{% for i in [1, 2] %}{% set x = x + i %}{{ x }}{% endfor %} after={{ x }}
{{ 1 == 1.0 }} {{ true == 1 }} {{ 'a' < 'b' }} {{ [1, 2] == [1, 2] }} {{ none is none }} {{ 3 is odd }} {{ 'abc' is string }} {{ {} is mapping }} {{ 1 is number }}
{{ -3 | abs }} {{ '42' | int + 1 }} {{ 3.7 | int }} {{ '2.5' | float }} {{ 5 | string ~ '!' }} {{ [1, [2, 'x']] }} {{ {'q': "it's"} }}
"""

CONVS = {
    "simple": [{"role": "user", "content": "What is the capital of France?"}],
    "system": [{"role": "system", "content": "You are terse."},
               {"role": "user", "content": "Hi there"},
               {"role": "assistant", "content": "  Hello!  "},
               {"role": "user", "content": "Tell me a joke\nin two lines."}],
    "multi": [{"role": "user", "content": "A"}, {"role": "assistant", "content": "B"},
              {"role": "user", "content": "C — ünïcødé 😀"}],
    "think": [{"role": "user", "content": "2+2?"},
              {"role": "assistant", "content": "<think>\nadd\n</think>\n\n4"},
              {"role": "user", "content": "and 3+3?"}],
    "tools": [{"role": "system", "content": "Use tools."},
              {"role": "user", "content": "Weather in Paris?"},
              {"role": "assistant", "content": "",
               "tool_calls": [{"type": "function", "function": {
                   "name": "get_weather", "arguments": {"city": "Paris", "unit": "c"}}}]},
              {"role": "tool", "content": "{\"temp\": 18}"},
              {"role": "tool", "content": "{\"sky\": \"clear\"}"},
              {"role": "assistant", "content": "18 °C and clear."}],
    "bad_order": [{"role": "user", "content": "A"}, {"role": "user", "content": "B"}],
}
TOOLS = [{"type": "function", "function": {"name": "get_weather", "description": "Weather now",
          "parameters": {"type": "object", "properties": {"city": {"type": "string"}},
                         "required": ["city"]}}}]

TEMPLATES = {"smollm2": SMOLLM2, "chatml_tools": CHATML_TOOLS, "llama3": LLAMA3,
             "mistral": MISTRAL, "gemma": GEMMA, "phi3": PHI3, "deepseek": DEEPSEEK,
             "features": FEATURES}

ERRORS = {
    "unclosed_if": "{% if messages %}x",
    "unclosed_tag": "{{ messages ",
    "undefined_attr": "{{ nothing.here.x }}",
    "bad_filter": "{{ 'a' | no_such_filter }}",
    "list_mutation": "{% set l = [1] %}{{ l.append(2) }}",
    "add_types": "{{ 'a' + 1 }}",
    "huge_range": "{% for i in range(100000000) %}x{% endfor %}",
}


def main():
    env = make_env()
    cases = []
    for tname, tmpl in TEMPLATES.items():
        for cname, conv in CONVS.items():
            for agp in (True, False):
                ctx = {"messages": conv, "add_generation_prompt": agp, "bos_token": "<s>",
                       "eos_token": "</s>"}
                if tname == "chatml_tools" and cname == "tools":
                    ctx["tools"] = TOOLS
                case = {"name": f"{tname}/{cname}/{'gen' if agp else 'nogen'}",
                        "template": tmpl, "context": ctx}
                try:
                    case["expect"] = env.from_string(tmpl).render(**ctx)
                except jinja2.exceptions.TemplateError as e:
                    case["error"] = str(e)
                cases.append(case)
    for ename, tmpl in ERRORS.items():
        ctx = {"messages": CONVS["simple"]}
        case = {"name": f"error/{ename}", "template": tmpl, "context": ctx}
        try:
            out = env.from_string(tmpl).render(**ctx)
            if ename == "huge_range":  # jinja2 renders it (slowly); hyb refuses past its limit
                case["error"] = "range()"
            else:
                case["expect"] = out
        except Exception as e:  # noqa: BLE001 - any jinja2 failure is an expected error
            case["error"] = ""  # hyb's own message names the position; only failure is compared
        cases.append(case)
    json.dump({"generator": f"jinja2 {jinja2.__version__}", "cases": cases}, sys.stdout,
              ensure_ascii=False, indent=1)
    sys.stdout.write("\n")


if __name__ == "__main__":
    main()
