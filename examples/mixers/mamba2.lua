-- examples/mixers/mamba2.lua: Mamba-2 (SSD, Dao & Gu 2024) written with hyb's tensor ops; the
-- prototype of plugins/mamba2 (same parameter names, shapes and config keys: docs/MAMBA2.md), so
-- one checkpoint loads into either. Per token u: z, xBC, dt = split(in_proj(u), [Di, Cd, nh]);
-- x, B, C = split(silu(conv1d(xBC) + bias), [Di, G N, G N]); dt = softplus(dt + dt_bias),
-- a = dt A (A = -exp(A_log), a scalar per head); h = exp(a) h + dt x B^T; y = h C + D x;
-- out = out_proj(rmsnorm_per_group(y silu(z)) norm.weight). The parallel form is the chunked SSD:
-- inside a chunk a masked quadratic form (segment sums), across chunks the states. Tensors have at
-- most 4 dims, so [B, nc, Q, ...] is folded to [B nc, ...] and a state [Pd, N] to Pd N columns.
-- Tensors made here (masks, padding) follow the input's device, so the same code runs on CUDA.
local function dims(c, D)
  local Di = c.d_inner > 0 and c.d_inner or c.expand * D
  local Pd = math.min(c.headdim, Di)
  local nh, GN = Di // Pd, c.ngroups * c.d_state
  return Di, Pd, nh, GN, Di + 2 * GN
