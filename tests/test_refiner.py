"""The refiner (tokenizer/refiner.py) and VQVAE.draw: shapes, seeds, and that it learns."""
import pytest
import torch

from tokenizer.model import VQVAE, VQVAEShape
from tokenizer.refiner import Refiner, flow_loss, refine


@pytest.mark.parametrize("channels, side", [(1, 28), (3, 32), (3, 64)])
def test_refiner_keeps_the_picture_shape(channels, side):
    refiner = Refiner(channels, 8)
    x = torch.randn(2, channels, side, side)
    assert refiner(x, torch.rand(2), x).shape == x.shape
    out = refine(refiner, x.clamp(-1, 1), steps=2, start=0.5, generator=torch.Generator().manual_seed(0))
    assert out.shape == x.shape and out.min() >= -1 and out.max() <= 1


def test_refiner_learns_the_flow_to_the_pictures(mnist_root):
    """150 steps on 64 digits and their blurred copies: the flow loss falls well below where it starts."""
    from common.images import to_float
    from tokenizer.data import load_split
    torch.manual_seed(0)
    images = to_float(load_split(mnist_root, "mnist", train=True, subset=64)[0]) * 2 - 1
    recons = torch.nn.functional.avg_pool2d(images, 4).repeat_interleave(4, -1).repeat_interleave(4, -2)   # blurred
    refiner = Refiner(1, 16)
    opt = torch.optim.Adam(refiner.parameters(), lr=3e-3)
    first = flow_loss(refiner, recons, images).item()
    for _ in range(150):
        loss = flow_loss(refiner, recons, images)
        opt.zero_grad()
        loss.backward()
        opt.step()
    with torch.random.fork_rng():
        torch.manual_seed(1)
        last = sum(flow_loss(refiner, recons, images).item() for _ in range(8)) / 8
    assert last < 0.7 * first, (first, last)


def tokenizer(refiner_width: int) -> VQVAE:
    torch.manual_seed(0)
    model = VQVAE(VQVAEShape(image_size=28, channels=1, codebook_size=16, embedding_dim=4, hidden_channels=8,
                             refiner_width=refiner_width)).eval()
    if model.refiner is not None:   # an untrained refiner's last conv is 0: give it something to draw
        torch.nn.init.normal_(model.refiner.out.weight, std=0.05)
    return model


def test_draw_is_decode_without_a_refiner_or_steps():
    codes = torch.randint(0, 16, (4, 7, 7))
    plain, refined = tokenizer(0), tokenizer(8)
    assert plain.refiner is None
    assert torch.equal(plain.draw(codes), plain.decode(codes))
    assert torch.equal(refined.draw(codes, steps=0), refined.decode(codes))
    with pytest.raises(ValueError, match="must be >= 0"):
        refined.draw(codes, steps=-1)


def test_draw_samples_with_the_generator_it_is_given():
    model, codes = tokenizer(8), torch.randint(0, 16, (4, 7, 7))
    seeded = lambda seed: model.draw(codes, generator=torch.Generator().manual_seed(seed))  # noqa: E731
    first = seeded(0)
    assert first.shape == (4, 1, 28, 28) and 0 <= first.min() and first.max() <= 1
    assert torch.equal(first, seeded(0)), "same seed, same pictures"
    assert not torch.equal(first, seeded(1)), "another seed draws other detail"
    assert not torch.equal(first, model.decode(codes))
