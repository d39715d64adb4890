"""Token generation shared by every runtime.

A runtime provides three callables: ``prefill(ids [B, L], state) -> (logits [B, V], state)``,
``step(ids [B], state) -> (logits [B, V], state)`` and ``new_state(batch_size) -> state``.
Sampling runs on torch tensors on the logits' device, so eager, compiled, ONNX Runtime and
TensorRT paths share one implementation and give identical tokens for identical logits.
"""

from __future__ import annotations

import functools
from typing import Any, Callable

import torch
from torch import Tensor

PrefillFn = Callable[[Tensor, Any], tuple[Tensor, Any]]
StepFn = Callable[[Tensor, Any], tuple[Tensor, Any]]


def process_logits(
    logits: Tensor,
    generated: Tensor | None = None,
    *,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    vocab_size: int | None = None,
) -> Tensor:
    """Apply the logits processors in transformers' order; returns float32 logits ``[B, V]``
    with removed tokens at -inf. ``generated`` holds the ids seen so far (for the penalty)."""
    logits = logits.float().clone()
    if vocab_size is not None and vocab_size < logits.shape[-1]:
        logits[:, vocab_size:] = float("-inf")  # padding rows of the embedding are not tokens
    if repetition_penalty != 1.0 and generated is not None and generated.numel():
        seen = torch.gather(logits, 1, generated)
        seen = torch.where(seen > 0, seen / repetition_penalty, seen * repetition_penalty)
        logits.scatter_(1, generated, seen)
    if temperature > 0 and temperature != 1.0:
        logits = logits / temperature
    if top_k > 0 and top_k < logits.shape[-1]:
        kth = torch.topk(logits, top_k, dim=-1).values[:, -1:]
        logits = logits.masked_fill(logits < kth, float("-inf"))
    if top_p < 1.0:
        sorted_logits, order = torch.sort(logits, dim=-1, descending=True)
        probs = sorted_logits.softmax(-1)
        # Drop a token when the mass strictly before it already reaches top_p (keeps >= 1 token).
        drop_sorted = (probs.cumsum(-1) - probs) >= top_p
        drop = torch.zeros_like(drop_sorted).scatter(1, order, drop_sorted)
        logits = logits.masked_fill(drop, float("-inf"))
    if min_p > 0.0:
        probs = logits.softmax(-1)
        floor = min_p * probs.max(-1, keepdim=True).values
        logits = logits.masked_fill(probs < floor, float("-inf"))
    return logits


def greedy_tokens(logits: Tensor, vocab_size: int | None = None) -> Tensor:
    """``logits[:, :vocab_size].argmax(-1)``: one kernel on CUDA (kernels/greedy.py, where
    torch's argmax took 14-15 us per decode step), torch elsewhere."""
    if logits.is_cuda and logits.dtype != torch.float64 and not torch.compiler.is_compiling():
        from .ops import triton_available

        if triton_available():
            from .kernels.greedy import greedy_tokens as kernel

            return kernel(logits, vocab_size)
    return logits[:, :vocab_size].argmax(-1)


def select_tokens(logits: Tensor, greedy: bool, generator: torch.Generator | None) -> Tensor:
    if greedy:
        return logits.argmax(-1)
    probs = logits.softmax(-1)
    return torch.multinomial(probs, 1, generator=generator).squeeze(-1)


def _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty) -> None:
    if not isinstance(max_new_tokens, int) or max_new_tokens < 0:
        raise ValueError(f"max_new_tokens must be a non-negative int, got {max_new_tokens!r}")
    if temperature < 0:
        raise ValueError(f"temperature must be >= 0 (0 = greedy), got {temperature}")
    if top_k < 0:
        raise ValueError(f"top_k must be >= 0 (0 = off), got {top_k}")
    if not 0.0 < top_p <= 1.0:
        raise ValueError(f"top_p must be in (0, 1], got {top_p}")
    if not 0.0 <= min_p < 1.0:
        raise ValueError(f"min_p must be in [0, 1), got {min_p}")
    if repetition_penalty <= 0:
        raise ValueError(f"repetition_penalty must be > 0, got {repetition_penalty}")


