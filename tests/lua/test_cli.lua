-- tests/lua/test_cli.lua: the hyb command line, driven through io.popen: exit codes, the error
-- message of a failing script (the traceback only with --verbose / HYB_VERBOSE=1), script
-- arguments, the shipped-script wrapper, every shipped command's --help, and flag values outside
-- their ranges refused with the range and without a traceback.
-- Run: hyb run tests/lua/test_cli.lua
local H = dofile((arg[0]:match("^(.*)/[^/]*$") or ".") .. "/harness.lua")

local exe = arg[-1]
if not exe or not exe:find("/") then H.skip("cannot tell where the hyb binary is (arg[-1] = " .. tostring(exe) .. ")") end
local HYB = H.quote(exe)
local tmp = H.tmpdir()

local function write(path, text)
  local f = assert(io.open(path, "w"))
  f:write(text)
  f:close()
end

H.run("failing script: message, traceback, exit 1", function()
  local script = tmp .. "/fail.lua"
  write(script, [[
local function inner_fn() error("deliberate failure 42") end
local function outer_fn() inner_fn() end
outer_fn()
]])
  local out, code = H.sh(HYB .. " run " .. H.quote(script))
  H.eq(code, 1, "exit status")
  H.check(out:find("hyb: " .. script .. ":1: deliberate failure 42", 1, true), "message with file:line: " .. out)
  H.check(not out:find("stack traceback:", 1, true), "no traceback without --verbose: " .. out)
  out, code = H.sh(HYB .. " --verbose run " .. H.quote(script))
  H.eq(code, 1, "exit status with --verbose")
  H.check(out:find("stack traceback:", 1, true) and out:find("inner_fn", 1, true), "hyb --verbose: traceback: " .. out)
  out, code = H.sh("HYB_VERBOSE=1 " .. HYB .. " run " .. H.quote(script))
  H.eq(code, 1, "exit status with HYB_VERBOSE=1")
  H.check(out:find("hyb: " .. script .. ":1: deliberate failure 42", 1, true), "message with file:line: " .. out)
  H.check(out:find("stack traceback:", 1, true), "traceback present")
  H.check(out:find("inner_fn", 1, true) and out:find("outer_fn", 1, true), "traceback names the functions")
  H.check(out:find(script .. ":3: in main chunk", 1, true), "traceback reaches the main chunk")
end)

H.run("error in a binding: script location and C frame", function()
  local script = tmp .. "/badarg.lua"
  write(script, "local x = 1\nlocal t = hyb.tensor({2, -3})\n")
  local out, code = H.sh("HYB_VERBOSE=1 " .. HYB .. " run " .. H.quote(script))
  H.eq(code, 1, "exit status")
  H.check(out:find(script .. ":2: hyb.tensor: shape entry 2 must be a positive integer, got -3", 1, true),
    "binding error names the script line: " .. out)
  H.check(out:find("in function 'hyb.tensor'", 1, true), "traceback shows the C function")
end)

H.run("syntax error and missing file", function()
  local script = tmp .. "/syntax.lua"
  write(script, "local = 3\n")
  local out, code = H.sh(HYB .. " run " .. H.quote(script))
  H.eq(code, 1, "syntax error exit status")
  H.check(out:find("hyb: " .. script .. ":1:", 1, true), "syntax error names file:line: " .. out)
  out, code = H.sh(HYB .. " run " .. H.quote(tmp .. "/nope.lua"))
  H.eq(code, 1, "missing file exit status")
  H.check(out:find("cannot open", 1, true), "missing file message: " .. out)
end)

H.run("script arguments and exit codes", function()
  local script = tmp .. "/args.lua"
  write(script, [[
local n = select("#", ...)
print(("n=%d arg0=%s a1=%s a2=%s v1=%s"):format(n, arg[0], arg[1], arg[2], (...)))
if arg[1] == "exit" then os.exit(tonumber(arg[2])) end
]])
  local out, code = H.sh(HYB .. " run " .. H.quote(script) .. " alpha 'b c'")
  H.eq(code, 0, "exit status 0")
  H.check(out:find("n=2 arg0=" .. script .. " a1=alpha a2=b c v1=alpha", 1, true), "arg table and varargs: " .. out)
  out, code = H.sh(HYB .. " run " .. H.quote(script) .. " exit 5")
  H.eq(code, 5, "os.exit status passes through")
  out, code = H.sh(HYB .. " run -e " .. H.quote("print('chunk', arg[1]); assert(hyb.tensor)") .. " z")
  H.eq(code, 0, "run -e status")
  H.check(out:find("chunk\tz", 1, true), "run -e output: " .. out)
  out, code = H.sh("echo 'print(\"stdin\", arg[1])' | " .. HYB .. " run - q")
  H.eq(code, 0, "run - status")
  H.check(out:find("stdin\tq", 1, true), "run - reads the script from stdin: " .. out)
end)

