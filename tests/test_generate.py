"""Token generation: greedy against hand-written argmax decoding, seeded sampling, the logits
processors on hand-made logits (and against transformers' own processors), eos handling, the
streamer, chunked prefill and argument checking."""

import math

import pytest
import torch

from _util import rel_err
from mamba_export import MambaConfig, MambaLM
from mamba_export.generate import generate, process_logits, select_tokens

NEG = float("-inf")


# ----------------------------------------------------------------------------- fixtures
@pytest.fixture(scope="module")
def tiny():
    """A tiny random MambaLM with logits spread enough that greedy choices are clear-cut."""
    torch.manual_seed(123)
    cfg = MambaConfig(d_model=24, n_layer=2, vocab_size=101, d_state=4, d_conv=4, eos_token_id=None)
    model = MambaLM(cfg).eval()
    with torch.no_grad():
        model.backbone.embedding.weight.mul_(40.0)  # tied head: larger logits
        for p in model.parameters():
            p.add_(0.05 * torch.randn_like(p))
    return model


def prompt(vocab=101, batch=3, length=7, seed=0):
    return torch.randint(0, vocab, (batch, length), generator=torch.Generator().manual_seed(seed))


class Toy:
    """A Markov 'model': the next-token logits are a fixed row of ``table`` picked by the last
    token. Records every call so tests can see what generate() asked for."""

    def __init__(self, table):
        self.table = table
        self.prefill_shapes = []
        self.steps = []

    def new_state(self, batch):
        return (torch.zeros(batch),)

    def prefill(self, ids, state):
        self.prefill_shapes.append(tuple(ids.shape))
        return self.table[ids[:, -1]].clone(), (state[0] + ids.shape[1],)

    def step(self, ids, state):
        assert ids.dim() == 1
        self.steps.append(ids.clone())
        return self.table[ids].clone(), (state[0] + 1,)

    def generate(self, ids, **kw):
        return generate(self.prefill, self.step, self.new_state, ids, **kw)


def chain_table(vocab, nxt, hi=5.0):
    """Logits whose argmax after token t is nxt[t]."""
    t = torch.zeros(vocab, vocab)
    for a, b in enumerate(nxt):
        t[a, b] = hi
    return t


# ----------------------------------------------------------------------------- greedy
def test_greedy_equals_hand_written_argmax(tiny):
    ids = prompt()
    n = 10
    seq = ids.clone()
    with torch.no_grad():
        for _ in range(n):
            logits = tiny(seq)[:, -1, : tiny.config.vocab_size]  # full forward every time
            seq = torch.cat([seq, logits.argmax(-1, keepdim=True)], dim=1)
    out = tiny.generate(ids, max_new_tokens=n)
    assert out.shape == (3, 7 + n)
    assert torch.equal(out[:, :7], ids)
    assert torch.equal(out, seq)
    # top_k=1 with a temperature is greedy too.
    assert torch.equal(tiny.generate(ids, max_new_tokens=n, temperature=0.7, top_k=1, seed=4), seq)


def test_greedy_through_prefill_and_step_by_hand(tiny):
    ids = prompt(batch=2, length=5, seed=1)
    state = tiny.new_state(2)
    logits, state = tiny.prefill(ids, state)
    toks = []
    for _ in range(6):
        t = logits[:, :101].argmax(-1)
        toks.append(t)
        logits, state = tiny.step(t, state)
    assert torch.equal(tiny.generate(ids, max_new_tokens=6)[:, 5:], torch.stack(toks, 1))


def test_toy_chain_greedy_exact():
    nxt = [3, 0, 4, 2, 1]
    toy = Toy(chain_table(5, nxt))
    out = toy.generate(torch.tensor([[1], [2]]), max_new_tokens=4)
    assert out.tolist() == [[1, 0, 3, 2, 4], [2, 4, 1, 0, 3]]
    assert toy.prefill_shapes == [(2, 1)]
    assert len(toy.steps) == 3  # no step after the last token


def test_max_new_tokens_zero_returns_prompt():
    toy = Toy(chain_table(5, [1, 2, 3, 4, 0]))
    ids = torch.tensor([[0, 1, 2]])
    assert torch.equal(toy.generate(ids, max_new_tokens=0), ids)
    assert toy.steps == []


def test_padded_vocab_is_never_chosen():
    # Padding columns (101..103) are masked even where their logits are the largest.
    logits = torch.zeros(2, 104)
    logits[:, 102] = 100.0
    logits[0, 7] = 1.0
    scores = process_logits(logits, vocab_size=101)
    assert torch.isinf(scores[:, 101:]).all() and (scores[:, 101:] < 0).all()
    assert select_tokens(scores, True, None).tolist() == [7, 0]


