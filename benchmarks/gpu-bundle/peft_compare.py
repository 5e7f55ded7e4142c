#!/usr/bin/env python3
"""PyTorch + PEFT (and bitsandbytes 4-bit, where installed) on the shapes LoraKernels' gpu-compare times,
and the one comparison table of all three.

  peft_compare.py --out DIR [--quick]      time PEFT on the GPU -> DIR/peft.json
  peft_compare.py --dry-run                check imports and shapes on the CPU (tiny sizes), no GPU needed
  peft_compare.py --merge DIR              DIR/lorakernels.json (+ DIR/peft.json) -> DIR/comparison.{json,md}

Shapes (as GpuComparisonProgram): in x out = 4096 x 4096 and 4096 x 14336, M in {1, 16, 512, 8192}, r = 16,
lora_alpha = 32, bf16 base and bf16 adapters (get_peft_model(..., autocast_adapter_dtype=False)), no dropout.
  forward   y = peft_model(x) under torch.no_grad()
  backward  y.backward(dy) of a forward taken outside the clock (x requires grad: dx, dA, dB as LoraKernels)
  nf4_decode  bitsandbytes Linear4bit (nf4, blocksize 64, compute bf16) at M in {1, 16}
Each timing is CUDA events around one call, the L2 cache flushed (a zero fill of twice its size) before it, at least
5 and at most 30 calls or 0.4 s, the median reported; each case's output is first checked against the CPU on
three rows (bound 2^-8|ref| + 2^-6 sum|terms|, as the C# side). Exit status: 0 all done; 1 a check failed or the
GPU run broke; 3 a needed module (torch, peft) is missing; 2 no CUDA device. --merge needs only the standard library.
"""
import argparse
import importlib
import json
import math
import os
import sys
import time

RANK, ALPHA = 16, 32
SHAPES = [(4096, 4096), (4096, 14336)]
TOKENS = [1, 16, 512, 8192]
QUICK_SHAPES, QUICK_TOKENS = [(1024, 1024)], [1, 16, 512]
MIN_CALLS, MAX_CALLS, BUDGET_MS = 5, 30, 400.0
BOUND_RELATIVE, BOUND_TERMS, BOUND_ABSOLUTE = 1.0 / 256, 1.0 / 64, 1e-6


def need(module):
    """Imports a required module or exits 3 naming it (the bundle reports this step as failed, not hanging)."""
    try:
        return importlib.import_module(module)
    except Exception as error:  # ImportError, or a broken install raising something else
        print(f"peft_compare: {module} cannot be imported ({error.__class__.__name__}: {error})", file=sys.stderr)
        sys.exit(3)


def optional(module):
    try:
        return importlib.import_module(module)
    except Exception as error:
        return f"{module} not importable ({error.__class__.__name__}: {error})"


def lora_model(torch, peft, n, o, device, dtype):
    """One nn.Linear(n, o, bias=False) wrapped by get_peft_model with r = 16, alpha = 32; B random so the adapter counts."""
    class One(torch.nn.Module):
        def __init__(self):
            super().__init__()
            self.proj = torch.nn.Linear(n, o, bias=False)

        def forward(self, x):
            return self.proj(x)

    torch.manual_seed(0)
    base = One().to(device=device, dtype=dtype)
    config = peft.LoraConfig(r=RANK, lora_alpha=ALPHA, target_modules=["proj"], lora_dropout=0.0)
    try:
        model = peft.get_peft_model(base, config, autocast_adapter_dtype=False)
    except TypeError:  # older PEFT: no autocast_adapter_dtype, adapters in the base dtype already
        model = peft.get_peft_model(base, config)
    layer = model.base_model.model.proj
    with torch.no_grad():
        layer.lora_B["default"].weight.uniform_(-0.1, 0.1)
    for p in model.parameters():
        if p.requires_grad:
            p.data = p.data.to(dtype)
    return model, layer


