"""Prior invariants (causality, KV cache) and stage two end to end at tiny sizes."""

import numpy as np
import pytest
import torch
from safetensors.torch import load_file

from common.config import ConfigError
from conftest import TINY_PRIOR, run_cli, run_script
from prior.model import GPT, NULL_CLASS, KVCache, PriorShape, sample_logits


def tiny_gpt(**kw):
    torch.manual_seed(0)
    return GPT(PriorShape(**{"num_codes": 32, "grid": 7, "n_layer": 2, "n_head": 2, "n_embd": 32, **kw})).eval()


def test_prior_is_causal():
    model = tiny_gpt()
    codes = torch.randint(32, (2, 49))
    labels = torch.tensor([3, NULL_CLASS])
    base, _ = model(codes, labels)
    for t in (0, 10, 30, 47):
        changed = codes.clone()
        changed[:, t] = (changed[:, t] + 1) % 32
        logits, _ = model(changed, labels)
        # Input token t feeds position t+1 onwards; logits at 0..t must not move.
        torch.testing.assert_close(logits[:, :t + 1], base[:, :t + 1])
        assert not torch.allclose(logits[:, t + 1:], base[:, t + 1:])


def test_dropout_acts_in_training_only_and_keeps_causality():
    model = tiny_gpt(dropout=0.5)
    codes, labels = torch.randint(32, (2, 49)), torch.tensor([3, NULL_CLASS])
    torch.testing.assert_close(model(codes, labels)[0], model(codes, labels)[0])   # eval: deterministic
    model.train()
    assert not torch.allclose(model(codes, labels)[0], model(codes, labels)[0])
    changed = codes.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 32
    torch.manual_seed(1)   # same dropout masks for both passes
    base, _ = model(codes, labels)
    torch.manual_seed(1)
    logits, _ = model(changed, labels)
    torch.testing.assert_close(logits[:, :21], base[:, :21])


SHAPE_SWITCHES = [{"rowcol_pos": True}, {"qk_norm": True}, {"rope": "none"}, {"rope": "1d"}, {"rope": "2d"},
                  {"norm": "rms"}, {"activation": "gelu"}, {"activation": "relu2"}, {"activation": "swiglu"}]


@pytest.mark.parametrize("switch", SHAPE_SWITCHES, ids=lambda s: "-".join(f"{k}={v}" for k, v in s.items()))
def test_shape_switches_keep_the_prior_causal_and_the_cache_exact(switch):
    model = tiny_gpt(**switch)
    codes, labels = torch.randint(32, (2, 49)), torch.tensor([3, NULL_CLASS])
    changed = codes.clone()
    changed[:, 20] = (changed[:, 20] + 1) % 32
    logits, changed_logits = model(codes, labels)[0], model(changed, labels)[0]
    torch.testing.assert_close(changed_logits[:, :21], logits[:, :21])
    assert not torch.allclose(changed_logits[:, 21:], logits[:, 21:])
    assert logits.shape[-1] == 32                  # the mask token is an input only, never predicted
    caches = [KVCache(49) for _ in model.blocks]
    for t in range(5, 49):   # prefill 5 codes, then one at a time, as generation does
        torch.testing.assert_close(model.next_logits(labels, codes[:, :t], caches),
                                   model.next_logits(labels, codes[:, :t], None), atol=1e-5, rtol=1e-4)


def test_2d_rotary_positions_are_grid_offsets():
    from prior.model import rotary_angles
    angles = rotary_angles(PriorShape(num_codes=8, grid=7, n_embd=32, n_head=2, rope="2d"))   # 8 angle pairs per head
    assert torch.equal(angles[1], torch.zeros(8))                # cell (0, 0)
    down = angles[1 + 7:] - angles[1:-7]                         # one row down, same column
    assert torch.allclose(down, down[0].expand_as(down)) and torch.all(down[:, 4:] == 0)
    right = angles[2:8] - angles[1:7]                            # one column right within row 0
    assert torch.allclose(right, right[0].expand_as(right)) and torch.all(right[:, :4] == 0)


