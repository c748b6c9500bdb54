"""A plain PyTorch ES loop: the peer `deno task bench` measures esflow against, in the same run.

The same work as esflow's ES benchmark: a Qwen3-style model of the tiny preset (hidden 128,
intermediate 384, 4 layers, 4 heads, 2 kv heads, head_dim 32, vocab 256, tied head), N members
with full-rank Gaussian perturbations θ + σ·ε_j, each scored by the mean next-token
log-likelihood on the same M samples of T tokens, rank-shaped, and one update
θ += α/N·Σ_j w_j·ε_j with the noise regenerated from per-member seeds. float32, no autograd,
torch's own CPU kernels (OpenBLAS through Debian's python3-torch).

  /usr/bin/python3 tools/torch_es.py [--population 30] [--samples 32] [--seq-len 64]
                                     [--iterations 3] [--warmup 1] [--threads N] [--lowrank R]
                                     [--json]

Debian's python3-torch (1.13) with libopenblas0-pthread installed uses OpenBLAS.

Exits 3, with one line on stderr, when PyTorch is not installed.

Prints population-tokens per second (N·M·(T−1) scored tokens over the seconds of one whole
iteration), and with --json one JSON line. --lowrank R perturbs every matrix by σ·A·Bᵀ/√R
(EGGROLL) with the members' shared x·Wᵀ computed once per layer, as esflow's low-rank mode does.
"""

import argparse
import json
import math
import os
import sys
import time

# The fastest of the configurations tried on 2 cores (tiny preset, N=30, M=32, T=64): torch's
# OpenMP threads on every core and OpenBLAS on one (its threads and torch's fight over the cores
# otherwise): 20.8k population-tokens/s against 9.9k with OpenBLAS on 2 and torch on 1, and 1.6k
# with both on 2. Set before torch loads OpenBLAS; an explicit setting wins.
os.environ.setdefault("OPENBLAS_NUM_THREADS", "1")

try:
    import torch  # noqa: E402
except ImportError:
    # The bench reads exit code 3 as "no peer on this machine" and says so in a note.
    print("torch_es.py: PyTorch is not installed (Debian: apt-get install python3-torch)",
          file=sys.stderr)
    sys.exit(3)

CONFIG = dict(hidden=128, intermediate=384, layers=4, heads=4, kv_heads=2, head_dim=32,
              vocab=256, eps=1e-6, rope_theta=10000.0)


def init_params(c, gen):
    """HF-style init: matrices N(0, 0.02), norms 1; a dict name → tensor, the head tied."""
    p = {}

    def mat(name, rows, cols):
        p[name] = torch.randn(rows, cols, generator=gen) * 0.02

    mat("embed", c["vocab"], c["hidden"])
    q, kv = c["heads"] * c["head_dim"], c["kv_heads"] * c["head_dim"]
    for l in range(c["layers"]):
        for n, (r, k) in {"q": (q, c["hidden"]), "k": (kv, c["hidden"]), "v": (kv, c["hidden"]),
                          "o": (c["hidden"], q), "gate": (c["intermediate"], c["hidden"]),
                          "up": (c["intermediate"], c["hidden"]),
                          "down": (c["hidden"], c["intermediate"])}.items():
            mat(f"{l}.{n}", r, k)
        for n, d in {"ln1": c["hidden"], "ln2": c["hidden"], "qn": c["head_dim"],
                     "kn": c["head_dim"]}.items():
            p[f"{l}.{n}"] = torch.ones(d)
    p["norm"] = torch.ones(c["hidden"])
    return p


def rope_tables(c, t):
    d = c["head_dim"]
    inv = 1.0 / (c["rope_theta"] ** (torch.arange(0, d, 2, dtype=torch.float32) / d))
    ang = torch.outer(torch.arange(t, dtype=torch.float32), inv)
    return torch.cat([ang, ang], -1).cos(), torch.cat([ang, ang], -1).sin()


def rms(x, w, eps):
    return w * (x * torch.rsqrt(x.pow(2).mean(-1, keepdim=True) + eps))


def rotate_half(x):
    h = x.shape[-1] // 2
    return torch.cat([-x[..., h:], x[..., :h]], -1)