def _check_chunk(prefill_chunk_size) -> None:
    if prefill_chunk_size is not None and (
        not isinstance(prefill_chunk_size, int) or isinstance(prefill_chunk_size, bool)
        or prefill_chunk_size < 0
    ):
        raise ValueError(
            f"prefill_chunk_size must be None/0 (one prefill) or a positive int, got {prefill_chunk_size!r}"
        )


@torch.no_grad()
def generate(
    prefill: PrefillFn,
    step: StepFn,
    new_state: Callable[[int], Any],
    input_ids: Tensor,
    *,
    max_new_tokens: int = 32,
    temperature: float = 0.0,
    top_k: int = 0,
    top_p: float = 1.0,
    min_p: float = 0.0,
    repetition_penalty: float = 1.0,
    eos_token_id: int | None = None,
    seed: int | None = None,
    streamer: Callable[[Tensor], None] | None = None,
    vocab_size: int | None = None,
    prefill_chunk_size: int | None = None,
    cuda_graph: bool = False,
    graph_cache: dict | None = None,
) -> Tensor:
    """Generate up to ``max_new_tokens`` after ``input_ids [B, L]``; returns ``[B, L + T]``.

    Greedy when ``temperature == 0`` (the default) or ``top_k == 1``; otherwise samples from the
    processed distribution with a generator seeded by ``seed``. Sequences that emitted
    ``eos_token_id`` keep emitting it; generation stops once all have. ``streamer`` receives each
    new token column ``[B]``. ``cuda_graph`` replays one captured decode step per token and,
    with ``prefill_chunk_size``, one captured prefill per full chunk; ``graph_cache`` (a dict the
    caller keeps) reuses those captures across calls.
    """
    _check_sampling(max_new_tokens, temperature, top_k, top_p, min_p, repetition_penalty)
    _check_chunk(prefill_chunk_size)
    if input_ids.dim() != 2 or input_ids.shape[1] < 1:
        raise ValueError(f"input_ids must be [batch, length>=1], got shape {list(input_ids.shape)}")
    batch = input_ids.shape[0]
    greedy = temperature == 0 or top_k == 1
    generator = None
    if not greedy:
        generator = torch.Generator(device=input_ids.device)
        generator.manual_seed(0 if seed is None else seed)
    sampling = dict(temperature=temperature, top_k=top_k, top_p=top_p, min_p=min_p,
                    repetition_penalty=repetition_penalty, vocab_size=vocab_size)

    state = new_state(batch)
    chunk = prefill_chunk_size or input_ids.shape[1]
    graphs = {} if graph_cache is None else graph_cache
    for start in range(0, input_ids.shape[1], chunk):
        ids = input_ids[:, start : start + chunk]
        run = prefill
        if cuda_graph and prefill_chunk_size and ids.shape[1] == chunk:  # full chunks: one graph
            key = ("prefill", tuple(ids.shape))
            run = graphs[key] = graphs.get(key) or CudaGraphStep(prefill, state)
        logits, state = run(ids, state)
    if cuda_graph:
        key = ("step", batch)
        step = graphs[key] = graphs.get(key) or CudaGraphStep(step, state)

    sequences = input_ids
    finished = torch.zeros(batch, dtype=torch.bool, device=input_ids.device)
    for i in range(max_new_tokens):
        if greedy and repetition_penalty == 1.0:  # no processor changes which logit is largest
            tokens = greedy_tokens(logits, vocab_size)
        else:
            tokens = select_tokens(process_logits(logits, sequences, **sampling), greedy, generator)
        if eos_token_id is not None:
            tokens = torch.where(finished, torch.full_like(tokens, eos_token_id), tokens)
            finished = finished | (tokens == eos_token_id)
        sequences = torch.cat([sequences, tokens[:, None].to(sequences.dtype)], dim=1)
        if streamer is not None:
            streamer(tokens)
        if i + 1 == max_new_tokens or (eos_token_id is not None and bool(finished.all())):
            break
        logits, state = step(tokens.to(input_ids.dtype), state)
    return sequences


