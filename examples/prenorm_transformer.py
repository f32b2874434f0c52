"""A pre-norm transformer whose residual stream runs through fastnorm's fused add + norm modules.

    python examples/prenorm_transformer.py                # 200 steps per run, LayerNorm and RMSNorm
    python examples/prenorm_transformer.py --quick        # 10 steps of a smaller model (what the tests run)
    python examples/prenorm_transformer.py --norm rms --bf16

Every pre-norm block computes ``h = h + sublayer(norm(h))`` twice (attention, MLP). With
``fastnorm.torch.nn.AddLayerNorm`` / ``AddRMSNorm`` the add moves into the next norm: the block hands the
sublayer's output ``delta`` on, and ``y, h = norm(delta, h)`` writes the new residual stream and its
normalized copy in one pass (and, backward, adds the residual's gradient in the same pass). Same parameters,
same state_dict keys as ``torch.nn.LayerNorm`` / ``RMSNorm``: the fused model starts from the torch model's
checkpoint.

The model (token + position embeddings, causal self-attention and GELU MLP blocks, a final norm and a linear
head) learns next-token prediction on sequences from a fixed random Markov chain. Three float32 runs from the
same initial weights on the same batches: torch in float64 (the reference), torch in float32 and the fused
model in float32. The fused model's loss curve stays within DESIGN.md's error criterion of the reference:
its distance to the float64 curve is at most twice torch-float32's plus a few float32 units. ``--bf16``
adds bfloat16 runs (parameters and activations bf16, no autocast) where fastnorm's kernels take bfloat16.
Time per training step is printed for each run; at this toy size both are dominated by per-call overhead
(``python -m fastnorm.bench --ops add_`` times the norms themselves at realistic sizes).
"""

from __future__ import annotations

import argparse
import math
import os
import sys
import time

# A small model: one thread is fastest. Set OMP_NUM_THREADS to override (before torch is imported).
os.environ.setdefault("OMP_NUM_THREADS", "1")

import torch
from torch import nn

import fastnorm.torch.functional as FF
import fastnorm.torch.nn as fnn

# the examples' shared helpers (examples/_common.py)
sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
from _common import write_json

NORMS = {
    "layer": (nn.LayerNorm, fnn.AddLayerNorm, "add_layer_norm"),
    "rms": (nn.RMSNorm, fnn.AddRMSNorm, "add_rms_norm"),
}