def fitness(c, p, ids, cos, sin, lin):
    """Mean over samples of the mean log p(next token): EA4LLM's F. `lin(name, x)` is x·Wᵀ."""
    b, t = ids.shape
    hd, nh, nkv = c["head_dim"], c["heads"], c["kv_heads"]
    x = p["embed"][ids]
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for l in range(c["layers"]):
        xn = rms(x, p[f"{l}.ln1"], c["eps"])
        q = lin(f"{l}.q", xn).view(b, t, nh, hd)
        k = lin(f"{l}.k", xn).view(b, t, nkv, hd)
        v = lin(f"{l}.v", xn).view(b, t, nkv, hd).transpose(1, 2)
        q = rms(q, p[f"{l}.qn"], c["eps"]).transpose(1, 2)
        k = rms(k, p[f"{l}.kn"], c["eps"]).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        s = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        a = torch.softmax(s.masked_fill(~causal, float("-inf")), -1) @ v
        x = x + lin(f"{l}.o", a.transpose(1, 2).reshape(b, t, nh * hd))
        xn = rms(x, p[f"{l}.ln2"], c["eps"])
        x = x + lin(f"{l}.down", torch.nn.functional.silu(lin(f"{l}.gate", xn)) * lin(f"{l}.up", xn))
    logits = rms(x, p["norm"], c["eps"]) @ p["embed"].T
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, ids[:, 1:, None])[..., 0]
    return lp.mean(1).mean().item()


def rank_shape(r):
    order = sorted(range(len(r)), key=lambda j: r[j])
    w = [0.0] * len(r)
    for rank, j in enumerate(order):
        w[j] = 2 * rank / (len(r) - 1) - 1
    return w


def noise_like(p, seed):
    gen = torch.Generator().manual_seed(seed)
    return {n: torch.randn(t.shape, generator=gen) for n, t in p.items()}


def iteration(c, p, ids, cos, sin, o, it):
    """One full-rank ES iteration: N perturbed forwards, rank shaping, the update."""
    r = []
    for j in range(o.population):
        eps = noise_like(p, it * 100003 + j)
        pj = {n: t + o.sigma * eps[n] for n, t in p.items()}
        r.append(fitness(c, pj, ids, cos, sin, lambda name, x, pj=pj: x @ pj[name].T))
    w = rank_shape(r)
    for j in range(o.population):
        eps = noise_like(p, it * 100003 + j)
        for n in p:
            p[n].add_(eps[n], alpha=o.alpha * w[j] / o.population)
    return r