def test_muon_orthogonalizes_and_trains_a_model():
    from prior.muon import MuonWithAdamW, orthogonalize
    g = torch.randn(64, 16, generator=torch.Generator().manual_seed(0))
    singular = torch.linalg.svdvals(orthogonalize(g))
    assert singular.min() > 0.5 and singular.max() < 1.3          # Newton-Schulz's band around 1
    model = tiny_gpt().train()
    optimizer = MuonWithAdamW(model.named_parameters(), 3e-3, 0.01, lambda n, p: p.dim() >= 2)
    assert sum(len(g["params"]) for g in optimizer.param_groups if g["muon"]) == 2 * 4   # qkv, proj, 2 MLP
    codes, labels = torch.randint(8, (16, 49)), torch.randint(10, (16,))   # a learnable corner of the vocab
    losses = []
    for _ in range(30):
        _, loss = model(codes, labels, targets=codes)
        loss.backward()
        optimizer.step()
        optimizer.zero_grad()
        losses.append(loss.item())
    assert losses[-1] < 0.8 * losses[0]


def test_guidance_schedules():
    from prior.model import guidance_scale
    assert guidance_scale(0.5, "constant", 0, 49) == guidance_scale(0.5, "constant", 48, 49) == 0.5
    assert guidance_scale(0.5, "linear", 0, 49) == 0 and guidance_scale(0.5, "linear", 48, 49) == 1.0
    assert sum(guidance_scale(0.5, "linear", t, 49) for t in range(49)) / 49 == pytest.approx(0.5)
    model = tiny_gpt()
    labels = torch.tensor([1, 2, 3, 4] * 8)
    ramp = model.generate(labels, cfg=3.0, cfg_schedule="linear", generator=torch.Generator().manual_seed(5))
    plain = model.generate(labels, cfg=0.0, generator=torch.Generator().manual_seed(5))
    assert torch.equal(ramp[:, 0], plain[:, 0])    # no guidance on the first code
    cached = model.generate(labels, cfg=3.0, cfg_schedule="linear", generator=torch.Generator().manual_seed(5),
                            use_cache=False)
    assert torch.equal(ramp, cached) and not torch.equal(ramp, plain)


def test_class_token_changes_predictions():
    model = tiny_gpt()
    codes = torch.randint(32, (1, 49))
    a, _ = model(codes, torch.tensor([1]))
    b, _ = model(codes, torch.tensor([NULL_CLASS]))
    assert not torch.allclose(a, b)


def test_kv_cache_matches_recomputation():
    model = tiny_gpt()
    labels = torch.tensor([0, 5, NULL_CLASS])
    prefix = torch.randint(32, (3, 20))
    caches = [KVCache(49) for _ in model.blocks]
    for t in range(5, 21):  # prefill 5 tokens, then one at a time
        cached = model.next_logits(labels, prefix[:, :t], caches)
        full = model.next_logits(labels, prefix[:, :t], None)
        torch.testing.assert_close(cached, full, atol=1e-5, rtol=1e-4)


@pytest.mark.parametrize("cfg", [0.0, 1.5])
def test_cached_and_uncached_generation_agree(cfg):
    model = tiny_gpt()
    labels = torch.tensor([1, 2, 3, 4])
    a = model.generate(labels, cfg=cfg, generator=torch.Generator().manual_seed(7), use_cache=True)
    b = model.generate(labels, cfg=cfg, generator=torch.Generator().manual_seed(7), use_cache=False)
    assert a.shape == (4, 49) and torch.equal(a, b)


def test_generation_keeps_a_given_prefix():
    model = tiny_gpt()
    prefix = torch.randint(32, (2, 14))
    out = model.generate(torch.tensor([NULL_CLASS] * 2), prefix=prefix, generator=torch.Generator().manual_seed(0))
    assert torch.equal(out[:, :14], prefix) and out.max() < 32