H.run("Ctrl-C stops a script with a traceback", function()
  -- wait until the script runs (its handler is installed by then), then send SIGINT
  local log = tmp .. "/interrupt.log"
  local code = "io.write('ready\\n') io.flush() local x = 0 while true do x = x + 1 end"
  local cmd = "( HYB_VERBOSE=1 " .. HYB .. " run -e " .. H.quote(code) .. " > " .. H.quote(log) .. " 2>&1 & pid=$!; " ..
    "for i in $(seq 200); do grep -q ready " .. H.quote(log) .. " && break; sleep 0.1; done; " ..
    "kill -INT $pid; wait $pid; echo \"status $?\"; cat " .. H.quote(log) .. " )"
  local out = H.sh(cmd)
  H.check(out:find("hyb: interrupted", 1, true) and out:find("stack traceback:", 1, true),
    "interrupted message and traceback: " .. out)
  H.check(out:find("status 1", 1, true), "exit status 1 after an interrupt: " .. out)
end)

H.run("usage errors exit 2", function()
  local out, code = H.sh(HYB)
  H.eq(code, 2, "no command")
  H.check(out:find("usage: hyb", 1, true), "usage printed")
  out, code = H.sh(HYB .. " frobnicate")
  H.eq(code, 2, "unknown command")
  H.check(out:find("unknown command 'frobnicate'", 1, true) and out:find("usage:", 1, true), "unknown command message: " .. out)
  out, code = H.sh(HYB .. " run")
  H.eq(code, 2, "run without a script")
  out, code = H.sh(HYB .. " ../etc/passwd")
  H.eq(code, 2, "a path is not a script name")
end)

-- the prompt on a pipe (the terminal side is tests/repl_tmux.sh): expressions print, statements
-- run, an unfinished statement continues, an error is one line and the session goes on
H.run("repl on standard input", function()
  local input = tmp .. "/repl.in"
  write(input, 'x = 20 + 1\n=x * 2\nerror("boom 5")\nfor i = 1, 2 do\n  x = x + i\nend\nx, "s", {1, k = true}\n')
  local out, code = H.sh(HYB .. " repl < " .. H.quote(input))
  H.eq(code, 0, "repl exit status at the end of input")
  H.check(out:find("42\n", 1, true), "=x * 2 printed 42: " .. out)
  H.check(out:find("boom 5", 1, true) and not out:find("traceback", 1, true), "one-line error: " .. out)
  H.check(out:find('24\t"s"\t{1, k = true}', 1, true), "values after the error and the loop: " .. out)
end)

H.run("version, help, plugins", function()
  local out, code = H.sh(HYB .. " version")
  H.eq(code, 0, "version status")
  H.check(out:find("^hyb %d+%.%d+%.%d+") ~= nil, "version text: " .. out)
  out, code = H.sh(HYB .. " help")
  H.eq(code, 0, "help status")
  H.check(out:find("run <script.lua>", 1, true), "help lists run")
  out, code = H.sh(HYB .. " plugins")
  H.eq(code, 0, "plugins status")
  H.check(out:find("plugin search path:", 1, true), "plugins shows the search path: " .. out)
end)

H.run("shipped-script wrapper", function()
  local sd = tmp .. "/scripts"
  os.execute("mkdir -p " .. H.quote(sd))
  write(sd .. "/hello.lua", 'print("hello from " .. arg[0]:match("[^/]*$") .. " " .. (arg[1] or "-"))\n')
  write(sd .. "/util.lua", "return {answer = 42}\n")
  write(sd .. "/usesutil.lua", 'print("answer " .. require("util").answer)\n')
  local env = "HYB_SCRIPTS_DIR=" .. H.quote(sd) .. " "
  local out, code = H.sh(env .. HYB .. " hello world")
  H.eq(code, 0, "wrapper status")
  H.check(out:find("hello from hello.lua world", 1, true), "wrapper runs scripts/hello.lua with args: " .. out)
  out, code = H.sh(env .. HYB .. " usesutil")
  H.check(code == 0 and out:find("answer 42", 1, true), "scripts dir is on package.path: " .. out)
  out, code = H.sh(env .. HYB .. " help")
  H.check(out:find("hello", 1, true), "help lists the shipped scripts")
  out, code = H.sh(env .. HYB .. " nosuchscript")
  H.eq(code, 2, "missing shipped script is an unknown command")
end)