def lowrank_iteration(c, p, ids, cos, sin, o, it):
    """One low-rank ES iteration over all members' rows at once (EGGROLL): each matrix's x·Wᵀ
    once, plus σ/√R·(x·B_j)·A_jᵀ per member; the embedding's gather and the tied head get the
    same correction; the norms get full-rank noise per member."""
    mats = [n for n, t in p.items() if t.dim() == 2]
    vecs = [n for n, t in p.items() if t.dim() == 1]
    gen = torch.Generator().manual_seed(it)
    n_, b, t = o.population, ids.shape[0], ids.shape[1]
    r_ = o.lowrank
    ab = {n: (torch.randn(n_, p[n].shape[0], r_, generator=gen),
              torch.randn(n_, p[n].shape[1], r_, generator=gen)) for n in mats}
    ev = {n: torch.randn(n_, p[n].shape[0], generator=gen) for n in vecs}
    s = o.sigma / math.sqrt(r_)
    # Each member's vectors, shaped to broadcast over its rows: (N, 1, 1, D).
    pv = {n: (p[n] + o.sigma * ev[n])[:, None, None, :] for n in vecs}
    hd, nh, nkv = c["head_dim"], c["heads"], c["kv_heads"]

    def lin(name, x):
        a, bb = ab[name]
        xs = x.reshape(n_, -1, x.shape[-1])
        out = xs @ p[name].T + s * (xs @ bb) @ a.transpose(1, 2)
        return out.reshape(*x.shape[:-1], -1)

    def norm(x, name):
        xs = x.reshape(n_, b, *x.shape[1:])
        w = pv[name] if xs.dim() == 4 else pv[name][:, :, :, None, :]
        return rms(xs, w, c["eps"]).reshape(x.shape)

    a_e, b_e = ab["embed"]
    x = p["embed"][ids].repeat(n_, 1, 1)
    x = x + s * (a_e[:, ids] @ b_e.transpose(1, 2)[:, None]).reshape(n_ * b, t, -1)
    causal = torch.ones(t, t, dtype=torch.bool).tril()
    for l in range(c["layers"]):
        xn = norm(x, f"{l}.ln1")
        q = norm(lin(f"{l}.q", xn).view(n_ * b, t, nh, hd), f"{l}.qn").transpose(1, 2)
        k = norm(lin(f"{l}.k", xn).view(n_ * b, t, nkv, hd), f"{l}.kn").transpose(1, 2)
        v = lin(f"{l}.v", xn).view(n_ * b, t, nkv, hd).transpose(1, 2)
        q = q * cos + rotate_half(q) * sin
        k = k * cos + rotate_half(k) * sin
        rep = nh // nkv
        k, v = k.repeat_interleave(rep, 1), v.repeat_interleave(rep, 1)
        sc = (q @ k.transpose(-1, -2)) / math.sqrt(hd)
        att = torch.softmax(sc.masked_fill(~causal, float("-inf")), -1) @ v
        x = x + lin(f"{l}.o", att.transpose(1, 2).reshape(n_ * b, t, nh * hd))
        xn = norm(x, f"{l}.ln2")
        x = x + lin(f"{l}.down", torch.nn.functional.silu(lin(f"{l}.gate", xn)) * lin(f"{l}.up", xn))
    logits = lin("embed", norm(x, "norm"))
    big = ids.repeat(n_, 1)
    lp = torch.log_softmax(logits[:, :-1], -1).gather(-1, big[:, 1:, None])[..., 0]
    r = lp.mean(1).view(n_, b).mean(1).tolist()
    w = torch.tensor(rank_shape(r))
    for n in mats:
        a, bb = ab[n]
        p[n].add_(torch.einsum("j,jor,jir->oi", w, a, bb), alpha=o.alpha / math.sqrt(r_) / n_)
    for n in vecs:
        p[n].add_(w @ ev[n], alpha=o.alpha / n_)
    return r


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--population", type=int, default=30)
    ap.add_argument("--samples", type=int, default=32)
    ap.add_argument("--seq-len", type=int, default=64)
    ap.add_argument("--iterations", type=int, default=3)
    ap.add_argument("--warmup", type=int, default=1)
    ap.add_argument("--threads", type=int, default=0)
    ap.add_argument("--lowrank", type=int, default=0)
    ap.add_argument("--sigma", type=float, default=1e-3)
    ap.add_argument("--alpha", type=float, default=5e-4)
    ap.add_argument("--json", action="store_true")
    o = ap.parse_args()
    torch.set_num_threads(o.threads if o.threads > 0 else os.cpu_count() or 1)
    torch.set_grad_enabled(False)
    c = CONFIG
    gen = torch.Generator().manual_seed(1)
    p = init_params(c, gen)
    ids = torch.randint(0, c["vocab"], (o.samples, o.seq_len), generator=gen)
    cos, sin = rope_tables(c, o.seq_len)
    step = lowrank_iteration if o.lowrank > 0 else iteration
    for it in range(o.warmup):
        step(c, p, ids, cos, sin, o, it)
    t0 = time.perf_counter()
    for it in range(o.iterations):
        step(c, p, ids, cos, sin, o, o.warmup + it)
    seconds = (time.perf_counter() - t0) / o.iterations
    tokens = o.population * o.samples * (o.seq_len - 1)
    out = {
        "es_tokens_per_s": tokens / seconds,
        "seconds_per_iteration": seconds,
        "threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "openblas_threads": int(os.environ["OPENBLAS_NUM_THREADS"]),
        "lowrank": o.lowrank,
    }
    print(json.dumps(out) if o.json else
          f"{out['es_tokens_per_s']:.0f} population-tokens/s, {seconds:.3f} s per iteration, "
          f"{out['threads']} torch threads, OpenBLAS threads {out['openblas_threads']}, "
          f"torch {out['torch']}")


if __name__ == "__main__":
    main()
