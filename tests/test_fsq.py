"""Finite scalar quantization: a fixed lattice, a bijection index <-> code, gradients by straight-through."""
import math

import pytest
import torch

from tokenizer.model import VQVAE, FiniteScalarQuantizer, VQVAEShape

LEVELS = [8, 5, 3]   # an even and two odd level counts: 120 codes


def test_codes_lie_on_the_lattice_and_indices_in_range():
    fsq = FiniteScalarQuantizer(LEVELS)
    q = fsq(torch.randn(4, 3, 7, 7) * 3)
    assert q.indices.shape == (4, 7, 7) and 0 <= q.indices.min() and q.indices.max() < math.prod(LEVELS)
    for channel, levels in enumerate(LEVELS):
        steps = q.quantized[:, channel] * (levels // 2)           # back to integer steps
        torch.testing.assert_close(steps, steps.round())
        assert steps.min() >= -(levels // 2) and steps.max() <= (levels - 1) // 2
    assert q.loss == 0   # no codebook, no commitment term


def test_index_code_round_trip_is_a_bijection():
    fsq = FiniteScalarQuantizer(LEVELS)
    every = torch.arange(math.prod(LEVELS))
    codes = fsq.codes(every)                                       # (120, 3)
    assert len(torch.unique(codes, dim=0)) == len(every)          # distinct codes
    # A latent that quantizes to a code gets that code's index back, and the same vector.
    half = (torch.tensor(LEVELS) // 2).float()
    steps = codes * half
    levels = torch.tensor(LEVELS).float()
    latent = torch.atanh((steps + (levels % 2 == 0) * 0.5) / ((levels - 1) * (1 + 1e-3) / 2)) \
        - torch.atanh(((levels % 2 == 0) * 0.5) / ((levels - 1) * (1 + 1e-3) / 2))
    assert torch.equal(fsq.indices(latent), every)
    q = fsq(latent.T.reshape(1, 3, 120, 1))
    torch.testing.assert_close(q.quantized.reshape(3, 120).T, codes)


def test_gradients_reach_the_encoder_through_the_rounding():
    torch.manual_seed(0)
    model = VQVAE(VQVAEShape(quantizer="fsq", fsq_levels=LEVELS, hidden_channels=8, image_size=28, channels=1))
    out = model(torch.rand(2, 1, 28, 28) * 2 - 1)
    out.loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert model.num_codes == 120 and model.encoder.net[-1].out_channels == 3


@pytest.mark.parametrize("scale", [1e4, -1e4, 0.0])
def test_no_nan_at_the_bounds(scale):
    fsq = FiniteScalarQuantizer(LEVELS)
    z = torch.full((1, 3, 7, 7), scale, requires_grad=True)
    q = fsq(z)
    q.quantized.sum().backward()
    assert torch.isfinite(q.quantized).all() and torch.isfinite(z.grad).all()
    assert 0 <= q.indices.min() and q.indices.max() < 120
    assert q.quantized.abs().max() <= 1


def test_fsq_tokenizer_encodes_and_decodes_through_the_api():
    torch.manual_seed(0)
    model = VQVAE(VQVAEShape(quantizer="fsq", fsq_levels=LEVELS, hidden_channels=8, image_size=28, channels=1)).eval()
    x = torch.rand(3, 1, 28, 28)
    idx = model.encode(x)
    assert idx.shape == (3, 7, 7) and idx.max() < 120
    assert model.decode(idx).shape == (3, 1, 28, 28)
    assert model.state_dict().keys() == {k for k in model.state_dict() if not k.startswith("quantizer.")}
