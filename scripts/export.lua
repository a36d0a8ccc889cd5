-- scripts/export.lua: hyb export MODEL OUT [--dtype f32|bf16] [--tokenizer PATH]
-- Write a model (a .gguf, an HF / hyb model directory, or a distillation stage's model/) as an HF
-- directory: model.safetensors (f32 or bf16), config.json (llama, apriel_hybrid_ssm or hyb_hybrid:
-- docs/HF_CONFIG.md), layermap.toml, tokenizer.json + tokenizer_config.json (from --tokenizer, else
-- the model's own: the .gguf's vocabulary or the directory's tokenizer.json).
local hyb = require("hyb")
local gen = require("genlib")

local usage = gen.usage("export", [[
usage: hyb export MODEL OUT [--dtype f32|bf16] [--tokenizer PATH]
  MODEL             a .gguf, or a model directory (hyb or HF)
  OUT               the directory to write (created)
  --dtype D         f32 (default) or bf16 weights
  --tokenizer PATH  the tokenizer to write (a .gguf, a tokenizer.json or a directory holding
                    one); default: MODEL's own; none found is an error
]])
local opts = gen.parse_args(arg, {dtype = "string", tokenizer = "string"}, usage)
if #opts._ ~= 2 then usage("needs MODEL and OUT") end
local src, out = opts._[1], opts._[2]
local dtype = opts.dtype or "f32"
if dtype ~= "f32" and dtype ~= "bf16" then usage("--dtype must be f32 or bf16, got '" .. dtype .. "'") end

local function exists(p)
  local f = io.open(p, "rb")
  if f then f:close() end
  return f ~= nil
end
local tokpath = opts.tokenizer
if not tokpath then
  if src:match("%.gguf$") then
    tokpath = src
  elseif exists(src .. "/tokenizer.json") then
    tokpath = src
  else
    io.stderr:write("hyb export: ", src, " has no tokenizer.json: pass --tokenizer PATH\n")
    os.exit(2)
  end
end
local tok = hyb.data.tokenizer(tokpath)
local m = hyb.train.load(src)
m:save(out, {dtype = dtype})
tok:save(out)
print(("exported %s -> %s (%s weights, tokenizer from %s)"):format(src, out, dtype, tokpath))
