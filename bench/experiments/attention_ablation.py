"""Where the T5 train step's time goes: ms per step at one history bucket for variants of
the attention (monkeypatched into jaxrec.recommender.t5), TIGER preset (configs/tiger.py:
instruments, 4 + 4 layers, d 128, 6 heads x 64, user token), batch 256, random codes for
9,922 items. One variant per process, for a clean compile:

  python -m bench.experiments.attention_ablation VARIANT HISTORY_ITEMS [REPS]

The variants replace `t5.attend`: the encoder's and the decoder's self-attention (the
teacher-forced cross-attention is `Attention.attend_absorbed`, which they leave as is).
VARIANT: base; headsfirst (scores and weighted sum as [B, H, T, E] einsums); hfpad8 /
hfpad16 (the same with T padded to a multiple of 8 / 16); nodrop (no dropout anywhere);
nodrop_attn (no dropout on the attention weights); noattn (no scores, softmax or weighted
sum: what attention costs); threefry (jax.random dropout masks); acc32 (every projection's
product accumulated in fp32, then cast to the compute dtype). Prints one JSON line: ms per
step (median), samples/s, XLA's FLOPs of the step and the achieved GFLOP/s, and the machine
(device, CPU, jax / flax versions).
YNN=default|<fusion type> overrides jaxrec/xla.py's training setting; DTYPE=bfloat16 sets the
T5's compute dtype (train.dtype; fp32 parameters either way); XLA_OPTS='{"option": value}' adds
XLA compiler options (e.g. xla_cpu_prefer_vector_width).
PROFILE=DIR also traces two steps (jax.profiler, perfetto JSON under DIR) and prints where
a step's time goes, by kind of op (dense dots: projections, feed-forward, heads; attention
dots: scores and weighted sums; transposes/copies; element-wise and reduction fusions):
the ops' summed time, and the wall time of the second traced step that each kind covers
(XLA:CPU runs independent ops side by side, so summed times overstate ops that overlap,
such as the query, key and value projections); then the dense dots by shape with their
FLOPs and GFLOP/s, and the TOP (default 15) slowest ops with their HLO.
"""
import collections, functools, glob, gzip, json, math, os, re, sys, time
if not __package__:   # run as a file: the repository root, as `python -m` from it
  sys.path.insert(0, os.path.dirname(os.path.dirname(os.path.dirname(os.path.abspath(__file__)))))
import jax, jax.numpy as jnp, numpy as np
from bench import common
from jaxrec.config import get_config
from jaxrec.recommender import steps, t5
from jaxrec.recommender import t5_layers as t5lib
from jaxrec.recommender.t5 import T5
from jaxrec.recommender.t5_layers import model_config
from jaxrec.optim import TrainState
from jaxrec.xla import compiler_options
import optax

variant = sys.argv[1]; L = int(sys.argv[2]); reps = int(sys.argv[3]) if len(sys.argv) > 3 else 8
cfg = get_config("tiger", "instruments")
B = 256; C = 4; N = 9922
rng = np.random.default_rng(0)
codes = jnp.asarray(np.concatenate([rng.integers(0, 256, (N, 3)), rng.integers(0, 8, (N, 1))], 1).astype(np.int32))
hist = rng.integers(0, N, (B, L)).astype(np.int32)
lens = rng.integers(max(1, L // 2), L + 1, B)
mask = np.arange(L)[None] < lens[:, None]
batch = {"history_BxL": np.where(mask, hist, 0), "mask_BxL": mask, "target_B": rng.integers(0, N, B).astype(np.int32),
         "user_B": rng.integers(0, 3000, B).astype(np.int32), "weight_B": np.ones(B, np.float32)}

if variant.startswith("hfpad"):
  mult = int(variant[5:] or 8)
  def attend(q, k, v, bias, dropout_fn):
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))   # [B,H,T,E]
    tq, tk = qh.shape[2], kh.shape[2]
    pq, pk = -tq % mult, -tk % mult
    qh = jnp.pad(qh, ((0,0),(0,0),(0,pq),(0,0))); kh = jnp.pad(kh, ((0,0),(0,0),(0,pk),(0,0))); vh = jnp.pad(vh, ((0,0),(0,0),(0,pk),(0,0)))
    bias = jnp.broadcast_to(bias, bias.shape[:2] + (tq, tk))
    bias = jnp.pad(bias, ((0,0),(0,0),(0,pq),(0,pk)), constant_values=-1e9)
    s = jnp.einsum("bhqe,bhke->bhqk", qh, kh) + bias
    w = dropout_fn(jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(q.dtype))
    return jnp.swapaxes(jnp.einsum("bhqk,bhke->bhqe", w, vh), 1, 2)[:, :tq]
  t5lib.attend = attend