# ----------------------------------------------------------------------------- sampling
def test_seeded_sampling_is_reproducible(tiny):
    ids = prompt(batch=2, length=4)
    kw = dict(max_new_tokens=24, temperature=1.5)
    a = tiny.generate(ids, seed=1, **kw)
    b = tiny.generate(ids, seed=1, **kw)
    c = tiny.generate(ids, seed=2, **kw)
    assert torch.equal(a, b)
    assert not torch.equal(a, c)
    assert not torch.equal(a, tiny.generate(ids, max_new_tokens=24))  # it is not greedy
    assert int(a.max()) < 101


def test_sampling_draws_from_processed_distribution():
    """Empirical frequencies of many sampled first tokens match the processed softmax."""
    vocab = 6
    row = torch.tensor([2.0, 1.0, 0.5, 0.0, -1.0, 1.5])
    toy = Toy(row.repeat(vocab, 1))
    n = 6000
    ids = torch.zeros(n, 1, dtype=torch.long)
    out = toy.generate(ids, max_new_tokens=1, temperature=2.0, top_k=4, seed=0)[:, 1]
    freq = torch.bincount(out, minlength=vocab).double() / n
    expected = process_logits(row[None], temperature=2.0, top_k=4).softmax(-1)[0].double()
    assert freq[3] == 0 and freq[4] == 0  # outside the top 4: never drawn
    assert (freq - expected).abs().max() < 0.03


def test_sampling_respects_top_k_at_every_step():
    vocab = 12
    table = torch.randn(vocab, vocab, generator=torch.Generator().manual_seed(0))
    toy = Toy(table)
    ids = torch.randint(0, vocab, (16, 2), generator=torch.Generator().manual_seed(1))
    out = toy.generate(ids, max_new_tokens=8, temperature=1.0, top_k=3, seed=5)
    for t in range(2, out.shape[1]):
        allowed = table[out[:, t - 1]].topk(3, dim=-1).indices
        assert bool((allowed == out[:, t : t + 1]).any(-1).all())


# ----------------------------------------------------------------------------- processors
def test_top_k_exact_mask():
    logits = torch.tensor([[1.0, 5.0, 3.0, 4.0, 2.0], [0.0, -1.0, 2.0, 2.0, 1.0]])
    out = process_logits(logits, top_k=2)
    assert out.tolist() == [[NEG, 5.0, NEG, 4.0, NEG], [NEG, NEG, 2.0, 2.0, NEG]]
    # top_k >= vocab or 0: nothing removed.
    assert torch.equal(process_logits(logits, top_k=5), logits)
    assert torch.equal(process_logits(logits, top_k=0), logits)
    # Ties at the k-th value are all kept (as transformers does).
    assert process_logits(torch.tensor([[3.0, 1.0, 3.0, 2.0]]), top_k=1).tolist() == [[3.0, NEG, 3.0, NEG]]


def test_top_p_exact_mask():
    probs = torch.tensor([0.05, 0.5, 0.15, 0.3])  # shuffled, so unsorting is exercised
    logits = probs.log()[None]
    keep = lambda p: torch.isfinite(process_logits(logits, top_p=p))[0].tolist()  # noqa: E731
    assert keep(0.4) == [False, True, False, False]   # 0.5 alone reaches 0.4
    assert keep(0.5) == [False, True, False, False]
    assert keep(0.75) == [False, True, False, True]   # 0.5 + 0.3
    assert keep(0.9) == [False, True, True, True]     # 0.5 + 0.3 + 0.15
    assert keep(0.99) == [True, True, True, True]
    assert keep(1.0) == [True, True, True, True]
    assert keep(1e-6) == [False, True, False, False]  # at least one token survives
    kept = process_logits(logits, top_p=0.75)
    assert kept[0, 1] == logits[0, 1] and kept[0, 3] == logits[0, 3]  # survivors unchanged


def test_min_p_exact_mask():
    logits = torch.tensor([[0.05, 0.5, 0.15, 0.3]]).log()
    keep = lambda p: torch.isfinite(process_logits(logits, min_p=p))[0].tolist()  # noqa: E731
    assert keep(0.0) == [True, True, True, True]
    assert keep(0.2) == [False, True, True, True]    # floor 0.1
    assert keep(0.35) == [False, True, False, True]  # floor 0.175
    assert keep(0.9) == [False, True, False, False]  # floor 0.45
    # A token exactly at the floor is kept (transformers removes only probs < floor).
    exact = torch.tensor([[0.0, -math.log(2), -math.log(4), -3.0]])
    p = exact.softmax(-1)[0]
    assert p[1] == 0.5 * p[0] and p[2] == 0.25 * p[0]  # exact in float32
    assert torch.isfinite(process_logits(exact, min_p=0.5))[0].tolist() == [True, True, False, False]
    assert torch.isfinite(process_logits(exact, min_p=0.25))[0].tolist() == [True, True, True, False]


