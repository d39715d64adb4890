"""Command line: ``mamba-export run`` (the main job) and ``mamba-export generate``."""

from __future__ import annotations

import argparse
import os
import sys
import tempfile
import time

import torch

DTYPES = {"float32": torch.float32, "fp32": torch.float32, "float16": torch.float16,
          "fp16": torch.float16, "bfloat16": torch.bfloat16, "bf16": torch.bfloat16}


def log(msg: str) -> None:
    print(f"[mamba-export] {msg}", file=sys.stderr, flush=True)


def load_model(spec: str, dtype: torch.dtype, device: str):
    """A local checkpoint directory, or a preset name (random initialisation)."""
    import mamba_export as me
    from mamba_export.config import PRESETS

    if os.path.isdir(spec):
        log(f"loading checkpoint {spec}")
        return me.MambaLM.from_pretrained(spec, dtype=dtype, device=device)
    if spec in PRESETS:
        log(f"building preset {spec} with random weights (mamba_ssm init)")
        model = me.MambaLM(me.MambaConfig.preset(spec), device=device, dtype=dtype)
        return model.eval()
    raise SystemExit(
        f"error: --model {spec!r} is neither a directory nor a preset; presets: {', '.join(sorted(PRESETS))}"
    )


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize()


def _timed(fn, device, repeats: int = 3) -> tuple[float, object]:
    """Median wall time in ms of ``fn()`` over ``repeats`` runs after one warm-up."""
    result = fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        result = fn()
        _sync(device)
        times.append((time.perf_counter() - start) * 1e3)
    return sorted(times)[len(times) // 2], result


def _rel(a: torch.Tensor, b: torch.Tensor) -> float:
    a, b = a.double().cpu(), b.double().cpu()
    return ((a - b).norm() / b.norm().clamp_min(1e-30)).item()


def _transformers_logits(model, ids: torch.Tensor) -> torch.Tensor | None:
    """Logits from transformers' own Mamba on the same weights (None if unavailable)."""
    try:
        import transformers
    except ImportError:
        return None
    with tempfile.TemporaryDirectory() as d:
        model.save_pretrained(d)
        hf = transformers.MambaForCausalLM.from_pretrained(d, dtype=torch.float64).eval()
        with torch.no_grad():
            return hf(ids.cpu()).logits


def cmd_run(args: argparse.Namespace) -> int:
    import mamba_export as me

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    model = load_model(args.model, dtype, str(device))
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: d_model={cfg.d_model} n_layer={cfg.n_layer} d_state={cfg.d_state} "
        f"vocab={cfg.padded_vocab_size} params={n_params / 1e6:.1f}M dtype={dtype} device={device}")
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_len), device=device)

    rows: list[tuple[str, str, str]] = []
    with torch.no_grad():
        log("parity: forward vs float64 reference")
        logits = model(ids)
        ref64 = me.MambaLM(cfg, dtype=torch.float64, initialize=False)
        ref64.load_state_dict(model.state_dict())
        ref_logits = ref64(ids.cpu())
        rows.append(("forward vs float64 reference", f"{_rel(logits, ref_logits):.2e}", "rel. error"))
        hf_logits = _transformers_logits(ref64, ids)
        if hf_logits is not None:
            rows.append(("forward vs transformers (float64)", f"{_rel(logits, hf_logits):.2e}", "rel. error"))
        log("parity: prefill + decode vs forward")
        split = max(1, args.prompt_len // 2)
        last, state = model.prefill(ids[:, :split], model.new_state(args.batch))
        worst = _rel(last, logits[:, split - 1])
        for t in range(split, args.prompt_len):
            last, state = model.step(ids[:, t], state)
            worst = max(worst, _rel(last, logits[:, t]))
        rows.append(("prefill + step vs forward (worst position)", f"{worst:.2e}", "rel. error"))

        log("timing")
        prefill_ms, _ = _timed(lambda: model.prefill(ids, model.new_state(args.batch)), device)
        rows.append((f"prefill {args.batch}x{args.prompt_len}", f"{prefill_ms:.2f}", "ms"))
        _, state = model.prefill(ids, model.new_state(args.batch))
        tok = ids[:, -1]
        steps = 16
        step_ms, _ = _timed(lambda: [model.step(tok, state) for _ in range(steps)], device)
        rows.append((f"decode step, batch {args.batch}", f"{step_ms / steps:.3f}", "ms/token"))

        log(f"generating {args.max_new_tokens} tokens")
        start = time.perf_counter()
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, eos_token_id=None,
                             temperature=args.temperature, top_k=args.top_k, seed=args.seed)
        _sync(device)
        gen_s = time.perf_counter() - start
        new = out.shape[1] - ids.shape[1]
        rows.append(("generate (prefill + decode)", f"{new * args.batch / gen_s:.1f}", "tokens/s"))

    print(f"\nmamba_export {me.__version__} | torch {torch.__version__} | {device} | {dtype}")
    print(f"generated ids (sequence 0): {out[0, ids.shape[1]:].tolist()}\n")
    width = max(len(r[0]) for r in rows)
    print(f"{'check':<{width}}  {'value':>10}  unit")
    print(f"{'-' * width}  {'-' * 10}  ----------")
    for name, value, unit in rows:
        print(f"{name:<{width}}  {value:>10}  {unit}")
    return 0