elif variant == "nodrop_attn":
  orig = t5lib.attend
  def attend(q, k, v, bias, dropout_fn):
    return orig(q, k, v, bias, lambda w: w)
  t5lib.attend = attend
elif variant == "headsfirst":
  def attend(q, k, v, bias, dropout_fn):
    qh, kh, vh = (jnp.swapaxes(x, 1, 2) for x in (q, k, v))   # [B,H,T,E]
    s = jnp.einsum("bhqe,bhke->bhqk", qh, kh) + bias
    w = dropout_fn(jax.nn.softmax(s.astype(jnp.float32), axis=-1).astype(q.dtype))
    return jnp.swapaxes(jnp.einsum("bhqk,bhke->bhqe", w, vh), 1, 2)
  t5lib.attend = attend
elif variant == "nodrop":
  class D(t5lib.Dropout):
    def __call__(self, x, deterministic): return x
  t5lib.Dropout = t5.Dropout = D     # the layers' and the T5's own (embedding) dropout
elif variant == "noattn":
  def attend(q, k, v, bias, dropout_fn):
    return v[:, :q.shape[1]] if v.shape[1] >= q.shape[1] else jnp.broadcast_to(v.mean(1, keepdims=True), q.shape)
  t5lib.attend = attend
elif variant == "acc32":
  def dot32(a, b):
    return jnp.dot(a, b, preferred_element_type=jnp.float32).astype(a.dtype)
  @jax.custom_vjp
  def matmul(x, w):
    return dot32(x, w)
  def matmul_bwd(res, dy):
    x, w = res
    x2, dy2 = x.reshape(-1, x.shape[-1]), dy.reshape(-1, dy.shape[-1])
    dw = jax.lax.dot_general(x2, dy2, (((0,), (0,)), ((), ())), preferred_element_type=jnp.float32)
    return dot32(dy, w.T), dw.astype(w.dtype)
  matmul.defvjp(lambda x, w: (dot32(x, w), (x, w)), matmul_bwd)
  t5lib.matmul = matmul
elif variant == "threefry":
  class D(t5lib.Dropout):
    def __call__(self, x, deterministic):
      if deterministic or self.rate <= 0: return x
      keep = jax.random.bernoulli(self.make_rng("dropout"), 1 - self.rate, x.shape)
      return jnp.where(keep, x / (1 - self.rate), 0.0)
  t5lib.Dropout = t5.Dropout = D     # the layers' and the T5's own (embedding) dropout

model = T5(model_config(cfg.model, [256] * 4, os.environ.get("DTYPE", "float32")))
tx = optax.chain(optax.clip_by_global_norm(1.0), optax.adamw(5e-4, weight_decay=0.01))
tok, m = steps.history_tokens(codes, batch["history_BxL"][:2], batch["mask_BxL"][:2], model.cfg)
dec_in, _ = steps.decoder_io(codes, batch["target_B"][:2], model.cfg)
params = model.init(jax.random.key(0), tok, m, batch["user_B"][:2], dec_in)
state = TrainState(jnp.zeros((), jnp.int32), params, tx.init(params))
opts = compiler_options("train") if os.environ.get("YNN", "") == "" else ({} if os.environ["YNN"] == "default" else {"xla_cpu_experimental_ynn_fusion_type": os.environ["YNN"]})
opts = {**opts, **json.loads(os.environ.get("XLA_OPTS", "{}"))}
fn = jax.jit(functools.partial(steps.train_step, model=model, tx=tx), donate_argnums=0, compiler_options=opts)
key = jax.random.key(1)
t = time.perf_counter(); c = fn.lower(state, batch, codes, key).compile(); comp = time.perf_counter() - t
flops = c.cost_analysis()
flops = (flops[0] if isinstance(flops, list) else flops).get("flops", 0)
for _ in range(2):
  state, out = c(state, batch, codes, key)
jax.block_until_ready(out)
ts = []
for _ in range(reps):
  t = time.perf_counter(); state, out = c(state, batch, codes, key); jax.block_until_ready(out); ts.append(time.perf_counter() - t)
ms = 1000 * float(np.median(ts))
print(json.dumps({"variant": variant, "L": L, "T": 4 * L + 1, "ms": round(ms, 1), "samples_s": round(B / ms * 1000, 1),
                  "gflops": round(flops / ms / 1e6, 1), "gflop_step": round(flops / 1e9, 2), "compile_s": round(comp, 1), "ynn": opts,
                  "dtype": model.cfg.dtype, "machine": common.machine()}))