def test_top_k_and_top_p_restrict_the_support():
    logits = torch.tensor([[4.0, 3.0, 2.0, 1.0, 0.0]]).repeat(2000, 1)
    gen = torch.Generator().manual_seed(0)
    assert set(sample_logits(logits, top_k=2, generator=gen).tolist()) == {0, 1}
    # softmax mass: 0.64, 0.24, ... -> top_p=0.8 keeps exactly the first two tokens
    assert set(sample_logits(logits, top_p=0.8, generator=gen).tolist()) == {0, 1}
    assert set(sample_logits(logits, top_p=0.5, generator=gen).tolist()) == {0}


def test_sampled_frequencies_follow_the_softmax():
    logits = torch.tensor([[2.0, 1.0, float("-inf"), 0.0, -1.0]]).repeat(40000, 1)
    drawn = sample_logits(logits, temperature=2.0, generator=torch.Generator().manual_seed(0))
    freq = torch.bincount(drawn, minlength=5).double() / len(drawn)
    expected = (logits[0] / 2.0).double().softmax(-1)
    assert freq[2] == 0 and torch.allclose(freq, expected, atol=0.01), (freq, expected)


def test_activation_key_and_runs_saved_before_it_stay_gelu(tmp_path):
    from prior.config import PriorConfig
    from common.config import config_from_file, load_config
    assert isinstance(tiny_gpt(activation="gelu").blocks[0].mlp[1], torch.nn.GELU)
    assert isinstance(tiny_gpt().blocks[0].mlp[1], torch.nn.ReLU)   # the adopted recipe's
    (tmp_path / "config.yaml").write_text("vocab_size: 32\n")       # a config.yaml saved before the key
    old = config_from_file(PriorConfig, tmp_path / "config.yaml")
    assert (old.activation, old.num_codes, old.grid) == ("gelu", 32, 7)   # num_codes under its old name
    assert load_config(PriorConfig, ["vocab_size=16"]).num_codes == 16
    with pytest.raises(ConfigError, match="vocab_size and num_codes .* are one setting"):
        load_config(PriorConfig, ["vocab_size=16", "num_codes=16"])
    with pytest.raises(ConfigError, match="activation"):
        load_config(PriorConfig, ["activation=tanh"])


def test_prior_trains_below_the_uniform_bound(tiny_prior_run):
    out, metrics = tiny_prior_run
    assert metrics["test_nll_bits_per_image"] < metrics["uniform_bits_per_image"]
    assert (out / "samples.png").is_file() and (out / "loss.png").is_file()
    assert list((out / "codes").glob("codes-*.safetensors")), "code grids are cached"


def test_prior_refuses_mismatched_vocab_and_missing_tokenizer(tmp_path, tiny_tokenizer_run, mnist_root):
    from prior.train import main
    with pytest.raises(ConfigError, match="num_codes=64 but the tokenizer"):
        main(TINY_PRIOR + [f"out_dir={tmp_path}/p", f"tokenizer={tiny_tokenizer_run}", "num_codes=64"])
    result = run_script(["prior/train.py", f"tokenizer={tmp_path}/nothing", f"out_dir={tmp_path}/p"])
    assert result.returncode == 2 and "no trained tokenizer there" in result.stderr
    assert result.stderr.strip().count("\n") == 0


@pytest.mark.parametrize("augment", [[], ["augment=true"], ["augment=true", "augment_token=true"],
                                     ["optimizer=muon", "weight_average=0.9", "lr_schedule=wsd", "z_loss=1e-4"]])
@pytest.mark.slow
def test_prior_resume_is_bit_identical(tmp_path, tiny_tokenizer_run, mnist_root, augment):
    from prior.train import main
    common = TINY_PRIOR + [f"tokenizer={tiny_tokenizer_run}", f"data_root={mnist_root}", "eval_every=8", *augment]
    main(common + [f"out_dir={tmp_path}/a"])
    main(common + [f"out_dir={tmp_path}/b", "max_steps=5"])
    main(common + [f"out_dir={tmp_path}/b"])
    a, b = load_file(tmp_path / "a" / "model.safetensors"), load_file(tmp_path / "b" / "model.safetensors")
    assert all(torch.equal(a[k], b[k]) for k in a)