def test_repetition_penalty_exact():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0], [2.0, -1.0, 0.5, 3.0]])
    seen = torch.tensor([[0, 1, 1], [3, 3, 3]])  # repeats penalised once, not per occurrence
    out = process_logits(logits, seen, repetition_penalty=2.0)
    assert out.tolist() == [[1.0, -2.0, 0.5, 3.0], [2.0, -1.0, 0.5, 1.5]]
    # A penalty < 1 rewards seen tokens; 1.0 and no history change nothing.
    assert process_logits(logits[:1], seen[:1], repetition_penalty=0.5).tolist() == [[4.0, -0.5, 0.5, 3.0]]
    assert torch.equal(process_logits(logits, seen, repetition_penalty=1.0), logits)
    assert torch.equal(process_logits(logits, None, repetition_penalty=2.0), logits)
    # int32 histories work too.
    assert torch.equal(process_logits(logits, seen.int(), repetition_penalty=2.0), out)


def test_temperature_and_order():
    logits = torch.tensor([[2.0, -1.0, 0.5, 3.0]])
    assert torch.allclose(process_logits(logits, temperature=0.5), logits / 0.5)
    assert torch.equal(process_logits(logits, temperature=0.0), logits)  # greedy: untouched
    # Penalty before temperature: (2 / 2) / 0.5 = 2 for the seen token 0.
    out = process_logits(logits, torch.tensor([[0]]), temperature=0.5, repetition_penalty=2.0)
    assert torch.allclose(out, torch.tensor([[2.0, -2.0, 1.0, 6.0]]))
    # The input is not modified and the result is float32.
    half = logits.half()
    res = process_logits(half, top_k=1)
    assert res.dtype == torch.float32 and torch.equal(half, logits.half())


def test_processors_match_transformers():
    lp = pytest.importorskip("transformers.generation.logits_process")
    g = torch.Generator().manual_seed(0)
    logits = torch.randn(8, 50, generator=g) * 3
    seen = torch.randint(0, 50, (8, 12), generator=g)
    cases = [
        (dict(top_k=7), [lp.TopKLogitsWarper(7)]),
        (dict(top_p=0.6), [lp.TopPLogitsWarper(0.6)]),
        (dict(min_p=0.1), [lp.MinPLogitsWarper(0.1)]),
        (dict(repetition_penalty=1.7), [lp.RepetitionPenaltyLogitsProcessor(1.7)]),
        (dict(temperature=0.8, top_k=10, top_p=0.9, repetition_penalty=1.3),
         [lp.RepetitionPenaltyLogitsProcessor(1.3), lp.TemperatureLogitsWarper(0.8),
          lp.TopKLogitsWarper(10), lp.TopPLogitsWarper(0.9)]),
    ]
    for kw, procs in cases:
        ref = logits.clone()
        for proc in procs:
            ref = proc(seen, ref)
        out = process_logits(logits, seen, **kw)
        assert torch.equal(torch.isinf(out), torch.isinf(ref)), kw
        fin = torch.isfinite(ref)
        assert torch.allclose(out[fin], ref[fin]), kw


# ----------------------------------------------------------------------------- eos
def test_eos_finished_sequences_keep_emitting_eos_and_stop_when_all_done():
    # Chains: 1 -> 2 -> 0(eos) ; 3 -> 4 -> 5 -> 0 ; after eos the table would emit 4.
    nxt = [4, 2, 0, 4, 5, 0]
    toy = Toy(chain_table(6, nxt))
    cols = []
    out = toy.generate(torch.tensor([[1], [3]]), max_new_tokens=10, eos_token_id=0, streamer=cols.append)
    assert out.shape[1] == 1 + 3  # stopped once both emitted eos, well before 10 tokens
    assert out.tolist() == [[1, 2, 0, 0], [3, 4, 5, 0]]
    assert len(cols) == 3 and len(toy.steps) == 2


def test_eos_none_never_stops():
    toy = Toy(chain_table(3, [0, 0, 0]))
    out = toy.generate(torch.tensor([[1]]), max_new_tokens=5, eos_token_id=None)
    assert out.tolist() == [[1, 0, 0, 0, 0, 0]]