if os.environ.get("PROFILE"):
  trace_dir = os.environ["PROFILE"]
  hlo, calls, dot_flops, computation, entry = {}, {}, collections.Counter(), None, False
  for line in c.as_text().splitlines():
    head_m = re.match(r"^(ENTRY )?%([\w.\-]+) \(", line)
    if head_m:
      entry, computation = bool(head_m.group(1)), head_m.group(2)
      continue
    m = re.match(r"\s*(?:ROOT )?%?([\w.\-]+) = (\([^=]*?\)|\w+\[[\d,]*\])\S* ([\w\-]+)\(", line)
    if not m:
      continue
    hlo[m.group(1)] = (m.group(2), m.group(3), line.strip())
    if (called := re.search(r"calls=%([\w.\-]+)", line)):
      calls[m.group(1)] = called.group(1)
    if m.group(3) == "dot":   # 2 x output elements x contracted size, charged to its fusion
      lhs = re.search(r"dot\(%([\w.\-]+)", line).group(1)
      lhs_dims = [int(d) for d in re.search(r"\[([\d,]*)\]", hlo[lhs][0]).group(1).split(",") if d]
      out = [int(d) for d in re.search(r"\[([\d,]*)\]", m.group(2)).group(1).split(",") if d]
      contracted = [int(d) for d in re.search(r"lhs_contracting_dims=\{([\d,]*)\}", line).group(1).split(",") if d]
      dot_flops[m.group(1) if entry else computation] += (
          2 * math.prod(out) * math.prod(lhs_dims[i] for i in contracted))
  def op_flops(name):
    return dot_flops.get(name, 0) + dot_flops.get(calls.get(name, ""), 0)

  with jax.profiler.trace(trace_dir, create_perfetto_trace=True):
    for _ in range(2):
      state, out = c(state, batch, codes, key); jax.block_until_ready(out)
  path = sorted(glob.glob(f"{trace_dir}/**/perfetto_trace.json.gz", recursive=True))[-1]
  events = sorted((e for e in json.load(gzip.open(path))["traceEvents"]
                   if e.get("ph") == "X" and e.get("args", {}).get("hlo_module", "").startswith("jit_train_step")),
                  key=lambda e: e["ts"])
  per_op = collections.Counter()
  for e in events:
    per_op[e["name"]] += e["dur"] / 2000                      # ms per step

  def kind(name):
    shape, opcode, _ = hlo.get(name, ("", "", ""))
    if name.startswith("ynn_fusion") or opcode == "dot":
      # [B, H, x, y] outputs: the per-head batched dots of attention
      return "attention dots" if re.match(r"\w+\[\d+,%d,\d+,\d+\]" % cfg.model.heads, shape) else "dense dots"
    if "transpose" in name or "copy" in name:
      return "transposes / copies"
    return "reductions" if "reduce" in name else "element-wise / other"

  kinds, counts = collections.Counter(), collections.Counter()
  for name, ms in per_op.items():
    kinds[kind(name)] += ms; counts[kind(name)] += 1
  # The second step: the wall time each kind covers (at 10 us), and covers with no other kind.
  starts = [e["ts"] for e in events]
  second = events[1 + max(range(len(starts) - 1), key=lambda i: starts[i + 1] - starts[i]):]
  t0, t1 = second[0]["ts"], max(e["ts"] + e["dur"] for e in second)
  names = sorted(counts)
  busy = np.zeros((len(names), int((t1 - t0) / 10) + 1), bool)
  for e in second:
    busy[names.index(kind(e["name"])), int((e["ts"] - t0) / 10):int((e["ts"] + e["dur"] - t0) / 10)] = True
  wall = {k: {"covers_ms": round(busy[i].sum() / 100, 1),
              "alone_ms": round((busy[i] & ~np.delete(busy, i, 0).any(0)).sum() / 100, 1)} for i, k in enumerate(names)}
  print(json.dumps({"profile_ms_per_step": round(sum(per_op.values()), 1), "ops": len(per_op),
                    "by_kind_ms": {k: round(v, 1) for k, v in kinds.most_common()},
                    "by_kind_ops": dict(counts),
                    "second_step_wall_ms": round((t1 - t0) / 1000, 1),
                    "idle_ms": round((~busy.any(0)).sum() / 100, 1), "wall_by_kind": wall}))
  shapes = collections.defaultdict(lambda: [0.0, 0, 0])
  for name, ms in per_op.items():
    if kind(name) == "dense dots":
      g = shapes[hlo[name][0]]; g[0] += ms; g[1] += op_flops(name); g[2] += 1
  for shape, (ms, flops, n) in sorted(shapes.items(), key=lambda kv: -kv[1][0])[:int(os.environ.get("TOP", 15))]:
    print(f"{ms:8.1f} ms  {n:3d} dense dots out {shape:22s} {flops / 1e9:6.2f} GFLOP  {flops / ms / 1e6:6.1f} GFLOP/s (summed time)")
  for name, ms in per_op.most_common(int(os.environ.get("TOP", 15))):
    print(f"{ms:8.1f} ms  {kind(name):22s} {hlo.get(name, ('', '', name))[2][:160]}")