def test_generate_api_seeds_digits_and_chunks(tiny_prior_run):
    from sampling import generate
    out_dir, _ = tiny_prior_run
    a = generate(n=10, label=[0, 1], seed=3, prior=out_dir, batch_size=4)
    b = generate(n=10, label=[0, 1], seed=3, prior=out_dir, batch_size=4)
    assert a["images"].shape == (10, 1, 28, 28) and a["tokens"].shape == (10, 7, 7)
    assert torch.equal(a["tokens"], b["tokens"]) and a["labels"].tolist() == [0, 1] * 5
    c = generate(n=10, label=[0, 1], seed=4, prior=out_dir, batch_size=4)
    assert not torch.equal(a["tokens"], c["tokens"])
    guided = generate(n=4, label=7, cfg=2.0, top_k=5, top_p=0.9, temperature=0.8, prior=out_dir)
    assert guided["tokens"].max() < 32
    # Unconditional: each sample draws its own digit (seeded), or uses the no-label token.
    free = generate(n=40, seed=1, prior=out_dir)
    assert 0 <= free["labels"].min() and free["labels"].max() <= 9 and len(set(free["labels"].tolist())) >= 5
    assert torch.equal(free["labels"], generate(n=40, seed=1, prior=out_dir)["labels"])
    assert generate(n=4, digit="null", prior=out_dir)["labels"] is None   # digit=: label='s other name
    with pytest.raises(TypeError, match="not both"):
        generate(n=4, label=1, digit=2, prior=out_dir)


@pytest.mark.slow
def test_generate_cli_writes_files_and_refuses_foreign_out(tiny_prior_run, tmp_path):
    out_dir, _ = tiny_prior_run
    result = run_cli(["sampling/generate.py", "--n", "12", "--prior", str(out_dir), "--out", str(tmp_path / "s"),
                      "--digit", "3"])
    assert result.returncode == 0, result.stderr
    with np.load(tmp_path / "s" / "samples.npz") as data:
        assert data["images"].shape == (12, 28, 28) and data["images"].dtype == np.uint8
        assert data["tokens"].dtype == np.int16 and data["labels"].tolist() == [3] * 12
    assert (tmp_path / "s" / "grid.png").is_file()
    # Completion keeps the first rows of real codes.
    result = run_cli(["sampling/generate.py", "--n", "4", "--prior", str(out_dir), "--out", str(tmp_path / "c"),
                      "--complete", str(tmp_path / "s" / "samples.npz"), "--keep-rows", "2"])
    assert result.returncode == 0, result.stderr
    (tmp_path / "mine").mkdir()
    (tmp_path / "mine" / "thesis.txt").write_text("precious")
    result = run_cli(["sampling/generate.py", "--n", "2", "--prior", str(out_dir), "--out", str(tmp_path / "mine")])
    assert result.returncode == 2 and "did not write" in result.stderr
    assert (tmp_path / "mine" / "thesis.txt").read_text() == "precious"


def test_likeliest_per_group_keeps_each_groups_best_in_drawn_order():
    from sampling import likeliest_per_group, oversample
    conditions = torch.tensor([[3], [1], [3], [3], [1]])       # rows 0, 2, 3 want a 3; rows 1, 4 a 1
    group_of_row, candidates = oversample(conditions, 0.5)
    assert candidates.tolist() == [1, 1, 1, 1, 0, 0, 0, 0, 0, 0]   # 2 / 0.5 draws for 1s, 3 / 0.5 for 3s
    assert len(oversample(torch.zeros(8, 1, dtype=torch.long), 0.8)[1]) == 10, "8 / 0.8 draws 10, not 11"
    scores = torch.tensor([-5., -1., -3., -2., -9., -4., -8., -6., -7., -0.5])
    chosen = likeliest_per_group(group_of_row, candidates, scores)
    assert chosen.tolist() == [5, 1, 7, 9, 3]   # 3s: the best three (9, 5, 7) in drawn order; 1s: 1 and 3
    assert torch.equal(conditions[candidates[chosen]], conditions), "every row keeps its condition"