-- issue 19: `hyb run scripts/bench_cpu.lua --help` crashed, and usage mistakes printed tracebacks
H.run("every shipped command takes --help", function()
  local src = os.getenv("HYB_SOURCE_DIR") or "."
  local p = assert(io.popen("ls " .. H.quote(src .. "/scripts")))
  local n = 0
  for f in p:lines() do
    local name = f:match("^(.+)%.lua$")
    if name and not name:match("lib$") then
      n = n + 1
      for _, how in ipairs({" " .. name, " run " .. H.quote(src .. "/scripts/" .. f)}) do
        local out, code = H.sh(HYB .. how .. " --help")
        H.eq(code, 0, "hyb" .. how .. " --help: exit status")
        H.check(out:find("usage: hyb " .. name, 1, true), "hyb" .. how .. " --help prints its usage: " .. out)
        H.check(not out:find("stack traceback", 1, true), "hyb" .. how .. " --help: no traceback")
      end
    end
  end
  p:close()
  H.check(n >= 10, "found the shipped scripts: " .. n)
end)

H.run("flag values outside their ranges are refused with the range", function()
  local cases = {
    {"generate --top-p 2 hi", "--top-p must be in (0, 1], got 2"},
    {"generate --temperature -1 hi", "--temperature must be in [0, 100], got -1"},
    {"generate --max-tokens 0 hi", "--max-tokens must be in [1, 16777216], got 0"},
    {"generate --top-k x hi", "--top-k must be an integer, got 'x'"},
    {"chat --repetition-penalty 0", "--repetition-penalty must be in (0, 100], got 0"},
    {"teacher_data --out x --top-p 1.5", "--top-p must be in (0, 1], got 1.5"},
    {"importance --batch 0 --teacher t --data d", "--batch must be in [1, 65536], got 0"},
    {"eval --val-fraction 2 --teacher t --data d", "--val-fraction must be in (0, 1], got 2"},
    {"mil_check --seq-len 2.5", "--seq-len needs an integer"},
    {"eval --nope", "unknown option --nope"},
    {"bench --reps 0", "--reps must be >= 1"},
    {"bench_cpu --bogus", "unknown option --bogus"},
    {"distill --bogus", "unknown option --bogus"},
    {"eval --prompt-lne 3 --teacher t --data d", "unknown option --prompt-lne (did you mean --prompt-len?)"},
    {"importance --mmr-step 3", "unknown option --mmr-step (did you mean --mmr-steps?)"},
    {"importance --loo-by ce --teacher t --data d", "--loo-by must be rkl or nll, got \"ce\""},
    {"generate --max-token 3 hi", "unknown option --max-token (did you mean --max-tokens?)"},
    {"samples tok 0 m", "N must be an integer in [1, 16777216], got '0'"},
    {"export m.gguf out --dtype q8", "--dtype must be f32 or bf16, got 'q8'"},
    {"export m.gguf", "needs MODEL and OUT"},
    {"generate --quant turbo hi", "--quant must be off, precise or fast, got 'turbo'"},
    {"chat --quant q8", "--quant must be off, precise or fast, got 'q8'"},
    {"serve --quant 4bit m.gguf", "--quant must be off, precise or fast, got '4bit'"},
    {"bench_cpu --quant fastest", "--quant must be off, precise or fast, got 'fastest'"},
    {"teacher_data --out x --quant no", "--quant must be off, precise or fast, got 'no'"},
    {"generate --kv-cache q4 hi", "--kv-cache must be one of f16, q8_0, f32, got 'q4'"},
    {"chat --kv-cache=F16", "--kv-cache must be one of f16, q8_0, f32, got 'F16'"},
    {"serve --kv-cache bf16", "--kv-cache must be one of f16, q8_0, f32, got 'bf16'"},
    {"teacher_data --out x --kv-cache q8", "--kv-cache must be one of f16, q8_0, f32, got 'q8'"},
    {"bench_cpu --kv-cache q4", "--kv-cache must be one of f16, q8_0, f32, got 'q4'"},
  }
  for _, c in ipairs(cases) do
    local out, code = H.sh(HYB .. " " .. c[1])
    H.eq(code, 2, "hyb " .. c[1] .. ": exit status 2")
    H.check(out:find(c[2], 1, true), "hyb " .. c[1] .. ": names the flag and range: " .. out)
    H.check(out:find("usage: hyb", 1, true), "hyb " .. c[1] .. ": usage line")
    H.check(not out:find("stack traceback", 1, true), "hyb " .. c[1] .. ": no traceback")
  end
end)

H.rmdir(tmp)
os.exit(H.done())