def test_eos_on_model_stops_early(tiny):
    ids = prompt(batch=1, length=6, seed=2)
    free = tiny.generate(ids, max_new_tokens=8)
    eos = int(free[0, 6 + 2])
    first = int((free[0, 6:] == eos).nonzero()[0])  # its first occurrence
    out = tiny.generate(ids, max_new_tokens=8, eos_token_id=eos)
    assert out.shape[1] == 6 + first + 1  # batch of one: stops right after eos
    assert torch.equal(out, free[:, : 6 + first + 1])
    # The config's eos id is the default.
    tiny.config.eos_token_id = eos
    try:
        assert torch.equal(tiny.generate(ids, max_new_tokens=8), out)
        assert torch.equal(tiny.generate(ids, max_new_tokens=8, eos_token_id=None), free)
    finally:
        tiny.config.eos_token_id = None


# ----------------------------------------------------------------------------- streamer, chunks
def test_streamer_receives_every_new_column(tiny):
    ids = prompt(batch=2, length=5)
    cols = []
    out = tiny.generate(ids, max_new_tokens=7, temperature=1.0, top_p=0.9, seed=3, streamer=cols.append)
    assert len(cols) == 7 and all(c.shape == (2,) for c in cols)
    assert torch.equal(torch.stack(cols, 1), out[:, 5:])


@pytest.mark.parametrize("chunk", [1, 2, 5, 11, 100])
def test_prefill_chunks_equal_one_prefill(tiny, chunk):
    ids = prompt(batch=2, length=11, seed=4)
    seen = {}

    def recording_prefill(key):
        def fn(x, state):
            logits, state = tiny.prefill(x, state)
            seen.setdefault(key, []).append((x.shape[1], logits))
            return logits, state
        return fn

    kw = dict(max_new_tokens=6, temperature=0.9, seed=7)
    ref = generate(recording_prefill("one"), tiny.step, tiny.new_state, ids, **kw)
    out = generate(recording_prefill("chunked"), tiny.step, tiny.new_state, ids,
                   prefill_chunk_size=chunk, **kw)
    assert torch.equal(out, ref)
    assert [n for n, _ in seen["chunked"]] == [min(chunk, 11 - s) for s in range(0, 11, chunk)]
    assert rel_err(seen["chunked"][-1][1], seen["one"][-1][1]) <= 1e-5
    assert torch.equal(tiny.generate(ids, max_new_tokens=6, prefill_chunk_size=chunk),
                       tiny.generate(ids, max_new_tokens=6))


# ----------------------------------------------------------------------------- arguments
@pytest.mark.parametrize("kw, match", [
    (dict(max_new_tokens=-1), "max_new_tokens must be a non-negative int"),
    (dict(max_new_tokens=2.0), "max_new_tokens must be a non-negative int"),
    (dict(temperature=-0.1), "temperature must be >= 0"),
    (dict(top_k=-1), "top_k must be >= 0"),
    (dict(top_p=0.0), r"top_p must be in \(0, 1\]"),
    (dict(top_p=1.5), r"top_p must be in \(0, 1\]"),
    (dict(min_p=1.0), r"min_p must be in \[0, 1\)"),
    (dict(min_p=-0.5), r"min_p must be in \[0, 1\)"),
    (dict(repetition_penalty=0.0), "repetition_penalty must be > 0"),
    (dict(repetition_penalty=-1.0), "repetition_penalty must be > 0"),
    (dict(prefill_chunk_size=-2), "prefill_chunk_size must be"),
    (dict(prefill_chunk_size=1.5), "prefill_chunk_size must be"),
])
def test_invalid_sampling_args_raise(tiny, kw, match):
    kw = {"max_new_tokens": 3, **kw}
    with pytest.raises(ValueError, match=match):
        tiny.generate(prompt(batch=1, length=3), **kw)


def test_invalid_input_ids_raise():
    toy = Toy(chain_table(3, [1, 2, 0]))
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length>=1\], got shape \[3\]"):
        toy.generate(torch.tensor([0, 1, 2]), max_new_tokens=2)
    with pytest.raises(ValueError, match=r"input_ids must be \[batch, length>=1\], got shape \[2, 0\]"):
        toy.generate(torch.zeros(2, 0, dtype=torch.long), max_new_tokens=2)


def test_cuda_graph_needs_cuda(tiny):
    if torch.cuda.is_available():
        pytest.skip("CPU-only check")
    with pytest.raises(ValueError, match="cuda_graph=True needs the model and the state on a CUDA device"):
        tiny.generate(prompt(batch=1, length=3), max_new_tokens=2, cuda_graph=True)


def test_sampling_softmax_sanity():
    # The processed distribution of a -inf-masked row is a proper distribution over survivors.
    logits = torch.tensor([[1.0, 2.0, 3.0, 4.0]])
    probs = process_logits(logits, top_k=2).softmax(-1)
    assert probs[0, :2].sum() == 0
    assert math.isclose(float(probs.sum()), 1.0, rel_tol=1e-6)
    assert math.isclose(float(probs[0, 3] / probs[0, 2]), math.e, rel_tol=1e-5)