def test_generate_keep_likeliest_filters_within_each_digit(tiny_prior_run):
    from sampling import generate, load_models
    out_dir, _ = tiny_prior_run
    models = load_models(out_dir)
    plain = generate(n=60, seed=2, models=models)
    kept = generate(n=60, seed=2, models=models, keep_likeliest=0.5)
    assert torch.equal(kept["labels"], plain["labels"]), "each digit keeps its share and its places"
    assert torch.equal(kept["tokens"], generate(n=60, seed=2, models=models, keep_likeliest=0.5)["tokens"])
    score = lambda out: models.gpt.log_likelihood(out["tokens"].flatten(1), out["labels"])
    assert score(kept).mean() > score(plain).mean() + 1.0, "the kept half is the likelier half"
    completed = generate(n=6, seed=0, models=models, keep=plain["tokens"][:6, :2], keep_likeliest=0.5, digit="null")
    assert torch.equal(completed["tokens"][:, :2], plain["tokens"][:6, :2])
    assert torch.equal(generate(n=60, seed=2, models=models, keep_likeliest=1.0)["tokens"], plain["tokens"])


@pytest.mark.parametrize("flags, message", [
    (["--keep-likeliest", "0"], "keep_likeliest=0.0: must be in (0, 1]"),
    (["--keep-likeliest", "1.5"], "keep_likeliest=1.5"), (["--keep-likeliest", "nan"], "keep_likeliest=nan"),
    (["--n", "0"], "n=0"), (["--temperature", "0"], "temperature=0"), (["--digit", "-1"], "class numbers start at 0"),
    (["--top-p", "1.5"], "top_p=1.5"), (["--prior", "/no/such/run"], "no trained prior"),
    (["--cfg-schedule", "cubic"], "invalid choice: 'cubic'"), (["--refine", "-1"], "refine=-1: the refiner's steps"),
])
def test_generate_cli_bad_flags_are_one_line(flags, message, tmp_path):
    result = run_script(["sampling/generate.py", *flags, "--out", str(tmp_path / "o")])
    assert result.returncode == 2 and message in result.stderr
    assert "Traceback" not in result.stderr


def test_augmented_grids_are_fresh_each_epoch_and_repeatable(tiny_tokenizer_run, mnist_root):
    from prior.data import augmented_codes, distort, encode_all
    from tokenizer import load_tokenizer
    from tokenizer.data import load_split
    tokenizer = load_tokenizer(tiny_tokenizer_run)
    images = load_split(mnist_root, "mnist", train=True, subset=300)[0]
    plain = encode_all(tokenizer, images)
    (epoch0, which0), (epoch1, _) = (augmented_codes(tokenizer, images, plain, 0, e, share=0.5)
                                     for e in (0, 1))
    assert epoch0.shape == plain.shape == (300, 49) and epoch0.dtype == torch.int16
    assert not torch.equal(epoch0, epoch1)                                     # fresh grids each epoch
    assert torch.equal(epoch0, augmented_codes(tokenizer, images, plain, 0, 0, share=0.5)[0])  # resumable
    unchanged = torch.ones(300, dtype=torch.bool)
    unchanged[which0] = False
    assert torch.equal(epoch0[unchanged], plain[unchanged])                    # only the distorted re-encoded
    changed = (epoch0 != plain).any(1).float().mean()
    assert 0.3 < changed < 0.7, changed                                        # about half distorted
    untouched, which = distort(images, torch.Generator().manual_seed(0), share=0.0)
    assert torch.equal(untouched, images) and len(which) == 0