end
-- exp of the segment sums of a [.., L] (sum of a over (j, i], summed directly, not as a difference
-- of prefix sums, as the paper's stable segsum), 0 above the diagonal: [.., L, L]
local function segexp(a)
  local s, L = a:shape(), a:shape()[a:ndim()]
  local n = a:ndim()
  s[n + 1] = L
  return (a:unsqueeze(n + 1):expand(s) * hyb.ones({L, L}):tril(-1):to(a:device())):cumsum(n):exp():tril()
end
-- per-head views of the group-shared B or C [B, T, G N] -> [B, T, nh, N]
local function heads(t, c, nh)
  local s = t:shape()
  return t:reshape({s[1] * s[2], c.ngroups, 1, c.d_state})
          :expand({-1, -1, nh // c.ngroups, -1}):reshape({s[1], s[2], nh, c.d_state})
end
-- in_proj and the conv's output (before silu) -> x, B, C [B, T, G N], dt, z; xc [B, T, Cd]
local function split(c, p, zxbcdt, xc, D)
  local Di, Pd, nh, GN, Cd = dims(c, D)
  local u = (xc + p["conv1d.bias"]):silu()
  local dt = (zxbcdt:narrow(3, Di + Cd + 1, nh) + p["dt_bias"]):softplus()
  return u:narrow(3, 1, Di), u:narrow(3, Di + 1, GN), u:narrow(3, Di + GN + 1, GN), dt, zxbcdt:narrow(3, 1, Di)
end
-- y [B, T, Di] (SSD + D x) -> out_proj(rmsnorm_g(y silu(z)) w)
local function gate_out(c, p, y, z)
  local s = y:shape()
  local g = (y * z:silu()):reshape({s[1], s[2], c.ngroups, s[3] // c.ngroups})
  g = g * ((g * g):mean(4, true) + c.norm_eps):rsqrt()
  return (g:reshape(s) * p["norm.weight"]):matmul(p["out_proj.weight"]:transpose())
end

return {
  name = "mamba2",
  config = {d_inner = 0, expand = 2, headdim = 64, ngroups = 1, d_state = 64, d_conv = 4, chunk_size = 64,
            norm_eps = 1e-5, dt_min = 0.001, dt_max = 0.1, dt_init_floor = 1e-4, A_init_min = 1, A_init_max = 16},
  -- the plugin draws uniform ranges; mixerlib has normal draws and constants: the same variances,
  -- dt at the geometric mean of [dt_min, dt_max] and A at the middle of its range for every head
  params = function(c, d)
    local D = d.d_model
    local Di, Pd, nh, GN, Cd = dims(c, D)
    assert(Di % Pd == 0 and nh % c.ngroups == 0 and Di % c.ngroups == 0, "mamba2: headdim must divide d_inner and ngroups the heads")
    local dt = math.max(math.sqrt(c.dt_min * c.dt_max), c.dt_init_floor)
    return {
      {name = "in_proj.weight", shape = {2 * Di + 2 * GN + nh, D}, std = (3 * D) ^ -0.5},
      {name = "conv1d.weight", shape = {Cd, 1, c.d_conv}, std = (3 * c.d_conv) ^ -0.5},
      {name = "conv1d.bias", shape = {Cd}, std = (3 * c.d_conv) ^ -0.5},
      {name = "dt_bias", shape = {nh}, init = math.log(math.exp(dt) - 1)},
      {name = "A_log", shape = {nh}, init = math.log((c.A_init_min + c.A_init_max) / 2)},
      {name = "D", shape = {nh}, init = "ones"},
      {name = "norm.weight", shape = {Di}, init = "ones"},
      {name = "out_proj.weight", shape = {D, Di}, std = (3 * Di) ^ -0.5},
    }
  end,
  state = function(c, d)
    local Di, Pd, nh, GN, Cd = dims(c, d.d_model)
    return {ssm_state = {nh, Pd, c.d_state}, conv_state = {Cd, c.d_conv}}
  end,
  forward = function(p, x, c)
    local B, T, D = table.unpack(x:shape())
    local Di, Pd, nh, GN, Cd = dims(c, D)
    local N, Q = c.d_state, math.min(c.chunk_size, T)
    local nc = (T + Q - 1) // Q
    local zxbcdt = x:matmul(p["in_proj.weight"]:transpose())                       -- [B, T, Pin]
    local xc = hyb.conv1d_causal(zxbcdt:narrow(3, Di + 1, Cd), p["conv1d.weight"]:reshape({Cd, c.d_conv}))
    local xs, Bg, Cg, dt, z = split(c, p, zxbcdt, xc, D)
    local G, hg = c.ngroups, nh // c.ngroups                    -- groups, heads per group
    local a = dt * -p["A_log"]:exp()                                              -- [B, T, nh]
    local X = xs:reshape({B, T, nh, Pd}) * dt:unsqueeze(4)
    local function chunks(t)                       -- [B, T, nh, n] -> [B nc, nh, Q, n], zero-padded
      local s = t:shape()
      if nc * Q > T then t = hyb.cat({t, hyb.zeros({B, nc * Q - T, s[3], s[4]}):to(x:device())}, 2) end
      return t:reshape({B * nc, Q, s[3], s[4]}):permute({1, 3, 2, 4})
    end
    -- B and C are shared by the heads of a group: products per group, heads folded beside them
    X, Bg, Cg = chunks(X), chunks(Bg:reshape({B, T, G, N})), chunks(Cg:reshape({B, T, G, N}))
    a = chunks(a:unsqueeze(4)):squeeze(4)                                         -- [B nc, nh, Q]
    local L = segexp(a)                                                           -- [B nc, nh, Q, Q]
    local CB = Cg:matmul(Bg:transpose()):reshape({B * nc * G, 1, Q, Q})           -- intra-chunk
    local Y = (CB * L:reshape({B * nc * G, hg, Q, Q})):matmul(X:reshape({B * nc * G, hg, Q, Pd}))
    Y = Y:reshape({B * nc, nh, Q, Pd})
    local acum = a:cumsum(3)
    local last = acum:narrow(3, Q, 1)                                             -- [B nc, nh, 1]
    -- the state each chunk adds, sum_j exp(seg(end, j)) X_j B_j^T: [B nc, nh, Pd, N]
    local S = (X * L:narrow(3, Q, 1):transpose()):transpose():reshape({B * nc, G, hg * Pd, Q}):matmul(Bg)
    -- inter-chunk: the state entering chunk k is sum_{j<k} exp(a_{j+1} + .. + a_{k-1}) S_j
    local tot = last:reshape({B, nc, nh}):permute({1, 3, 2})                      -- [B, nh, nc]
    tot = hyb.cat({hyb.zeros({B, nh, 1}):to(x:device()), tot}, 3)
    S = hyb.cat({hyb.zeros({B, nh, 1, Pd * N}):to(x:device()), S:reshape({B, nc, nh, Pd * N}):permute({1, 3, 2, 4})}, 3)
    local S0 = segexp(tot):matmul(S):narrow(3, 1, nc)                             -- [B, nh, nc, Pd N]
    S0 = S0:permute({1, 3, 2, 4}):reshape({B * nc, G, hg * Pd, N})
    local Yo = Cg:matmul(S0:transpose()):reshape({B * nc * G, Q, hg, Pd}):permute({1, 3, 2, 4})
    Y = Y + Yo:reshape({B * nc, nh, Q, Pd}) * acum:exp():unsqueeze(4)            -- from the state
    Y = Y:permute({1, 3, 2, 4}):reshape({B, nc * Q, Di}):narrow(2, 1, T)
    Y = Y + (xs:reshape({B, T, nh, Pd}) * p["D"]:unsqueeze(2)):reshape({B, T, Di})
    return gate_out(c, p, Y, z)
  end,
  step = function(p, x, st, c)                                                    -- x [B, 1, D]
    local B, _, D = table.unpack(x:shape())
    local Di, Pd, nh, GN, Cd = dims(c, D)
    local zxbcdt = x:matmul(p["in_proj.weight"]:transpose())
    local win = hyb.cat({st.conv_state:narrow(3, 2, c.d_conv - 1), zxbcdt:narrow(3, Di + 1, Cd):transpose()}, 3)
    local xc = (win * p["conv1d.weight"]:reshape({Cd, c.d_conv})):sum(3, true):transpose()   -- [B, 1, Cd]
    local xs, Bg, Cg, dt, z = split(c, p, zxbcdt, xc, D)
    local Bh, Ch = heads(Bg, c, nh), heads(Cg, c, nh)
    dt = dt:reshape({B, nh, 1, 1})
    local h = st.ssm_state * (dt * -p["A_log"]:exp():reshape({nh, 1, 1})):exp()
            + (xs:reshape({B, nh, Pd, 1}) * dt):matmul(Bh:reshape({B, nh, 1, c.d_state}))
    local y = h:matmul(Ch:reshape({B, nh, c.d_state, 1})):reshape({B, 1, Di})
    y = y + (xs:reshape({B, 1, nh, Pd}) * p["D"]:unsqueeze(2)):reshape({B, 1, Di})
    return gate_out(c, p, y, z), {ssm_state = h, conv_state = win}
  end,
  -- MIL init from the attention it replaces (as plugins/mamba2): x rows <- v_proj (Di = kv heads x
  -- head_dim), B rows <- k_proj (ngroups = kv heads, d_state = head_dim), C rows <- q_proj (with
  -- GQA the mean of the query heads sharing a key head), out_proj <- o_proj (with GQA the sum of
  -- those heads' column blocks); z, dt rows and the rest keep their fresh draws
  init_from = function(p, src, c)
    local q, k, v, o = src.params["q_proj.weight"], src.params["k_proj.weight"], src.params["v_proj.weight"], src.params["o_proj.weight"]
    if not (q and k and v and o) then error("mamba2 init_from needs q_proj, k_proj, v_proj, o_proj of an attention layer") end
    local D, Di, GN = q:shape()[2], p["norm.weight"]:shape()[1], k:shape()[1]
    local hd, KV = c.d_state, c.ngroups
    if v:shape()[1] ~= Di or GN ~= KV * hd then
      error(("mamba2 init_from: needs d_inner = %d (v_proj rows) and ngroups x d_state = %d (k_proj rows), got d_inner %d, ngroups %d, d_state %d")
        :format(v:shape()[1], GN, Di, KV, hd))
    end
    local rep = q:shape()[1] // GN
    local W = p["in_proj.weight"]
    return {["in_proj.weight"] = hyb.cat({W:narrow(1, 1, Di), v, k, q:reshape({KV, rep, hd * D}):mean(2):reshape({GN, D}),
                                          W:narrow(1, 2 * Di + 2 * GN + 1, W:shape()[1] - 2 * Di - 2 * GN)}, 1),
            ["out_proj.weight"] = o:reshape({D, KV, rep, hd}):sum(3):reshape({D, Di})}
  end,
}
