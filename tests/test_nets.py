"""Networks: shapes, size checks, attention variants, and that they can learn (overfit checks)."""

from __future__ import annotations

import numpy as np
import pytest
import torch

from emcopilot import io
from emcopilot.nets import (CBAM, ECA, CbamUnetPP, PatchDiscriminator, SqueezeExcitation,
                            UNetGenerator, UNetPlusPlus, build_generator, build_segmentor)
from emcopilot.training.losses import focal_loss, segmentation_loss, soft_jaccard_loss, ssim_loss
from emcopilot.training.profiles import resolve_profile

torch.set_num_threads(2)


@pytest.fixture(scope="module")
def real_crop(examples_dir):
    """A 64 px crop of a real EMPS micrograph and its binary mask, as (1, 1, 64, 64) tensors."""
    stem = "31121ca5cf"
    img = io.normalize(io.read_micrograph(examples_dir / "emps" / "images" / f"{stem}.png").image)
    msk = io.read_label_map(examples_dir / "emps" / "segmaps" / f"{stem}.png") > 0
    # the crop with the most balanced foreground among a few candidates
    best = min(((y, x) for y in range(0, 448, 64) for x in range(0, 448, 64)),
               key=lambda yx: abs(msk[yx[0]:yx[0] + 64, yx[1]:yx[1] + 64].mean() - 0.4))
    y, x = best
    i = torch.from_numpy(np.ascontiguousarray(img[y:y + 64, x:x + 64]))[None, None]
    m = torch.from_numpy(msk[y:y + 64, x:x + 64].astype(np.float32))[None, None]
    assert 0.05 < float(m.mean()) < 0.95
    return i, m


@pytest.mark.parametrize("attention", ["cbam", "se", "eca", "none"])
def test_unetpp_shapes_all_attentions(attention):
    torch.manual_seed(0)
    net = UNetPlusPlus(base=4, depth=3, attention=attention, classes=2)
    net.eval()
    with torch.no_grad():
        y = net(torch.rand(2, 1, 48, 40))
    assert y.shape == (2, 2, 48, 40)
    assert torch.isfinite(y).all()


def test_attention_variants_differ_in_parameters():
    counts = {a: sum(p.numel() for p in UNetPlusPlus(base=8, depth=2, attention=a).parameters())
              for a in ("cbam", "se", "eca", "none")}
    assert counts["none"] < counts["eca"] < counts["se"] < counts["cbam"]


@pytest.mark.parametrize("module", [CBAM(16, reduction=4), SqueezeExcitation(16, 4), ECA(16)])
def test_attention_modules_keep_shape_and_reweight(module):
    x = torch.randn(2, 16, 9, 7)
    y = module(x)
    assert y.shape == x.shape
    assert not torch.allclose(x, y)
    # a sigmoid gate never flips signs
    assert torch.all((x * y) >= -1e-6)


def test_deep_supervision_returns_heads_in_training_and_mean_in_eval():
    torch.manual_seed(0)
    net = UNetPlusPlus(base=4, depth=3, deep_supervision=True)
    x = torch.rand(1, 1, 32, 32)
    net.train()
    outs = net(x)
    assert isinstance(outs, list) and len(outs) == 3
    assert all(o.shape == (1, 1, 32, 32) for o in outs)
    net.eval()
    with torch.no_grad():
        y = net(x)
    assert y.shape == (1, 1, 32, 32)
    loss = segmentation_loss(outs, (x > 0.5).float())
    assert loss.ndim == 0 and loss > 0


def test_size_must_be_a_multiple_of_two_to_the_depth():
    with pytest.raises(ValueError, match="multiples of 16"):
        UNetPlusPlus(base=4, depth=4)(torch.rand(1, 1, 40, 48))
    with pytest.raises(ValueError, match="multiples of 256"):
        UNetGenerator(base=2, depth=8)(torch.rand(1, 1, 300, 256))


@pytest.mark.parametrize("size", [256, 512])
def test_generator_256_and_512(size):
    torch.manual_seed(0)
    g = UNetGenerator(base=4, depth=8).eval()
    with torch.no_grad():
        y = g(torch.rand(1, 1, size, size) * 2 - 1)
    assert y.shape == (1, 1, size, size)
    assert float(y.min()) >= -1 and float(y.max()) <= 1
    d = PatchDiscriminator(base=4)
    logits = d(torch.cat([y, y], 1))
    # 70x70 PatchGAN: three stride-2 and two stride-1 4x4 convs
    assert logits.shape == (1, 1, size // 8 - 2, size // 8 - 2)


def test_builders_and_alias_follow_the_profiles():
    seg = build_segmentor(resolve_profile("paper", "segmentor"))
    assert isinstance(seg, UNetPlusPlus)
    assert seg.arch_kwargs["base"] == 32 and seg.arch_kwargs["depth"] == 4
    assert seg.arch_kwargs["attention"] == "cbam"
    small = build_segmentor(resolve_profile("cpu", "segmentor"))
    n_small = sum(p.numel() for p in small.parameters())
    assert n_small < sum(p.numel() for p in seg.parameters()) / 4
    gen = build_generator({"generator_base": 8, "generator_depth": 6})
    assert gen.arch_kwargs["base"] == 8 and gen.depth == 6
    alias = CbamUnetPP(base=4, depth=2)
    assert alias.arch_kwargs["attention"] == "cbam"
    with pytest.raises(ValueError, match="unknown attention"):
        UNetPlusPlus(attention="transformer")


def test_losses_behave():
    t = torch.tensor([[0.0, 1.0, 1.0, 0.0]])
    good = torch.tensor([[-8.0, 8.0, 8.0, -8.0]])
    bad = -good
    assert focal_loss(good, t) < 1e-4 < focal_loss(bad, t)
    assert soft_jaccard_loss(good, t) < 0.01 and soft_jaccard_loss(bad, t) > 0.5
    a = torch.rand(1, 1, 32, 32)
    assert float(ssim_loss(a, a)) == pytest.approx(0.0, abs=1e-5)
    assert float(ssim_loss(a, torch.rand(1, 1, 32, 32))) > 0.5


def test_segmentor_overfits_a_real_crop(real_crop):
    img, msk = real_crop
    torch.manual_seed(0)
    net = UNetPlusPlus(base=4, depth=3, attention="cbam")
    opt = torch.optim.Adam(net.parameters(), lr=1e-2)
    losses = []
    for _ in range(40):
        loss = segmentation_loss(net(img), msk)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.6 * losses[0], losses
    net.eval()
    with torch.no_grad():
        pred = net(img) > 0
    iou = float((pred & (msk > 0)).sum() / (pred | (msk > 0)).sum())
    assert iou > 0.5


def test_generator_loss_falls_on_a_fixed_pair(real_crop):
    img, msk = real_crop
    torch.manual_seed(0)
    g = UNetGenerator(base=8, depth=6, dropout=0.0)
    opt = torch.optim.Adam(g.parameters(), lr=2e-3, betas=(0.5, 0.999))
    real = img * 2 - 1
    losses = []
    for _ in range(25):
        fake = g(msk * 2 - 1)
        loss = torch.nn.functional.l1_loss(fake, real) + ssim_loss((fake + 1) / 2, img)
        opt.zero_grad()
        loss.backward()
        opt.step()
        losses.append(float(loss.detach()))
    assert losses[-1] < 0.7 * losses[0]