def test_colour_pictures_are_distorted_and_mirrored_only_when_asked():
    """Colour keeps its channels; augment_flip mirrors about half of the distorted pictures
    (their bright left half lands on the right), and without it none; augment_strength scales
    the warps."""
    from prior.config import PriorConfig
    from prior.data import distort
    pictures = torch.zeros(400, 3, 16, 16, dtype=torch.uint8)
    pictures[:, 0, :, :8] = 255                       # red on the left
    pictures[:, 2, :, 8:] = 100                       # some blue on the right

    def mirrored(out):
        return (out[:, 0, :, 8:].float().mean((1, 2)) > out[:, 0, :, :8].float().mean((1, 2)))

    plain, which = distort(pictures, torch.Generator().manual_seed(0), share=1.0)
    assert plain.shape == pictures.shape and len(which) == 400 and not mirrored(plain).any()
    assert (plain[:, 2].float().mean() - pictures[:, 2].float().mean()).abs() < 5   # channels kept apart
    flipped, _ = distort(pictures, torch.Generator().manual_seed(0), share=1.0, flip=True)
    assert 0.4 < mirrored(flipped).float().mean() < 0.6
    with pytest.raises(ConfigError, match="augment_flip"):
        PriorConfig(augment=False, augment_flip=True).validate()
    moved = [(distort(pictures, torch.Generator().manual_seed(0), share=1.0, strength=s)[0].float() - pictures).abs().mean()
             for s in (1.0, 2.5)]
    assert moved[1] > 1.5 * moved[0], moved                 # augment_strength: larger warps, the same draws
    assert torch.equal(distort(pictures, torch.Generator().manual_seed(0), share=1.0, strength=1.0)[0], plain)
    with pytest.raises(ConfigError, match="augment_strength"):
        PriorConfig(augment_strength=0.0).validate()


def test_augment_token_marks_the_distorted_digits_and_keeps_them_marked(tiny_tokenizer_run, mnist_root, tmp_path):
    from prior.config import PriorConfig
    from prior.data import augmented_codes, load_code_grids
    from prior.model import DISTORTED
    from prior.train import make_task
    from tokenizer import load_tokenizer
    from tokenizer.data import load_split
    tokenizer = load_tokenizer(tiny_tokenizer_run)
    images, labels = load_split(mnist_root, "mnist", train=True, subset=512)
    cfg = PriorConfig(num_codes=32, grid=7, n_layer=1, n_head=2, n_embd=16, train_subset=512, augment=True,
                      augment_token=True, label_dropout=0.5)
    from tokenizer.data import load_dataset
    grids = load_code_grids(tokenizer, load_dataset("mnist", mnist_root, train_subset=512), "mnist", tmp_path, 512)
    task = make_task(cfg, tokenizer, grids, images)
    codes, marked = task.pass_tensors(3)
    _, which = augmented_codes(tokenizer, images, grids["train_codes"], cfg.seed, 3, cfg.distorted_share())
    assert torch.equal((marked >= DISTORTED).nonzero().squeeze(1), which)      # exactly the distorted ones
    assert torch.equal(marked % DISTORTED, labels)                             # with their own digit
    assert task.model.cond_emb.num_embeddings == 2 * DISTORTED
    # Label dropout turns a distorted digit into the distorted no-label token, never the clean one.
    seen = []
    task.model.forward = lambda c, y, targets=None: (seen.append(y), (torch.zeros(len(c), 49, 32), None))[1]
    task.loss_fn(task.model, (codes[:256], marked[:256]))
    dropped = seen[0] != marked[:256]
    assert dropped.any() and torch.equal(seen[0][dropped] >= DISTORTED, marked[:256][dropped] >= DISTORTED)
    with pytest.raises(ConfigError, match="augment_token"):
        PriorConfig(augment=False, augment_token=True).validate()