class GenerationMixin:
    """``generate`` for anything with ``prefill``, ``step``, ``new_state`` and a ``config``:
    the eager model, its compiled form and every runtime share it."""

    def _graph_cache(self) -> dict:
        """Captured CUDA graphs kept across generate() calls, dropped when any parameter's
        storage changes (the graphs read the parameters at fixed addresses)."""
        params = getattr(self, "parameters", None)
        key = tuple(p.data_ptr() for p in params()) if callable(params) else None
        if getattr(self, "_graphs_key", None) != key or not hasattr(self, "_graphs"):
            self._graphs_key, self._graphs = key, {}
        return self._graphs

    def graph_step(self) -> StepFn:
        """The step that ``generate(cuda_graph=True)`` captures: an in-place one where the
        runner has it (no state copies in the graph)."""
        if getattr(self, "supports_inplace_step", False):
            return functools.partial(self.step, inplace=True)
        return self.step

    @torch.no_grad()
    def generate(self, input_ids: Tensor, max_new_tokens: int = 32, **sampling) -> Tensor:
        """Sample continuations; see :func:`generate` for the options. ``eos_token_id``
        defaults to the config's, as in transformers."""
        sampling.setdefault("eos_token_id", self.config.eos_token_id)
        step = self.step
        if sampling.get("cuda_graph"):
            step = self.graph_step()
            sampling.setdefault("graph_cache", self._graph_cache())
        return generate(self.prefill, step, self.new_state, input_ids,
                        max_new_tokens=max_new_tokens, vocab_size=self.config.vocab_size, **sampling)


class CudaGraphStep:
    """A step, or a prefill of a fixed chunk size, captured once in a CUDA graph and replayed.

    Static buffers hold the token ids (shaped by the first call) and the state; the captured
    graph runs the function and copies the next state back into the static state, so a replay
    leaves everything in place. State objects are tuples of tensors (conv, ssm); a caller's
    state that is not the static one is copied in first.
    """

    def __init__(self, step: StepFn, state: Any, warmup: int = 2):
        tensors = tuple(state)
        if not all(t.is_cuda for t in tensors):
            raise ValueError("cuda_graph=True needs the model and the state on a CUDA device")
        self._step = step
        self._state_type = type(state)
        self._static_state = tuple(t.clone() for t in tensors)
        self._static_tokens: Tensor | None = None
        self._graph: torch.cuda.CUDAGraph | None = None
        self._warmup = warmup
        self._logits: Tensor | None = None

    def _wrap(self, tensors):
        return self._state_type(*tensors) if hasattr(self._state_type, "_fields") else self._state_type(tensors)

    def _capture(self) -> None:
        saved = tuple(t.clone() for t in self._static_state)  # an in-place step mutates it
        side = torch.cuda.Stream()
        side.wait_stream(torch.cuda.current_stream())
        with torch.cuda.stream(side):
            for _ in range(self._warmup):  # compile / autotune outside the capture
                self._step(self._static_tokens, self._wrap(self._static_state))
        torch.cuda.current_stream().wait_stream(side)
        for dst, src in zip(self._static_state, saved):
            dst.copy_(src)
        graph = torch.cuda.CUDAGraph()
        with torch.cuda.graph(graph):
            logits, next_state = self._step(self._static_tokens, self._wrap(self._static_state))
            for dst, src in zip(self._static_state, next_state):
                if dst is not src:  # an in-place step already wrote the static state
                    dst.copy_(src)
        self._graph, self._logits = graph, logits

    def __call__(self, tokens: Tensor, state: Any) -> tuple[Tensor, Any]:
        if self._static_tokens is None:
            self._static_tokens = torch.empty_like(tokens, dtype=torch.long)
        if tokens.shape != self._static_tokens.shape:
            raise ValueError(f"captured for token ids of shape {list(self._static_tokens.shape)}, "
                             f"got {list(tokens.shape)}")
        if not any(s is t for s, t in zip(self._static_state, tuple(state))):
            for dst, src in zip(self._static_state, tuple(state)):
                dst.copy_(src)
        self._static_tokens.copy_(tokens)
        if self._graph is None:
            self._capture()
        self._graph.replay()
        return self._logits, self._wrap(self._static_state)