def worst_ratio(torch, got, x, weight, a=None, b=None, scale=0.0):
    """max |got - ref| / bound over rows first, middle, last; ref = x W^T (+ scale (x A^T) B^T) in float64 on the CPU."""
    rows = sorted({0, x.shape[0] // 2, x.shape[0] - 1})
    xs = x[rows].double().cpu()
    w = weight.double().cpu()
    ref, terms = xs @ w.T, xs.abs() @ w.abs().T
    if a is not None:
        u = xs @ a.double().cpu().T
        ref = ref + scale * (u @ b.double().cpu().T)
        terms = terms + abs(scale) * ((xs.abs() @ a.double().cpu().abs().T) @ b.double().cpu().abs().T)
    bound = BOUND_RELATIVE * ref.abs() + BOUND_TERMS * terms + BOUND_ABSOLUTE
    ratio = ((got[rows].double().cpu() - ref).abs() / bound).max().item()
    return ratio if math.isfinite(ratio) else float("inf")


def time_calls(torch, call, flush):
    """Median and minimum GPU milliseconds of call() with the L2 flushed before each."""
    start, stop = torch.cuda.Event(enable_timing=True), torch.cuda.Event(enable_timing=True)
    times = []
    while len(times) < MIN_CALLS or (len(times) < MAX_CALLS and sum(times) < BUDGET_MS):
        flush.zero_()
        start.record()
        call()
        stop.record()
        stop.synchronize()
        times.append(start.elapsed_time(stop))
    times.sort()
    return times[len(times) // 2], times[0]


def measured(torch, flush, op, m, n, o, impl, ratio, call):
    """One result: the check's worst ratio, and the timing of call() only when the check passed."""
    entry = {"op": op, "M": m, "in": n, "out": o, "impl": impl, "check_worst_ratio": ratio if math.isfinite(ratio) else -1,
             "check_passed": ratio <= 1}
    if ratio <= 1:
        entry["median_ms"], entry["min_ms"] = time_calls(torch, call, flush)
    return entry


def run_gpu(args):
    torch = need("torch")
    peft = need("peft")
    if not torch.cuda.is_available():
        print("peft_compare: torch sees no CUDA device", file=sys.stderr)
        return 2
    bnb = optional("bitsandbytes")
    device = torch.device("cuda")
    properties = torch.cuda.get_device_properties(0)
    l2 = getattr(properties, "L2_cache_size", 50 << 20) or (50 << 20)
    flush = torch.empty(2 * l2, dtype=torch.uint8, device=device)
    shapes, tokens = (QUICK_SHAPES, QUICK_TOKENS) if args.quick else (SHAPES, TOKENS)
    results, notes, failed = [], [], False
    if isinstance(bnb, str):
        notes.append(f"bitsandbytes 4-bit skipped: {bnb}")
    scale = ALPHA / RANK
    for n, o in shapes:
        model, layer = lora_model(torch, peft, n, o, device, torch.bfloat16)
        weight = getattr(layer, "base_layer", layer).weight
        a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
        for m in tokens:
            x = torch.empty(m, n, device=device, dtype=torch.bfloat16).uniform_(-1, 1)
            dy = torch.empty(m, o, device=device, dtype=torch.bfloat16).uniform_(-1, 1)
            with torch.no_grad():
                y = model(x)

            def forward():
                with torch.no_grad():
                    model(x)
            results.append(measured(torch, flush, "forward", m, n, o, "peft", worst_ratio(torch, y, x, weight, a, b, scale), forward))

            xg = x.clone().requires_grad_(True)
            y = model(xg)
            y.backward(dy, retain_graph=True)
            # The gradients' values are autograd's; the check is that each one is there with its shape.
            shapes_ok = (xg.grad is not None and tuple(xg.grad.shape) == (m, n) and a.grad is not None
                         and tuple(a.grad.shape) == (RANK, n) and b.grad is not None and tuple(b.grad.shape) == (o, RANK))
            results.append(measured(torch, flush, "backward", m, n, o, "peft", 0.0 if shapes_ok else float("inf"),
                                    lambda: y.backward(dy, retain_graph=True)))
            failed |= not (results[-2]["check_passed"] and results[-1]["check_passed"])
            del y, xg
            print(f"  peft M={m} {n}x{o}: forward {results[-2].get('median_ms')} ms, backward {results[-1].get('median_ms')} ms", flush=True)

        if not isinstance(bnb, str):
            linear4 = bnb.nn.Linear4bit(n, o, bias=False, compute_dtype=torch.bfloat16, quant_type="nf4")
            linear4.weight = bnb.nn.Params4bit(weight.detach().to("cpu"), requires_grad=False, quant_type="nf4", blocksize=64)
            linear4 = linear4.to(device)
            dequantized = bnb.functional.dequantize_4bit(linear4.weight.data, linear4.weight.quant_state).to(torch.bfloat16)
            for m in [t for t in tokens if t <= 16]:
                x = torch.empty(m, n, device=device, dtype=torch.bfloat16).uniform_(-1, 1)
                with torch.no_grad():
                    y = linear4(x)

                def decode():
                    with torch.no_grad():
                        linear4(x)
                results.append(measured(torch, flush, "nf4_decode", m, n, o, "bnb_nf4", worst_ratio(torch, y, x, dequantized), decode))
                failed |= not results[-1]["check_passed"]
        del model, layer
        torch.cuda.empty_cache()

    versions = {"torch": torch.__version__, "peft": peft.__version__,
                "bitsandbytes": None if isinstance(bnb, str) else getattr(bnb, "__version__", "?")}
    os.makedirs(args.out, exist_ok=True)
    with open(os.path.join(args.out, "peft.json"), "w") as f:
        json.dump({"device": properties.name, "versions": versions, "notes": notes, "results": results}, f, indent=2)
    print(f"peft_compare: {len(results)} cases on {properties.name} -> {args.out}/peft.json" + ("; a check FAILED" if failed else ""))
    return 1 if failed else 0


def dry_run():
    """Imports, builds the PEFT layer at a tiny shape on the CPU, runs forward and backward, checks the shapes."""
    torch = need("torch")
    peft = need("peft")
    bnb = optional("bitsandbytes")
    m, n, o = 3, 64, 48
    model, layer = lora_model(torch, peft, n, o, torch.device("cpu"), torch.float32)
    x = torch.randn(m, n, requires_grad=True)
    y = model(x)
    y.backward(torch.randn(m, o))
    a, b = layer.lora_A["default"].weight, layer.lora_B["default"].weight
    problems = []
    if tuple(y.shape) != (m, o):
        problems.append(f"y is {tuple(y.shape)}, expected {(m, o)}")
    for name, tensor, shape in (("dx", x.grad, (m, n)), ("dA", a.grad, (RANK, n)), ("dB", b.grad, (o, RANK))):
        if tensor is None or tuple(tensor.shape) != shape:
            problems.append(f"{name} is {None if tensor is None else tuple(tensor.shape)}, expected {shape}")
    base = getattr(layer, "base_layer", layer)
    ratio = worst_ratio(torch, y.detach(), x.detach(), base.weight.detach(), a.detach(), b.detach(), ALPHA / RANK)
    if not ratio <= 1:
        problems.append(f"y disagrees with x W^T + s (x A^T) B^T (worst ratio {ratio})")
    print(f"dry run: torch {torch.__version__}, peft {peft.__version__}, bitsandbytes "
          f"{bnb if isinstance(bnb, str) else getattr(bnb, '__version__', '?')}")
    for problem in problems:
        print(f"dry run: {problem}", file=sys.stderr)
    print("dry run: " + ("FAILED" if problems else "ok"))
    return 1 if problems else 0


def merge(folder):
    """One table from lorakernels.json and, when present, peft.json: rows (op, M, in, out), columns per implementation."""
    with open(os.path.join(folder, "lorakernels.json")) as f:
        ours = json.load(f)
    peft_path = os.path.join(folder, "peft.json")
    theirs = {"results": [], "notes": ["PyTorch/PEFT: not run (no peft.json)"]}
    if os.path.exists(peft_path):
        with open(peft_path) as f:
            theirs = json.load(f)
    rows = {}
    for entry in ours["results"] + theirs["results"]:
        key = (entry["op"], entry["M"], entry["in"], entry["out"])
        rows.setdefault(key, {})[entry["impl"]] = entry
    impls = ["lorakernels", "cublas", "cublas_bf16", "peft", "bnb_nf4"]
    order = {"forward": 0, "backward": 1, "nf4_decode": 2}
    table_rows = []
    for key in sorted(rows, key=lambda k: (order.get(k[0], 9), k[2], k[3], k[1])):
        cells = rows[key]
        ms = {impl: cells[impl].get("median_ms") if cells.get(impl, {}).get("check_passed") else None for impl in impls if impl in cells}
        base = ms.get("lorakernels")
        row = {"op": key[0], "M": key[1], "in": key[2], "out": key[3], "median_ms": ms,
               "speedup_vs": {impl: (v / base if base and v else None) for impl, v in ms.items() if impl != "lorakernels"}}
        table_rows.append(row)
    comparison = {"lorakernels_device": ours.get("device"), "peft_device": theirs.get("device"), "versions": theirs.get("versions"),
                  "notes": theirs.get("notes", []), "rows": table_rows}
    with open(os.path.join(folder, "comparison.json"), "w") as f:
        json.dump(comparison, f, indent=2)

    def cell(value):
        return "-" if value is None else f"{value:.4f}"

    lines = [f"LoraKernels ({ours.get('device')}) vs cuBLAS vs PyTorch+PEFT / bitsandbytes; bf16, r = {RANK}; "
             "median GPU ms, L2 flushed before each call; 'x' columns: other / lorakernels (above 1: LoraKernels faster)", "",
             "| op | M | in x out | lorakernels | cublas | peft | bnb nf4 | cublas x | peft x | bnb x |",
             "| --- | ---: | --- | ---: | ---: | ---: | ---: | ---: | ---: | ---: |"]
    for row in table_rows:
        ms, speed = row["median_ms"], row["speedup_vs"]
        blas = ms.get("cublas", ms.get("cublas_bf16"))
        blas_x = speed.get("cublas", speed.get("cublas_bf16"))
        lines.append(f"| {row['op']} | {row['M']} | {row['in']}x{row['out']} | {cell(ms.get('lorakernels'))} | {cell(blas)} | "
                     f"{cell(ms.get('peft'))} | {cell(ms.get('bnb_nf4'))} | {cell(blas_x)} | {cell(speed.get('peft'))} | {cell(speed.get('bnb_nf4'))} |")
    lines += [""] + [f"note: {note}" for note in comparison["notes"]]
    text = "\n".join(lines) + "\n"
    with open(os.path.join(folder, "comparison.md"), "w") as f:
        f.write(text)
    print(text)
    return 0


def main():
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--out", default="compare")
    parser.add_argument("--quick", action="store_true")
    parser.add_argument("--dry-run", action="store_true")
    parser.add_argument("--merge", metavar="DIR")
    args = parser.parse_args()
    if args.merge:
        return merge(args.merge)
    if args.dry_run:
        return dry_run()
    started = time.time()
    status = run_gpu(args)
    print(f"peft_compare: {time.time() - started:.0f} s")
    return status


if __name__ == "__main__":
    sys.exit(main())