def test_code_grid_cache_follows_the_weights_not_the_file(tmp_path, tiny_tokenizer_run, mnist_root, monkeypatch):
    import prior.data
    from tokenizer import load_tokenizer
    from tokenizer.data import load_dataset
    tokenizer = load_tokenizer(tiny_tokenizer_run, "cpu")
    mnist = load_dataset("mnist", mnist_root, train_subset=64)
    calls = []
    real_encode = prior.data.encode_all
    monkeypatch.setattr(prior.data, "encode_all", lambda *a, **k: calls.append(1) or real_encode(*a, **k))
    first = prior.data.load_code_grids(tokenizer, mnist, "mnist", tmp_path, train_subset=64)
    assert len(calls) == 2                        # train + test encoded once
    again = prior.data.load_code_grids(load_tokenizer(tiny_tokenizer_run, "cpu"), mnist, "mnist",
                                       tmp_path, train_subset=64)
    assert len(calls) == 2 and all(torch.equal(first[k], again[k]) for k in first)   # same weights: cached
    (cache,) = tmp_path.glob("codes-*.safetensors")
    data = bytearray(cache.read_bytes())
    data[-1] ^= 1                                 # one flipped bit in the cached codes
    cache.write_bytes(bytes(data))
    prior.data.load_code_grids(tokenizer, mnist, "mnist", tmp_path, train_subset=64)
    assert len(calls) == 4                        # refused by its checksum, recomputed
    with torch.no_grad():
        next(tokenizer.parameters()).add_(0.01)   # a retrained tokenizer
    prior.data.load_code_grids(tokenizer, mnist, "mnist", tmp_path, train_subset=64)
    assert len(calls) == 6 and len(list(tmp_path.glob("codes-*.safetensors"))) == 1


def test_dropout_is_chosen_by_the_set_unless_given():
    from prior.train import dropout_for
    assert dropout_for("/my/icons", -1, 740) == 0.3 and dropout_for("/my/emoji", -1, 3_400) == 0.25
    assert dropout_for("/my/photos", -1, 50_000) == 0.0
    assert dropout_for("mnist", -1, 512) == 0.0 and dropout_for("/my/icons", 0.0, 740) == 0.0
    from prior.config import PriorConfig
    assert PriorConfig().shape().dropout == 0.0   # unresolved: a model built without a data set has none


def test_augmentation_is_chosen_by_the_set_unless_given():
    from prior.config import PriorConfig
    from prior.train import augment_for
    small, large = 3_400, 50_000
    assert augment_for("/my/emoji", PriorConfig(), small) and not augment_for("/my/photos", PriorConfig(), large)
    assert not augment_for("mnist", PriorConfig(), 512) and not augment_for("/my/emoji", PriorConfig(augment=False), small)
    assert augment_for("mnist", PriorConfig(augment=True), 512)
    assert augment_for("/my/photos", PriorConfig(augment_flip=True), large)   # asking for flips asks for augmentation
    from prior.train import augment_share_for
    assert augment_share_for("/my/icons", -1, 740) == 0.8 and augment_share_for("/my/emoji", -1, small) == 0.5
    assert augment_share_for("mnist", -1, 512) == 0.5 and augment_share_for("/my/icons", 0.25, 740) == 0.25
    assert PriorConfig().distorted_share() == 0.5 and PriorConfig(augment_share=0.0).distorted_share() == 0.0


def test_a_small_set_is_passed_over_ten_times_an_epoch_by_the_prior_and_a_tiny_one_for_30k_grids():
    from prior.train import prior_epoch_samples
    assert prior_epoch_samples("/some/emoji", 0, 3_400) == 34_000      # ten passes, not 18
    assert prior_epoch_samples("/some/icons", 0, 738) == 30_000        # not ten passes: 57 steps
    assert prior_epoch_samples("/some/photos", 0, 50_000) == 60_000    # MNIST's epoch
    assert prior_epoch_samples("mnist", 0, 512) == 0 and prior_epoch_samples("/x", 512, 738) == 512
