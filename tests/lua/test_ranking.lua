-- tests/lua/test_ranking.lua: scripts/rankinglib.lua, the scores behind hyb importance and the
-- progressive stages of hyb distill. An MMR probe trains only the swapped layer's mixer: every
-- other parameter of the probed model equals its value right after the MIL swap (the probe of
-- issue 17 trained everything), the mixer's own parameters move, the probe recovers KL, and
-- neither the student nor the teacher changes. LOO scores carry the held-out NLL beside the KL.
local hyb = require("hyb")
local H = dofile(arg[0]:match("^(.*)/[^/]*$") .. "/harness.lua")
package.path = (os.getenv("HYB_SOURCE_DIR") or ".") .. "/scripts/?.lua;" .. package.path
local K = require("rankinglib")

local root = os.getenv("HYB_SOURCE_DIR") or "."
hyb.log_level("warn")
local have_mamba = H.have_plugin("mamba1")
local teacher = hyb.model(root .. "/graphs/tiny.toml", {seed = 1})
local ds = hyb.data.dataset{files = {root .. "/examples/data"}, val_fraction = 0.1, seed = 1}
local o = {batches = 2, batch = 2, seq_len = 32}

H.run("LOO scores: rKL and NLL per layer, ordered by either", function()
  local s = K.loo(teacher, teacher, ds, {0, 1, 2, 3}, o)
  local _, tnll = K.heldout(teacher, teacher, ds, 2, 2, 32)
  for l = 0, 3 do
    H.check(s[l].rkl > 0 and s[l].nll > 0, "layer " .. l .. " scored")
    H.check(math.abs(s[l].nll - tnll) > 1e-6, "the LOO model's NLL differs from the teacher's")
  end
  local a, b = K.order(s, "rkl"), K.order(s, "nll")
  H.eq(#a, 4, "four layers ranked")
  for i = 2, 4 do
    H.check(s[a[i - 1]].rkl <= s[a[i]].rkl, "rkl order ascending")
    H.check(s[b[i - 1]].nll <= s[b[i]].nll, "nll order ascending")
  end
  H.eq(table.concat(K.remaining(teacher, teacher), ","), "0,1,2,3", "nothing converted yet")
end)

H.run("MMR probe trains only the swapped mixer", function()
  if not have_mamba then print("skip: no mamba1 plugin") return end
  local cfg = "d_inner = 128\nd_xb = 64\nd_state = 16"
  local student = hyb.train.clone(teacher)
  local before = {}
  for _, n in ipairs(student:params()) do before[n] = student:param(n):clone() end
  -- the model right after the MIL swap, as the probe makes it (same seed)
  local mil = hyb.train.clone(student)
  mil:swap(1, "mamba1", {init = "mil", seed = 1 + 1, config = cfg})
  local score, probed = K.mmr_probe(student, teacher, ds, 1, {mixer = "mamba1", config = cfg, steps = 4,
    lr = 3e-3, batch = 2, seq_len = 32, batches = 2, seed = 1, keep = true})
  local moved, mixer_params = 0, 0
  for _, n in ipairs(probed:params()) do
    local same = probed:param(n):equal(mil:param(n))
    if n:find("model.layers.1.mixer.", 1, true) == 1 then
      mixer_params = mixer_params + 1
      if not same then moved = moved + 1 end
    else
      H.check(same, n .. " is frozen during the probe")
    end
  end
  H.check(mixer_params > 5, "the mamba1 mixer has its parameters")
  H.check(moved >= mixer_params // 2, ("the mixer's parameters train (%d of %d moved)"):format(moved, mixer_params))
  H.check(score.kl_mil > 0 and score.kl_after < score.kl_mil, ("the probe recovers KL: %g -> %g"):format(score.kl_mil,
    score.kl_after))
  H.near(score.recovered, score.kl_after / score.kl_mil, 1e-9)
  local kl_mil = K.heldout(mil, teacher, ds, 2, 2, 32)
  H.near(score.kl_mil, kl_mil, 1e-6, "kl_mil is the held-out rKL right after the swap")
  for _, n in ipairs(student:params()) do
    H.check(student:param(n):equal(before[n]), n .. ": the student is not changed")
    H.check(teacher:param(n):equal(before[n]), n .. ": the teacher is not changed")
  end
  H.eq(student:pattern(), "tttt", "the student keeps its layers")
  -- K.mmr over layers, and a student with a converted layer: only the rest are candidates
  local s = K.mmr(teacher, teacher, ds, {0, 3}, {mixer = "mamba1", config = cfg, steps = 2, lr = 3e-3, batch = 2,
    seq_len = 32, batches = 1, seed = 1})
  H.check(s[0] and s[3] and not s[1], "the listed layers are probed")
  H.eq(table.concat(K.remaining(mil, teacher), ","), "0,2,3", "layer 1 is converted")
  -- a hybrid teacher's own mamba1 layer is no candidate (only attention layers are converted)
  mil:set_identity(3)
  H.eq(table.concat(K.remaining(mil, mil), ","), "0,2", "only the attention layers of a hybrid")
  local ty = K.mixer_types(mil)
  H.eq(ty[0] .. ty[1] .. ty[3], "mhamamba1identity", "mixer types by layer")
  H.raises(function() K.mmr_probe(teacher, teacher, ds, 1, {mixer = "identity", steps = 1, lr = 1e-3, batch = 1,
    seq_len = 8, batches = 1}) end, "layer 1's mixer has no parameters to train")
end)

H.run("json_decode reads what evallib writes", function()
  local E = require("evallib")
  local v = {a = {1, 2.5, "x\"y"}, b = {["0"] = 0.125, ["3"] = -1e-3}, c = true, d = "caf\195\169"}
  local back = K.json_decode(E.json(v))
  H.eq(back.a[2], 2.5)
  H.eq(back.a[3], "x\"y")
  H.eq(back.b["3"], -1e-3)
  H.eq(back.c, true)
  H.eq(back.d, "caf\195\169")
  H.raises(function() K.json_decode("{\"a\": [1,}", "r.json") end, "r.json: bad JSON at byte")
end)

os.exit(H.done())
