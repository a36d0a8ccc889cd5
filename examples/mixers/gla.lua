-- examples/mixers/gla.lua: a gated linear attention mixer written with hyb's tensor ops
-- (scalar data-dependent decay per head, as in GLA / Mamba-2's SSD without the conv):
--   q, k, v = x Wq, x Wk, x Wv (heads of head_dim); a_t = -softplus(x Wa) (log decay per head)
--   o_t = sum_{s <= t} exp(A_t - A_s) (q_t . k_s) v_s with A = cumsum(a);  y = o Wo
-- Parallel form: one masked [T, T] decay matrix per head. Step form: S = exp(a_t) S + k_t^T v_t,
-- o_t = q_t S. Autodiff supplies the backward. Loaded by scripts/mixerlib.lua.
return {
  name = "gla",
  config = {heads = 2, head_dim = 8},
  params = function(c, dims)
    local D, HD = dims.d_model, c.heads * c.head_dim
    return {
      {name = "q_proj.weight", shape = {HD, D}, std = D ^ -0.5},
      {name = "k_proj.weight", shape = {HD, D}, std = D ^ -0.5},
      {name = "v_proj.weight", shape = {HD, D}, std = D ^ -0.5},
      {name = "a_proj.weight", shape = {c.heads, D}, std = D ^ -0.5},
      {name = "o_proj.weight", shape = {D, HD}, std = HD ^ -0.5},
    }
  end,
  state = function(c) return {S = {c.heads, c.head_dim, c.head_dim}} end,
  -- x [B, T, D] -> heads [B, H, T, hd]
  heads = function(c, x, W)
    local s = x:shape()
    return x:matmul(W:transpose()):reshape({s[1], s[2], c.heads, c.head_dim}):permute({1, 3, 2, 4})
  end,
  forward = function(p, x, c, self)
    local s = x:shape()
    local q, k, v = self.heads(c, x, p["q_proj.weight"]), self.heads(c, x, p["k_proj.weight"]),
                    self.heads(c, x, p["v_proj.weight"])
    local A = (-x:matmul(p["a_proj.weight"]:transpose()):softplus()):transpose(2, 3):cumsum(3)
    -- exp(A_t - A_s) for s <= t (where it is <= 0), 0 above the diagonal: [B, H, T, T]
    local decay = hyb.minimum(A:unsqueeze(4) - A:unsqueeze(3), 0):exp():tril()
    local o = (q:matmul(k:transpose()) * decay):matmul(v)                        -- [B, H, T, hd]
    o = o:permute({1, 3, 2, 4}):reshape({s[1], s[2], c.heads * c.head_dim})
    return o:matmul(p["o_proj.weight"]:transpose())
  end,
  -- MIL-style init from the attention layer it replaces: its q, k, v, o projections (k and v
  -- heads repeated for grouped-query attention) when head_dim and the head count fit
  init_from = function(p, src, c)
    local q, k, v, o = src.params["q_proj.weight"], src.params["k_proj.weight"], src.params["v_proj.weight"], src.params["o_proj.weight"]
    if not (q and q:shape()[1] == c.heads * c.head_dim) then error("needs q_proj [heads * head_dim, D] of an attention layer") end
    local D, KV = q:shape()[2], k:shape()[1] // c.head_dim
    local rep = function(w) return w:reshape({KV, 1, c.head_dim, D}):expand({KV, c.heads // KV, c.head_dim, D}):reshape({c.heads * c.head_dim, D}) end
    return {["q_proj.weight"] = q, ["k_proj.weight"] = rep(k), ["v_proj.weight"] = rep(v), ["o_proj.weight"] = o}
  end,
  step = function(p, x, state, c, self) -- x [B, 1, D]
    local s = x:shape()
    local q, k, v = self.heads(c, x, p["q_proj.weight"]), self.heads(c, x, p["k_proj.weight"]),
                    self.heads(c, x, p["v_proj.weight"])
    local g = (-x:matmul(p["a_proj.weight"]:transpose()):softplus()):exp()      -- [B, 1, H]
    local S = state.S * g:reshape({s[1], c.heads, 1, 1}) + k:transpose():matmul(v)
    local o = q:matmul(S):permute({1, 3, 2, 4}):reshape({s[1], 1, c.heads * c.head_dim})
    return o:matmul(p["o_proj.weight"]:transpose()), {S = S}
  end,
}
