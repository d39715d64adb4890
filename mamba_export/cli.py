"""Command line: ``mamba-export run`` (the main job), ``export``, ``generate``, ``check``."""

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


def _runtime_row(name: str, runner, eager, ids: torch.Tensor, new_tokens: int, device) -> dict:
    """Parity with eager (prefill, one decode step, greedy tokens) and timings (prefill ms,
    decode ms/token) of one runtime."""
    from mamba_export.runtime.check import compare_with_eager

    batch = ids.shape[0]
    parity = compare_with_eager(runner, eager, ids, new_tokens)
    with torch.no_grad():
        prefill_ms, _ = _timed(lambda: runner.prefill(ids, runner.new_state(batch)), device)
        _, state = runner.prefill(ids, runner.new_state(batch))
        tok, steps = ids[:, -1].contiguous(), 16

        def decode():
            st = state
            for _ in range(steps):
                st = runner.step(tok, st)[1]

        step_ms, _ = _timed(decode, device)
    return {"runtime": name, **parity, "prefill_ms": prefill_ms, "decode_ms": step_ms / steps}


def _greedy_status(rows: list[dict]) -> int:
    """Exit status: 1 (and say which) when a runtime's greedy tokens differ from eager's."""
    bad = [r["runtime"] for r in rows if not r["greedy_tokens_equal"]]
    if bad:
        log(f"greedy generation differs from eager for: {', '.join(bad)}")
        return 1
    return 0


