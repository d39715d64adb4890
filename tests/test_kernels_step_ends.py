"""The two ends of a decode step: embedding rows of the token ids (kernels/embedding.py) and
greedy token selection (kernels/greedy.py), against torch; in Triton's interpreter on CPU,
natively on CUDA. Outputs are poisoned before the kernels run (NaN rows, -1 ids)."""

import pytest
import torch

from mamba_export.generate import greedy_tokens as generate_greedy
from mamba_export.kernels import _common
from mamba_export.kernels.embedding import embedding_fwd
from mamba_export.kernels.greedy import greedy_tokens

DEVICE = "cuda" if torch.cuda.is_available() else "cpu"


@pytest.fixture(autouse=True)
def _poison(monkeypatch):
    monkeypatch.setattr(_common, "POISON", True)


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,vocab,vocab_size", [(1, 1, None), (1, 50, 37), (3, 5000, None),
                                                    (16, 9000, 8999)])
def test_greedy_matches_argmax(dtype, batch, vocab, vocab_size):
    """Random rows (several blocks of columns for the wider ones), against torch's argmax over
    the first vocab_size columns; exact."""
    g = torch.Generator().manual_seed(vocab)
    logits = torch.randn(batch, vocab, generator=g).to(dtype).to(DEVICE)
    want = logits[:, :vocab_size].argmax(-1)
    assert torch.equal(greedy_tokens(logits, vocab_size), want)
    assert torch.equal(generate_greedy(logits, vocab_size), want)


def test_greedy_ties_nan_inf_and_padding():
    """Ties go to the first index (in the same lane and across lanes), a NaN beats every number
    and the first NaN wins, -inf rows give 0, columns past vocab_size are never chosen."""
    v = 20000  # > one block of columns: ties and NaNs in different iterations and lanes
    logits = torch.zeros(6, v)
    logits[0, [5, 9000, 19000]] = 3.0  # tie across iterations: first
    logits[1, [7, 8]] = 2.0  # tie in neighbouring lanes: first
    logits[2, [300, 12000]] = float("nan")
    logits[2, 100] = float("inf")
    logits[3] = float("-inf")
    logits[4, 19999] = 9.0  # only in the padding (vocab_size below)
    logits[4, 17] = 1.0
    logits[5, 19000] = float("inf")
    logits[5, 400] = float("inf")
    logits = logits.to(DEVICE)
    got = greedy_tokens(logits, 19990).cpu()
    assert got.tolist() == [5, 7, 300, 0, 17, 400]
    assert torch.equal(got[[0, 1, 3, 5]], logits[[0, 1, 3, 5], :19990].argmax(-1).cpu())


def test_greedy_strided_rows_and_repeated_calls():
    """A view whose rows are not contiguous (every other row of a wider buffer); calls in a row
    on other data of the shape (the per-row counters return to 0, the partials are reused)."""
    g = torch.Generator().manual_seed(2)
    for _ in range(3):
        buf = torch.randn(8, 3000, generator=g).to(DEVICE)
        assert torch.equal(greedy_tokens(buf[::2, :2500]), buf[::2, :2500].argmax(-1))


def test_greedy_rejects_bad_input():
    with pytest.raises(ValueError, match="logits must be"):
        greedy_tokens(torch.zeros(3, device=DEVICE))
    with pytest.raises(ValueError, match="vocab_size must be in 1..10"):
        greedy_tokens(torch.zeros(2, 10, device=DEVICE), 11)
    with pytest.raises(ValueError, match="float32/float16/bfloat16/float64"):
        greedy_tokens(torch.zeros(2, 10, dtype=torch.int32, device=DEVICE))


@pytest.mark.parametrize("dtype", [torch.float32, torch.float16, torch.bfloat16])
@pytest.mark.parametrize("batch,d", [(1, 7), (3, 768), (16, 2500)])
@pytest.mark.parametrize("id_dtype", [torch.int64, torch.int32])
def test_embedding_rows(dtype, batch, d, id_dtype):
    """Rows copied exactly (several column blocks for d = 2500), ids repeated."""
    g = torch.Generator().manual_seed(d)
    table = torch.randn(97, d, generator=g).to(dtype).to(DEVICE)
    ids = torch.randint(0, 97, (batch,), generator=g)
    if batch > 1:
        ids[1] = ids[0]
    ids = ids.to(id_dtype).to(DEVICE)
    assert torch.equal(embedding_fwd(ids, table), table[ids.long()])


def test_embedding_out_of_range_ids_give_nan_rows():
    table = torch.randn(10, 33).to(DEVICE)
    out = embedding_fwd(torch.tensor([3, 10, -1, 9], device=DEVICE), table).cpu()
    assert torch.equal(out[[0, 3]], table.cpu()[[3, 9]])
    assert torch.isnan(out[[1, 2]]).all()


def test_embedding_rejects_bad_input():
    table = torch.randn(10, 4, device=DEVICE)
    with pytest.raises(ValueError, match="ids must be int32/int64"):
        embedding_fwd(torch.zeros(2, dtype=torch.float32, device=DEVICE), table)
    with pytest.raises(ValueError, match="ids must be"):
        embedding_fwd(torch.zeros(2, 1, dtype=torch.int64, device=DEVICE), table)
    with pytest.raises(ValueError, match="table must be"):
        embedding_fwd(torch.zeros(2, dtype=torch.int64, device=DEVICE), table[0])
