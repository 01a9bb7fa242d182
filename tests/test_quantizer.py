"""Invariants of the VQ-VAE: shapes, per-position lookup, gradient routing, codebook health."""
import pytest
import torch
from einops import rearrange

from tokenizer.model import VQVAE, VQVAEShape, VectorQuantizer, kmeans


def small_shape(**kw):
    base = dict(codebook_size=16, embedding_dim=4, hidden_channels=8, kmeans_init=False, ema=False, image_size=28, channels=1)
    return VQVAEShape(**{**base, **kw})


def test_shapes_and_index_range():
    torch.manual_seed(0)
    model = VQVAE(small_shape())
    out = model(torch.rand(3, 1, 28, 28) * 2 - 1)
    assert out.reconstruction.shape == (3, 1, 28, 28)
    assert out.indices.shape == (3, 7, 7) and out.indices.dtype == torch.long
    assert 0 <= out.indices.min() and out.indices.max() < 16
    assert out.reconstruction.abs().max() <= 1


def test_nearest_code_is_found_without_tf32_whoever_turned_it_on():
    """accelerate turns TF32 on for CUDA matmuls under --dynamo_backend; the distances that
    choose a code must stay exact fp32, so training and encode() choose the same codes."""
    class Spy(torch.overrides.TorchFunctionMode):
        seen = []

        def __torch_function__(self, func, types, args=(), kwargs=None):
            if func is torch.addmm:
                self.seen.append(torch.backends.cuda.matmul.allow_tf32)
            return func(*args, **(kwargs or {}))

    vq = VectorQuantizer(small_shape()).eval()
    torch.backends.cuda.matmul.allow_tf32 = True
    try:
        with Spy():
            vq.nearest(torch.randn(10, 4))
        assert torch.backends.cuda.matmul.allow_tf32   # the caller's setting is given back
    finally:
        torch.backends.cuda.matmul.allow_tf32 = False
    assert Spy.seen == [False]


def test_quantized_equals_lookup_of_its_indices():
    torch.manual_seed(0)
    vq = VectorQuantizer(small_shape()).eval()
    q = vq(torch.randn(2, 4, 7, 7))
    looked_up = rearrange(vq.codebook[q.indices], "b h w d -> b d h w")
    torch.testing.assert_close(q.quantized, looked_up)


def test_quantizes_each_position_not_mixed_channels():
    """Each position's D-vector goes to its own nearest code (the .view(-1, D) bug fails this)."""
    torch.manual_seed(0)
    vq = VectorQuantizer(small_shape()).eval()
    z = torch.randn(2, 4, 7, 7)
    got = vq(z).indices
    for b in range(2):
        for i in range(7):
            for j in range(7):
                dist = (vq.codebook - z[b, :, i, j]).pow(2).sum(1)
                assert got[b, i, j] == dist.argmin()


def test_straight_through_gradient_reaches_encoder():
    torch.manual_seed(0)
    model = VQVAE(small_shape())
    out = model(torch.rand(2, 1, 28, 28) * 2 - 1)
    out.recon_loss.backward()
    assert all(p.grad is not None and p.grad.abs().sum() > 0 for p in model.encoder.parameters())
    assert model.quantizer.codebook.grad is None or model.quantizer.codebook.grad.abs().sum() == 0


def _grads(loss_name):
    torch.manual_seed(0)
    model = VQVAE(small_shape())
    out = model(torch.rand(2, 1, 28, 28) * 2 - 1)
    getattr(out, loss_name).backward()
    enc = sum(p.grad.abs().sum() for p in model.encoder.parameters() if p.grad is not None)
    cb = model.quantizer.codebook.grad
    return float(enc), float(cb.abs().sum()) if cb is not None else 0.0


def test_codebook_loss_moves_only_the_codebook():
    enc, cb = _grads("codebook_loss")
    assert cb > 0 and enc == 0


def test_commitment_loss_moves_only_the_encoder():
    enc, cb = _grads("commitment_loss")
    assert enc > 0 and cb == 0


def test_dead_code_restart_revives_unused_codes():
    torch.manual_seed(0)
    vq = VectorQuantizer(small_shape(dead_code_steps=2)).train()
    with torch.no_grad():
        vq.codebook[8:] = 100.0          # far away: never the nearest code
    z = torch.randn(4, 4, 7, 7)
    for _ in range(3):
        vq(z)
    assert (vq.codebook[8:] < 50).all(), "dead codes should be re-seeded near encoder outputs"
    used = vq.eval()(z).indices.unique()
    assert (used >= 8).any(), "revived codes should now be chosen"