def cmd_run(args: argparse.Namespace) -> int:
    """The main job: build the model, check it against float64 and transformers, export it,
    and run generation through eager, the exported programs, torch.compile and ONNX Runtime."""
    import mamba_export as me
    from mamba_export.runtime.check import available_runtimes, open_runtime

    device = torch.device(args.device or ("cuda" if torch.cuda.is_available() else "cpu"))
    dtype = DTYPES[args.dtype]
    torch.manual_seed(args.seed)
    model = load_model(args.model, dtype, str(device))
    cfg = model.config
    n_params = sum(p.numel() for p in model.parameters())
    log(f"model: d_model={cfg.d_model} n_layer={cfg.n_layer} d_state={cfg.d_state} "
        f"vocab={cfg.padded_vocab_size} params={n_params / 1e6:.1f}M dtype={dtype} device={device}")
    ids = torch.randint(0, cfg.vocab_size, (args.batch, args.prompt_len), device=device)

    checks: list[tuple[str, float]] = []
    with torch.no_grad():
        log("parity: forward vs float64 reference and transformers")
        logits = model(ids)
        ref64 = me.MambaLM(cfg, dtype=torch.float64, initialize=False)
        ref64.load_state_dict(model.state_dict())
        checks.append(("forward vs float64 reference", _rel(logits, ref64(ids.cpu()))))
        hf_logits = _transformers_logits(ref64, ids)
        if hf_logits is not None:
            checks.append(("forward vs transformers (float64)", _rel(logits, hf_logits)))
        split = max(1, args.prompt_len // 2)
        last, state = model.prefill(ids[:, :split], model.new_state(args.batch))
        worst = _rel(last, logits[:, split - 1])
        for t in range(split, args.prompt_len):
            last, state = model.step(ids[:, t], state)
            worst = max(worst, _rel(last, logits[:, t]))
        checks.append(("prefill + step vs forward (worst position)", worst))

    rows = [_runtime_row("eager", model, model, ids, args.max_new_tokens, device)]
    with tempfile.TemporaryDirectory() as artifacts_dir:
        formats = ["torch"] + (["onnx"] if device.type == "cpu" and _has("onnxruntime") else [])
        from mamba_export.export.exporter import export_artifacts

        export_model = model if device.type == "cpu" else load_model(args.model, dtype, "cpu")
        if device.type != "cpu":
            export_model.load_state_dict(model.state_dict())
        export_artifacts(export_model, artifacts_dir, formats=formats, log=log)
        for name in available_runtimes(artifacts_dir):
            log(f"runtime {name}: parity and timing")
            runner = open_runtime(artifacts_dir, name, device=str(device))
            rows.append(_runtime_row(name, runner, model, ids, args.max_new_tokens, device))
        out = model.generate(ids, max_new_tokens=args.max_new_tokens, eos_token_id=None,
                             temperature=args.temperature, top_k=args.top_k, seed=args.seed)

    print(f"\nmamba_export {me.__version__} | torch {torch.__version__} | {device} | {dtype} | "
          f"batch {args.batch} prompt {args.prompt_len}")
    print(f"generated ids (sequence 0): {out[0, ids.shape[1]:].tolist()}\n")
    width = max(len(name) for name, _ in checks)
    for name, value in checks:
        print(f"{name:<{width}}  {value:.2e}")
    print(f"\n{'runtime':<8} {'prefill err':>11} {'decode err':>10} {'greedy=eager':>12} "
          f"{'prefill ms':>10} {'decode ms/tok':>13}")
    for r in rows:
        print(f"{r['runtime']:<8} {r['prefill_logits_rel_err']:>11.2e} {r['decode_logits_rel_err']:>10.2e} "
              f"{str(r['greedy_tokens_equal']):>12} {r['prefill_ms']:>10.2f} {r['decode_ms']:>13.3f}")
    return _greedy_status(rows)


def _has(module: str) -> bool:
    try:
        __import__(module)
    except ImportError:
        return False
    return True


def _parse_prompt(text: str, vocab_size: int) -> list[int]:
    try:
        prompt = [int(t) for t in text.replace(",", " ").split()]
    except ValueError:
        raise SystemExit(f"error: --prompt-ids must be integers separated by spaces, got {text!r}")
    if not prompt:
        raise SystemExit("error: --prompt-ids is empty")
    bad = [t for t in prompt if not 0 <= t < vocab_size]
    if bad:
        raise SystemExit(f"error: token ids {bad} are outside the vocabulary [0, {vocab_size})")
    return prompt


def cmd_generate(args: argparse.Namespace) -> int:
    from mamba_export.export.artifacts import ArtifactsError
    from mamba_export.runtime.check import open_runtime

    device = args.device or ("cuda" if torch.cuda.is_available() else "cpu")
    if args.artifacts:
        try:
            runner = open_runtime(args.artifacts, args.runtime, device=device)
        except (ArtifactsError, FileNotFoundError) as e:
            raise SystemExit(f"error: {e}")
    elif args.model:
        runner = load_model(args.model, DTYPES[args.dtype], device)
        if args.runtime == "compile":
            from mamba_export.compiled import compile_model

            runner = compile_model(runner)
        elif args.runtime not in ("eager", "torch"):
            raise SystemExit(f"error: --runtime {args.runtime} needs --artifacts DIR (run `mamba-export export`)")
    else:
        raise SystemExit("error: give --artifacts DIR or --model PATH|PRESET")
    ids = torch.tensor([_parse_prompt(args.prompt_ids, runner.config.vocab_size)], device=device)
    extra = {"cuda_graph": True} if args.cuda_graph else {}
    out = runner.generate(ids, max_new_tokens=args.max_new_tokens, temperature=args.temperature,
                          top_k=args.top_k, top_p=args.top_p, min_p=args.min_p,
                          repetition_penalty=args.repetition_penalty, seed=args.seed,
                          streamer=lambda t: print(int(t[0]), end=" ", flush=True), **extra)
    print()
    log(f"generated {out.shape[1] - ids.shape[1]} tokens with runtime {args.runtime}")
    return 0


def cmd_export(args: argparse.Namespace) -> int:
    from mamba_export.export.exporter import export_artifacts

    device = args.device or "cpu"
    model = load_model(args.model, DTYPES[args.dtype], device)
    formats = [f.strip() for f in args.formats.split(",") if f.strip()]
    from mamba_export.plugins.selective_scan import TensorRTUnavailableError

    try:
        export_artifacts(model, args.out, formats=formats, log=log)
    except (ValueError, TensorRTUnavailableError) as e:
        raise SystemExit(f"error: {e}")
    if not args.no_check:
        return cmd_check(argparse.Namespace(artifacts=args.out, device=device, runtimes=None))
    return 0


def cmd_check(args: argparse.Namespace) -> int:
    from mamba_export.export.artifacts import ArtifactsError
    from mamba_export.runtime.check import check_artifacts

    runtimes = args.runtimes.split(",") if args.runtimes else None
    try:
        rows = check_artifacts(args.artifacts, runtimes=runtimes, device=args.device, log=log)
    except (ArtifactsError, FileNotFoundError) as e:
        raise SystemExit(f"error: {e}")
    print(f"\n{'runtime':<10} {'prefill rel err':>16} {'decode rel err':>15} {'greedy = eager':>15}")
    for r in rows:
        print(f"{r['runtime']:<10} {r['prefill_logits_rel_err']:>16.2e} {r['decode_logits_rel_err']:>15.2e} "
              f"{str(r['greedy_tokens_equal']):>15}")
    return _greedy_status(rows)


def _add_model_args(p: argparse.ArgumentParser, default_model: str | None) -> None:
    p.add_argument("--model", default=default_model or None, required=default_model is None,
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
    gen.add_argument("--artifacts", default=None, help="an exported artifacts directory")
    gen.add_argument("--runtime", default="torch", choices=["eager", "torch", "compile", "ort", "tensorrt"],
                     help="with --artifacts: torch (.pt2), compile (AOTInductor / torch.compile), ort, "
                          "tensorrt (needs TensorRT >= 10.10)")
    _add_model_args(gen, "")
    gen.add_argument("--prompt-ids", required=True, help='e.g. "1 2 3"')
    gen.add_argument("--max-new-tokens", type=int, default=32)
    gen.add_argument("--top-p", type=float, default=1.0)
    gen.add_argument("--min-p", type=float, default=0.0)
    gen.add_argument("--repetition-penalty", type=float, default=1.0)
    gen.add_argument("--cuda-graph", action="store_true", help="replay a captured decode step (CUDA)")
    gen.set_defaults(func=cmd_generate)
    exp = sub.add_parser("export", help="write prefill/decode graphs and manifest.json to --out")
    _add_model_args(exp, "mamba-tiny")
    exp.add_argument("--out", required=True)
    exp.add_argument("--formats", default="torch,onnx", help="comma-separated: torch, aoti, onnx, tensorrt (needs TensorRT >= 10.10)")
    exp.add_argument("--no-check", action="store_true", help="skip the parity check after export")
    exp.set_defaults(func=cmd_export)
    chk = sub.add_parser("check", help="parity of every runtime of --artifacts against eager")
    chk.add_argument("--artifacts", required=True)
    chk.add_argument("--runtimes", default=None, help="comma-separated subset (default: all available)")
    chk.add_argument("--device", default=None)
    chk.set_defaults(func=cmd_check)
    return parser


def main(argv: list[str] | None = None) -> int:
    args = build_parser().parse_args(argv)
    return args.func(args)


if __name__ == "__main__":
    sys.exit(main())