class Block(nn.Module):
    def __init__(self, d: int, heads: int, norm_cls: type):
        super().__init__()
        self.heads = heads
        self.norm1, self.norm2 = norm_cls(d), norm_cls(d)
        self.qkv, self.proj = nn.Linear(d, 3 * d), nn.Linear(d, d)
        self.fc1, self.fc2 = nn.Linear(d, 4 * d), nn.Linear(4 * d, d)

    def attn(self, y: torch.Tensor) -> torch.Tensor:
        b, t, d = y.shape
        q, k, v = self.qkv(y).view(b, t, 3, self.heads, d // self.heads).permute(2, 0, 3, 1, 4)
        o = nn.functional.scaled_dot_product_attention(q, k, v, is_causal=True)
        return self.proj(o.transpose(1, 2).reshape(b, t, d))

    def mlp(self, y: torch.Tensor) -> torch.Tensor:
        return self.fc2(nn.functional.gelu(self.fc1(y)))

    def forward(self, h: torch.Tensor) -> torch.Tensor:
        """torch's pre-norm block: the adds are separate ops."""
        h = h + self.attn(self.norm1(h))
        return h + self.mlp(self.norm2(h))

    def forward_fused(self, delta: torch.Tensor, h: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
        """The same block with the residual adds inside the norms: ``(delta, h) -> (next delta, h)``."""
        y, h = self.norm1(delta, h)
        y, h = self.norm2(self.attn(y), h)
        return self.mlp(y), h


class PreNormLM(nn.Module):
    def __init__(self, vocab: int, d: int, heads: int, layers: int, seq: int, norm: str, fused: bool):
        super().__init__()
        ref_cls, fused_cls, _ = NORMS[norm]
        cls = fused_cls if fused else ref_cls
        self.fused = fused
        self.tok, self.pos = nn.Embedding(vocab, d), nn.Parameter(0.02 * torch.randn(seq, d))
        self.blocks = nn.ModuleList(Block(d, heads, cls) for _ in range(layers))
        self.norm_f, self.head = cls(d), nn.Linear(d, vocab)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        h = self.tok(idx) + self.pos[: idx.shape[1]]
        if not self.fused:
            for blk in self.blocks:
                h = blk(h)
            return self.head(self.norm_f(h))
        delta = torch.zeros_like(h)  # h + 0 is h exactly: the first norm sees the embedding unchanged
        for blk in self.blocks:
            delta, h = blk.forward_fused(delta, h)
        y, _ = self.norm_f(delta, h)
        return self.head(y)


def markov_batches(vocab: int, seq: int, batch: int, steps: int, seed: int) -> list[torch.Tensor]:
    """Token sequences from a fixed random Markov chain (each token has a few likely successors)."""
    g = torch.Generator().manual_seed(seed)
    logits = torch.randn(vocab, vocab, generator=g) * 3.0
    probs = torch.softmax(logits, dim=-1)
    out = []
    for _ in range(steps):
        x = torch.empty(batch, seq + 1, dtype=torch.long)
        x[:, 0] = torch.randint(vocab, (batch,), generator=g)
        for t in range(seq):
            x[:, t + 1] = torch.multinomial(probs[x[:, t]], 1, generator=g).squeeze(1)
        out.append(x)
    return out


def train(model: nn.Module, data: list[torch.Tensor], lr: float) -> tuple[list[float], float]:
    """AdamW on the batches; (loss per step, median seconds per step after the first)."""
    opt = torch.optim.AdamW(model.parameters(), lr=lr, weight_decay=0.01)
    losses, times = [], []
    for x in data:
        t0 = time.perf_counter()
        logits = model(x[:, :-1])
        loss = nn.functional.cross_entropy(logits.reshape(-1, logits.shape[-1]).float(), x[:, 1:].reshape(-1))
        opt.zero_grad(set_to_none=True)
        loss.backward()
        opt.step()
        times.append(time.perf_counter() - t0)
        losses.append(loss.item())
    times = sorted(times[1:]) or times
    return losses, times[len(times) // 2]


def criterion(got: list[float], other: list[float], ref: list[float], eps: float, ulps: float = 8.0) -> dict:
    """DESIGN.md's error criterion on a loss curve: max|got - ref| <= 2 max|other - ref| + ulps eps max|ref|."""
    err = max(abs(a - r) for a, r in zip(got, ref))
    other_err = max(abs(a - r) for a, r in zip(other, ref))
    bound = 2.0 * other_err + ulps * eps * max(1.0, max(abs(r) for r in ref))
    return {"error": err, "other_error": other_err, "bound": bound, "ok": err <= bound}


def run(norm: str, args) -> dict:
    cfg = dict(vocab=args.vocab, d=args.dim, heads=args.heads, layers=args.layers, seq=args.seq, norm=norm)
    torch.manual_seed(args.seed)
    base = PreNormLM(**cfg, fused=False)
    data = markov_batches(args.vocab, args.seq, args.batch, args.steps, args.seed + 1)

    def clone(fused: bool, dtype: torch.dtype) -> nn.Module:
        m = PreNormLM(**cfg, fused=fused)
        m.load_state_dict(base.state_dict())  # AddLayerNorm / AddRMSNorm: torch's state_dict keys
        return m.to(dtype)

    res: dict = {"losses": {}, "ms_per_step": {}}
    for name, fused, dtype in (
        ("torch float64", False, torch.float64),
        ("torch", False, torch.float32),
        ("fastnorm", True, torch.float32),
    ):
        res["losses"][name], t = train(clone(fused, dtype), data, args.lr)
        res["ms_per_step"][name] = 1e3 * t
    L = res["losses"]
    res["criterion"] = criterion(L["fastnorm"], L["torch"], L["torch float64"], torch.finfo(torch.float32).eps)
    res["max_loss_diff"] = max(abs(a - b) for a, b in zip(L["fastnorm"], L["torch"]))
    if args.bf16:
        probe = torch.empty(0, dtype=torch.bfloat16)
        reason = FF.unsupported_reason(probe, op=NORMS[norm][2])
        if reason is not None:
            res["bf16_skipped"] = reason
        else:
            for name, fused in (("torch bf16", False), ("fastnorm bf16", True)):
                res["losses"][name], t = train(clone(fused, torch.bfloat16), data, args.lr)
                res["ms_per_step"][name] = 1e3 * t
            eps16 = 2.0**-7  # bfloat16's epsilon
            res["criterion_bf16"] = criterion(L["fastnorm bf16"], L["torch bf16"], L["torch float64"], eps16)
    return res


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--quick", action="store_true", help="10 steps, 2 layers, batches of 8 x 16 tokens (the tests)")
    ap.add_argument("--steps", type=int, default=None)
    ap.add_argument("--norm", choices=["layer", "rms", "both"], default="both")
    ap.add_argument("--bf16", action="store_true", help="also train in bfloat16 (params and activations)")
    ap.add_argument("--vocab", type=int, default=64)
    ap.add_argument("--dim", type=int, default=64)
    ap.add_argument("--heads", type=int, default=4)
    ap.add_argument("--layers", type=int, default=None, help="default 3 (--quick: 2)")
    ap.add_argument("--seq", type=int, default=None, help="default 32 (--quick: 16)")
    ap.add_argument("--batch", type=int, default=None, help="default 16 (--quick: 8)")
    ap.add_argument("--lr", type=float, default=3e-3)
    ap.add_argument("--seed", type=int, default=0)
    ap.add_argument("--json", metavar="FILE", help="write losses, timings and the criterion as JSON")
    args = ap.parse_args(argv)
    for name, full, quick in (("steps", 200, 10), ("layers", 3, 2), ("seq", 32, 16), ("batch", 16, 8)):
        if getattr(args, name) is None:
            setattr(args, name, quick if args.quick else full)
    out = {"config": vars(args), "chance_loss": math.log(args.vocab), "runs": {}}
    for norm in ("layer", "rms") if args.norm == "both" else (args.norm,):
        r = run(norm, args)
        out["runs"][norm] = r
        L, c = r["losses"], r["criterion"]
        print(
            f"{NORMS[norm][1].__name__}: {args.steps} steps, loss {L['torch'][0]:.4f} -> torch {L['torch'][-1]:.4f}"
            f", fastnorm {L['fastnorm'][-1]:.4f} (float64 {L['torch float64'][-1]:.4f})"
        )
        print(
            f"  distance to the float64 curve: fastnorm {c['error']:.2e}, torch {c['other_error']:.2e} "
            f"(bound {c['bound']:.2e}: {'within' if c['ok'] else 'OUTSIDE'} the error criterion)"
        )
        print("  ms/step: " + ", ".join(f"{k} {v:.2f}" for k, v in r["ms_per_step"].items()))
        if "bf16_skipped" in r:
            print(f"  bf16: skipped ({r['bf16_skipped']})")
        elif "criterion_bf16" in r:
            cb = r["criterion_bf16"]
            print(
                f"  bf16: loss torch {L['torch bf16'][-1]:.4f}, fastnorm {L['fastnorm bf16'][-1]:.4f}; distance "
                f"to float64 {cb['error']:.2e} vs torch {cb['other_error']:.2e} "
                f"({'within' if cb['ok'] else 'OUTSIDE'} the error criterion)"
            )
    write_json(args.json, out, indent=1)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