def test_kmeans_init_on_first_training_batch():
    torch.manual_seed(0)
    vq = VectorQuantizer(small_shape(kmeans_init=True)).train()
    before = vq.codebook.detach().clone()
    z = torch.randn(8, 4, 7, 7) * 3
    vq(z)
    assert bool(vq.initialized) and not torch.equal(before, vq.codebook)
    # Codes now sit among the data, so nearly all of them get used.
    assert vq.eval()(z).indices.unique().numel() >= 14


def test_ema_codebook_converges_to_means_of_its_members_without_gradients():
    torch.manual_seed(0)
    vq = VectorQuantizer(small_shape(ema=True, ema_decay=0.5, dead_code_steps=0)).train()
    assert not isinstance(vq.codebook, torch.nn.Parameter)
    z = torch.randn(4, 4, 7, 7)
    q = vq(z)
    assert q.codebook_loss == 0 and q.loss > 0
    for _ in range(60):   # fixed data: EMA updates are Lloyd steps, so they reach a fixed point
        vq(z)
    indices = vq.eval()(z).indices.flatten()
    flat = rearrange(z, "b d h w -> (b h w) d")
    for code in indices.unique():
        torch.testing.assert_close(vq.codebook[code], flat[indices == code].mean(0), atol=1e-3, rtol=1e-3)


def test_kmeans_finds_separated_clusters():
    gen = torch.Generator().manual_seed(0)
    centers = torch.tensor([[0.0, 0.0], [10.0, 10.0], [-10.0, 10.0]])
    x = torch.cat([c + 0.1 * torch.randn(50, 2, generator=gen) for c in centers])
    found = kmeans(x, 3, iters=10, generator=gen)
    assert torch.cdist(centers, found).min(1).values.max() < 0.5


def test_encode_decode_reject_bad_input():
    model = VQVAE(small_shape()).eval()
    with pytest.raises(ValueError, match=r"\[B,1,28,28\]"):
        model.encode(torch.rand(2, 28, 28))
    with pytest.raises(ValueError, match="in \\[0,1\\]"):
        model.encode(torch.rand(2, 1, 28, 28) * 255)
    with pytest.raises(ValueError, match="outside this tokenizer's codebook"):
        model.decode(torch.full((1, 7, 7), 16))
    with pytest.raises(ValueError, match="integer tensor"):
        model.decode(torch.zeros(1, 7, 7))


def test_distances_stay_fp32_under_bf16_autocast():
    # Near-tied codes far from the origin: bf16 distances (3 significant digits)
    # would pick wrong codes; the quantizer must pick what fp32 picks.
    torch.manual_seed(0)
    vq = VectorQuantizer(small_shape(codebook_size=64, embedding_dim=8, kmeans_init=False)).eval()
    center = torch.full((8,), 8.0)
    vq.codebook.data.copy_(center + 0.05 * torch.randn(64, 8))
    z = (center + 0.05 * torch.randn(4, 7, 7, 8)).permute(0, 3, 1, 2).contiguous()
    flat = rearrange(z, "b d h w -> (b h w) d")
    exact = vq.nearest(flat)  # fp32, no autocast
    assert (exact == torch.cdist(flat.double(), vq.codebook.double()).argmin(1)).float().mean() > 0.97
    naive_bf16 = (flat.bfloat16() @ vq.codebook.bfloat16().t() * -2 + vq.codebook.bfloat16().pow(2).sum(1)).argmin(1)
    assert (naive_bf16 != exact).float().mean() > 0.3, "the data must be hard enough for bf16 to fail"
    with torch.autocast("cpu", dtype=torch.bfloat16):
        out = vq(z)
    assert torch.equal(out.indices.flatten(), exact)


@pytest.mark.parametrize("upsample, grid_free", [("resize", True), ("transposed", False)])
def test_resize_decoder_paints_no_grid_where_transposed_convs_do(upsample, grid_free):
    """One code everywhere: a resize decoder's picture is flat inside (each output pixel sees
    the same taps), an untrained transposed-conv decoder's alternates with a period of 2."""
    torch.manual_seed(0)
    model = VQVAE(VQVAEShape(image_size=32, channels=1, upsample=upsample))
    with torch.no_grad():
        out = model.decoder(torch.randn(1, model.shape.code_dim, 1, 1).expand(1, -1, 8, 8).contiguous())
    inside = out[0, 0, 8:24, 8:24]
    spread = (inside.max() - inside.min()).item()
    assert (spread < 1e-5) == grid_free, spread