def cmd_generate(args: argparse.Namespace) -> int:
    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    model = load_model(args.model, DTYPES[args.dtype], str(device))
    try:
        prompt = [int(t) for t in args.prompt_ids.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(f"error: --prompt-ids must be integers separated by spaces, got {args.prompt_ids!r}")
    if not prompt:
        raise SystemExit("error: --prompt-ids is empty")
    bad = [t for t in prompt if not 0 <= t < model.config.vocab_size]
    if bad:
        raise SystemExit(f"error: token ids {bad} are outside the vocabulary [0, {model.config.vocab_size})")
    ids = torch.tensor([prompt], device=device)
    out = model.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                         top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                         repetition_penalty=args.repetition_penalty, seed=args.seed,
                         cuda_graph=args.cuda_graph,
                         streamer=lambda t: print(int(t[0]), end=" ", flush=True))
    print()
    log(f"generated {out.shape[1] - ids.shape[1]} tokens")
    return 0


def _add_model_args(p: argparse.ArgumentParser, default_model: str | None) -> None:
    p.add_argument("--model", default=default_model, required=default_model is None,
                   help="checkpoint directory (transformers or mamba_ssm format) or preset name")
    p.add_argument("--dtype", default="float32", choices=sorted(DTYPES))
    p.add_argument("--device", default=None, help="cpu or cuda (default: cuda when available)")
    p.add_argument("--seed", type=int, default=0)
    p.add_argument("--temperature", type=float, default=0.0, help="0 = greedy")
    p.add_argument("--top-k", type=int, default=0)


def build_parser() -> argparse.ArgumentParser:
    parser = argparse.ArgumentParser(prog="mamba-export", description=__doc__)
    sub = parser.add_subparsers(dest="command", required=True)
    run = sub.add_parser("run", help="the main job: build, check parity, time, generate")
    _add_model_args(run, "mamba-tiny")
    run.add_argument("--batch", type=int, default=1)
    run.add_argument("--prompt-len", type=int, default=32)
    run.add_argument("--max-new-tokens", type=int, default=32)
    run.set_defaults(func=cmd_run)
    gen = sub.add_parser("generate", help="generate token ids from a prompt of token ids")
    _add_model_args(gen, None)
    gen.add_argument("--prompt-ids", required=True, help='e.g. "1 2 3"')
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--cuda-graph", action="store_true", help="replay a captured decode step (CUDA)")
    gen.set_defaults(func=cmd_generate)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
