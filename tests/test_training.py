"""Training loops, checkpoints (no pickle), resume and cancel, on real EMPS pairs with tiny nets."""

from __future__ import annotations

import json
from pathlib import Path

import numpy as np
import pytest
import torch
from safetensors import safe_open

from emcopilot import io
from emcopilot.errors import InputError
from emcopilot.nets import UNetGenerator, UNetPlusPlus
from emcopilot.training import (generate_images, load_model, resolve_profile, save_checkpoint,
                                train_generator, train_segmentor)
from emcopilot.training.checkpoint import load_training_state
from emcopilot.training.common import read_log
from emcopilot.training.datasets import (PairedDataset, find_pairs, gather_pairs, load_pairs,
                                         split_pairs)

torch.set_num_threads(2)

TINY_SEG = dict(image_size=32, base=4, depth=3, batch_size=4, samples_per_epoch=8, device="cpu")
TINY_GEN = dict(image_size=32, base=4, depth=5, device="cpu")


@pytest.fixture(scope="module")
def emps(examples_dir):
    d = examples_dir / "emps"
    return d / "images", d / "segmaps"


def _assert_no_pickle(folder: Path) -> None:
    files = sorted(p.name for p in folder.iterdir())
    assert "config.json" in files and "model.safetensors" in files
    for name in files:
        assert name.endswith((".json", ".safetensors")), name
        data = (folder / name).read_bytes()
        assert not data.startswith(b"\x80"), f"{name} looks like a pickle"
        assert not data.startswith(b"PK"), f"{name} looks like a torch zip archive"
        if name.endswith(".safetensors"):
            with safe_open(str(folder / name), framework="pt") as f:
                assert len(list(f.keys())) > 0
        else:
            json.loads(data)


def test_checkpoint_round_trip_identical_outputs(tmp_path):
    torch.manual_seed(0)
    net = UNetPlusPlus(base=4, depth=2, attention="eca", deep_supervision=True)
    opt = torch.optim.Adam(net.parameters(), lr=1e-3)
    x = torch.rand(2, 1, 16, 16)
    net.train()
    loss = sum(o.mean() for o in net(x))
    loss.backward()
    opt.step()  # BN running stats and Adam moments are now non-trivial
    net.eval()
    with torch.no_grad():
        ref = net(x)
    save_checkpoint(tmp_path / "ck", net, opt, {"image_size": 16, "note": "test"}, epoch=3,
                    metrics={"mIoU": 0.5})
    _assert_no_pickle(tmp_path / "ck")
    model, cfg = load_model(tmp_path / "ck")
    assert isinstance(model, UNetPlusPlus) and not model.training
    assert model.arch_kwargs == net.arch_kwargs
    assert cfg["epoch"] == 3 and cfg["metrics"]["mIoU"] == 0.5
    assert cfg["config"]["note"] == "test" and "torch" in cfg["versions"]
    with torch.no_grad():
        assert torch.equal(model(x), ref)
    # loading by file name works too
    model2, _ = load_model(tmp_path / "ck" / "model.safetensors")
    with torch.no_grad():
        assert torch.equal(model2(x), ref)
    # optimiser state comes back exactly
    net2 = UNetPlusPlus(**net.arch_kwargs)
    opt2 = torch.optim.Adam(net2.parameters(), lr=5.0)
    load_training_state(tmp_path / "ck", {"model": net2}, {"optimizer": opt2})
    s1, s2 = opt.state_dict(), opt2.state_dict()
    assert s2["param_groups"][0]["lr"] == pytest.approx(1e-3)
    for k in s1["state"]:
        for key in ("exp_avg", "exp_avg_sq", "step"):
            assert torch.equal(s1["state"][k][key], s2["state"][k][key])


def test_checkpoint_rejects_garbage(tmp_path):
    with pytest.raises(InputError, match="config.json"):
        load_model(tmp_path)
    (tmp_path / "config.json").write_text(json.dumps({"models": {"m": {
        "architecture": "UNetPlusPlus", "kwargs": {"base": 4, "depth": 2},
        "file": "model.safetensors"}}, "primary": "m"}))
    (tmp_path / "model.safetensors").write_bytes(b"\x80\x04garbage")
    with pytest.raises(InputError, match="unreadable weights"):
        load_model(tmp_path)


def test_profiles():
    cpu, paper = resolve_profile("cpu", "segmentor"), resolve_profile("paper", "segmentor")
    assert paper["base"] == 32 and paper["depth"] == 4 and paper["attention"] == "cbam"
    assert cpu["base"] < paper["base"] and cpu["image_size"] <= paper["image_size"]
    g = resolve_profile("paper", "generator", epochs=3, lr=None)
    assert g["epochs"] == 3 and g["lr"] == 2e-4 and g["lambda_l1"] == 100
    with pytest.raises(InputError):
        resolve_profile("gpu-cluster", "segmentor")
    with pytest.raises(InputError):
        resolve_profile("cpu", "segmentor", bogus=1)


def test_dataset_pairs_split_and_crops(emps):
    items = find_pairs(*emps)
    assert len(items) == 6
    pairs = load_pairs(items)
    tr, va = split_pairs(len(pairs), 0.2, seed=0)
    assert sorted(tr + va) == list(range(6)) and len(va) == 1
    assert split_pairs(6, 0.2, seed=0) == (tr, va)
    ds = PairedDataset(pairs, 64, train=True, seed=1)
    a_img, a_msk = ds[0]
    assert a_img.shape == a_msk.shape == (1, 64, 64)
    assert set(np.unique(a_msk.numpy())) <= {0.0, 1.0}
    assert torch.equal(ds[0][0], a_img)  # deterministic per (seed, epoch, index)
    ds.set_epoch(1)
    assert not torch.equal(ds[0][0], a_img)
    # image and mask are cropped together: the crop's mask equals the source mask somewhere
    img0, msk0 = pairs[0].image, pairs[0].mask
    val = PairedDataset(pairs[:1], 64, train=False)
    vi, vm = val[0]
    y0, x0 = (img0.shape[0] - 64) // 2, (img0.shape[1] - 64) // 2
    assert np.array_equal(vi[0].numpy(), img0[y0:y0 + 64, x0:x0 + 64])
    assert np.array_equal(vm[0].numpy(), msk0[y0:y0 + 64, x0:x0 + 64])


def test_segmentor_trains_resumes_and_logs(emps, tmp_path):
    out = tmp_path / "seg"
    seen = []
    r1 = train_segmentor(*emps, out, epochs=1, progress=lambda d, t, m: seen.append((d, t)),
                         **TINY_SEG)
    assert r1["epoch"] == 1 and not r1["cancelled"] and seen == [(1, 1)]
    assert {"last", "best_miou"} <= set(r1["checkpoints"])
    _assert_no_pickle(out / "last")
    rec = read_log(out)[0]
    for k in ("val_mPA", "val_mIoU", "val_mDice", "val_precision", "val_recall", "loss",
              "val_threshold", "val_dice_at_threshold"):
        assert k in rec and np.isfinite(rec[k])
    assert 0.0 <= rec["val_mIoU"] <= 1.0
    # the calibrated threshold is stored with the weights; inference uses it when asked
    assert 0.1 <= rec["val_threshold"] <= 0.9
    best_dir = out / "best_miou"
    assert load_model(best_dir)[1]["config"]["calibrated_threshold"] == rec["val_threshold"]
    from emcopilot.inference import Segmentor

    loaded = Segmentor.load(best_dir, device="cpu")
    assert loaded.calibrated_threshold == rec["val_threshold"] and loaded.threshold == 0.5
    assert loaded.resolve_threshold("calibrated") == rec["val_threshold"]
    w1 = load_model(out / "last")[0].state_dict()
    r2 = train_segmentor(*emps, out, epochs=2, **TINY_SEG)
    assert r2["epoch"] == 2 and [h["epoch"] for h in r2["history"]] == [2]
    log = read_log(out)
    assert [r["epoch"] for r in log] == [1, 2]
    model, cfg = load_model(out / "last")
    assert cfg["epoch"] == 2 and cfg["config"]["image_size"] == 32
    assert any(not torch.equal(w1[k], v) for k, v in model.state_dict().items())
    # a run folder loads its best checkpoint
    best_cfg = load_model(out)[1]
    assert best_cfg["epoch"] == r2["best"]["epoch"] and best_cfg["config"]["kind"] == "segmentor"
    # asking again for 2 epochs has nothing left to do
    r3 = train_segmentor(*emps, out, epochs=2, **TINY_SEG)
    assert r3["epoch"] == 2 and r3["history"] == [] and len(read_log(out)) == 2
    # an architecture change in the same folder is refused with a clear message
    with pytest.raises(InputError, match="another architecture"):
        train_segmentor(*emps, out, epochs=3, **{**TINY_SEG, "base": 8})


def test_segmentor_cancel_saves_resumable_state(emps, tmp_path):
    out = tmp_path / "seg"
    calls = {"n": 0}

    def stop() -> bool:
        calls["n"] += 1
        return calls["n"] > 1  # one step, then cancel

    r = train_segmentor(*emps, out, epochs=3, should_stop=stop, **{**TINY_SEG, "batch_size": 1})
    assert r["cancelled"] and r["epoch"] == 0
    assert (out / "last" / "config.json").is_file() and read_log(out) == []
    assert json.loads((out / "last" / "config.json").read_text())["epoch"] == 0
    r = train_segmentor(*emps, out, epochs=1, **{**TINY_SEG, "batch_size": 1})
    assert r["epoch"] == 1 and not r["cancelled"] and len(read_log(out)) == 1


def test_segmentor_with_augmentation_and_deep_supervision(emps, tmp_path):
    pytest.importorskip("emcopilot.augment")
    r = train_segmentor(*emps, tmp_path / "seg", epochs=1, augment=True, deep_supervision=True,
                        **TINY_SEG)
    assert r["epoch"] == 1
    model, cfg = load_model(tmp_path / "seg" / "last")
    assert model.deep_supervision and cfg["config"]["training"]["augment"] is True


def test_loader_workers_follow_device_and_env(monkeypatch):
    from emcopilot.device import loader_options, loader_workers

    monkeypatch.delenv("EMCOPILOT_LOADER_WORKERS", raising=False)
    assert loader_workers(torch.device("cpu")) == 0
    assert loader_options(torch.device("cpu")) == {"num_workers": 0, "pin_memory": False}
    import os

    assert loader_workers(torch.device("cuda")) == max(0, min(8, len(os.sched_getaffinity(0)) - 1))
    monkeypatch.setenv("EMCOPILOT_LOADER_WORKERS", "3")
    assert loader_workers(torch.device("cpu")) == 3
    assert loader_options(torch.device("cpu"))["num_workers"] == 3


def test_segmentor_weights_do_not_depend_on_loader_workers(emps, tmp_path, monkeypatch):
    """Worker processes (the GPU default) draw the same augmented crops as the main process."""
    weights = []
    for workers in ("0", "2"):
        monkeypatch.setenv("EMCOPILOT_LOADER_WORKERS", workers)
        out = tmp_path / f"w{workers}"
        train_segmentor(*emps, out, epochs=1, augment=True, **TINY_SEG)
        model, _ = load_model(out / "last")
        weights.append(torch.cat([p.detach().flatten() for p in model.parameters()]))
    assert torch.equal(weights[0], weights[1])


def test_generator_trains_resumes_and_generates(emps, tmp_path):
    out = tmp_path / "gen"
    r = train_generator(*emps, out, epochs=1, **TINY_GEN)
    assert r["epoch"] == 1 and "best_ssim" in r["checkpoints"]
    _assert_no_pickle(out / "last")
    assert (out / "last" / "discriminator.safetensors").is_file()
    rec = read_log(out)[0]
    assert -1.0 <= rec["val_ssim"] <= 1.0 and np.isfinite(rec["loss_g"])
    assert rec["loss_g"] > rec["adv"]  # L1 and SSIM terms are included
    r = train_generator(*emps, out, epochs=2, **TINY_GEN)
    assert r["epoch"] == 2 and [x["epoch"] for x in read_log(out)] == [1, 2]
    G, cfg = load_model(out / "best_ssim")
    assert isinstance(G, UNetGenerator) and cfg["config"]["kind"] == "generator"
    # masks of other sizes (EMPS masks are 512..579 px) are tiled at the training size
    masks = tmp_path / "masks"
    masks.mkdir()
    for stem in ("391ef00939", "c1cccb3332"):  # 512x513 and 545x512 px
        (masks / f"{stem}.png").write_bytes((emps[1] / f"{stem}.png").read_bytes())
    paths = generate_images(out / "last", masks, tmp_path / "synth", device="cpu")
    assert sorted(p.stem for p in paths) == ["391ef00939", "c1cccb3332"]
    for p in paths:
        img = io.read_micrograph(p).image
        mask = io.read_label_map(masks / p.name) > 0
        assert img.shape == mask.shape
        assert img.std() > 0
        # the image follows its mask: particle and background pixels differ on average
        assert abs(img[mask].mean() - img[~mask].mean()) > 1.0


# --------------------------------------------------------------------------- FID in validation

def _tiny_features() -> torch.nn.Module:
    """A fixed random conv feature extractor: (N, 3, H, W) in [0, 1] -> (N, 8)."""
    torch.manual_seed(1)
    return torch.nn.Sequential(torch.nn.Conv2d(3, 8, 5, stride=2), torch.nn.ReLU(),
                               torch.nn.AdaptiveAvgPool2d(1), torch.nn.Flatten()).eval()


def test_frechet_distance_matches_torchmetrics():
    from torchmetrics.image.fid import _compute_fid

    from emcopilot.metrics import frechet_distance

    g = torch.Generator().manual_seed(0)
    for n, m, d in ((5, 7, 16), (40, 30, 6)):  # rank-deficient and full-rank covariances
        x = torch.randn(n, d, generator=g, dtype=torch.float64)
        y = 0.7 * torch.randn(m, d, generator=g, dtype=torch.float64) + 0.3
        ref = float(_compute_fid(x.mean(0), torch.cov(x.T), y.mean(0), torch.cov(y.T)))
        assert frechet_distance(x, y) == pytest.approx(ref, rel=1e-6, abs=1e-9)
    assert frechet_distance(x, x) == pytest.approx(0.0, abs=1e-9)
    assert frechet_distance(x[:1], y) is None


def test_generator_logs_fid_null_here_and_number_when_injected(emps, tmp_path, caplog):
    from emcopilot.metrics import FidMetric

    # no Inception weights on this machine: the standard FID is null, with the reason logged once
    out = tmp_path / "plain"
    with caplog.at_level("WARNING", logger="emcopilot.training.generator"):
        r = train_generator(*emps, out, epochs=2, val_fraction=0.34, **TINY_GEN)
    recs = read_log(out)
    assert len(recs) == 2 and all("val_fid" in x and x["val_fid"] is None for x in recs)
    assert "fid" in r["unavailable"]
    assert sum("FID" in m for m in caplog.messages) == 1
    # an injected feature extractor gives a finite, non-negative number every epoch
    fid = FidMetric(feature_extractor=_tiny_features(), feature_dim=8, device="cpu")
    out2 = tmp_path / "injected"
    r2 = train_generator(*emps, out2, epochs=1, val_fraction=0.34, fid_metric=fid, **TINY_GEN)
    rec = read_log(out2)[0]
    assert rec["val_fid"] is not None and np.isfinite(rec["val_fid"]) and rec["val_fid"] >= 0
    assert "fid" not in r2["unavailable"]
    assert rec["val_fid"] > 0  # an untrained generator does not reproduce the real images


def test_fid_inception_path_runs_offline_with_a_local_weights_file(tmp_path, monkeypatch):
    """The standard FID path (torch-fidelity's Inception + the 'fid_inception' file) needs no
    network: a random-weights file of the right layout stands in for the real one (whose sha256
    the registry checks, so the test registry drops the hash)."""
    pytest.importorskip("torch_fidelity")
    from unittest import mock

    import io as _io

    from emcopilot import metrics, weights
    from torchmetrics.image.fid import NoTrainInceptionV3

    with mock.patch.object(torch.nn.Module, "load_state_dict", lambda self, *a, **k: None):
        buf = _io.BytesIO()
        torch.save({}, buf)
        buf.seek(0)
        state = NoTrainInceptionV3(name="x", features_list=["2048"],
                                   feature_extractor_weights_path=buf).state_dict()
    entry = weights.registry()["fid_inception"]
    fake = tmp_path / entry.basename
    torch.save(state, fake)
    reg = tmp_path / "registry.toml"
    text = weights.registry_path().read_text()
    reg.write_text(text.replace(f'sha256 = "{entry.sha256}"', 'sha256 = ""')
                   .replace(f"size = {entry.size}", "size = 0"))
    monkeypatch.setenv("EMCOPILOT_REGISTRY", str(reg))
    monkeypatch.setenv("HF_HUB_OFFLINE", "1")

    def no_network(*a, **k):
        raise AssertionError("network access attempted")

    monkeypatch.setattr("socket.socket.connect", no_network)
    monkeypatch.setattr("torch.hub.load_state_dict_from_url", no_network)
    fid = metrics.FidMetric(weights_path=fake, device="cpu")
    assert fid.available, fid.reason
    rng = np.random.default_rng(0)
    a = rng.random((3, 64, 64)).astype(np.float32)
    f = fid.features(a)
    assert tuple(f.shape) == (3, 2048) and torch.isfinite(f).all()
    assert metrics.frechet_distance(f, f) == pytest.approx(0.0, abs=1e-6)
    # a pickle holding more than tensors is refused, not executed
    bad = tmp_path / "bad" / entry.basename
    bad.parent.mkdir()
    torch.save({"x": object.__new__(_Evil)}, bad)
    bad_fid = metrics.FidMetric(weights_path=bad, device="cpu")
    assert not bad_fid.available and "FID unavailable" in bad_fid.reason
    assert not _Evil.ran


class _Evil:
    ran = False

    def __reduce__(self):
        return (_mark_ran, ())


def _mark_ran():
    _Evil.ran = True
    return None


def test_generate_image_whole_mode_is_seeded_stochastic_and_shape_preserving():
    """Whole-image generation keeps odd sizes, is reproducible per seed, uses dropout as its noise
    (pix2pix) only when asked, and leaves the generator in eval mode."""
    import torch

    from emcopilot.nets.pix2pix import UNetGenerator
    from emcopilot.training.generator import generate_image

    torch.manual_seed(0)
    G = UNetGenerator(base=4, depth=6, dropout=0.5).eval()
    rng = np.random.default_rng(0)
    mask = np.zeros((130, 203), np.int32)
    mask[40:70, 50:90] = 1
    mask[rng.integers(0, 130, 20), rng.integers(0, 203, 20)] = 2
    dev = torch.device("cpu")
    a = generate_image(G, mask, 64, dev, "whole", stochastic=True, seed=1)
    b = generate_image(G, mask, 64, dev, "whole", stochastic=True, seed=1)
    c = generate_image(G, mask, 64, dev, "whole", stochastic=True, seed=2)
    d = generate_image(G, mask, 64, dev, "whole", stochastic=False, seed=1)
    e = generate_image(G, mask, 64, dev, "whole", stochastic=False, seed=2)
    assert a.shape == mask.shape and a.dtype == np.float32
    assert 0.0 <= a.min() and a.max() <= 1.0
    assert np.array_equal(a, b)
    assert not np.allclose(a, c)
    assert np.array_equal(d, e)
    assert not any(m.training for m in G.modules())


def test_gather_pairs_joins_sources_and_forgets_stale_pairs(tmp_path):
    a_img, a_msk, b_img, b_msk = (tmp_path / n for n in ("ai", "am", "bi", "bm"))
    for d in (a_img, a_msk, b_img, b_msk):
        d.mkdir()
    img = np.full((8, 8), 0.5, np.float32)
    lab = np.zeros((8, 8), np.int32)
    lab[2:5, 2:5] = 1
    for stem in ("x", "y"):
        io.write_image(a_img / f"{stem}.png", img)
        io.write_label_map(a_msk / f"{stem}.png", lab)
    io.write_image(b_img / "x.png", img * 0.5)
    io.write_label_map(b_msk / "x.png", lab)
    images, masks = gather_pairs([(a_img, a_msk, ""), (b_img, b_msk, "real_")], tmp_path / "mix")
    assert [s for s, *_ in find_pairs(images, masks)] == ["real_x", "x", "y"]
    # a source image rewritten (new file) and one removed: the next gathering follows them
    (a_img / "y.png").unlink()
    (a_msk / "y.png").unlink()
    io.write_image(b_img / "x.png", img * 0.25)
    images, masks = gather_pairs([(a_img, a_msk, ""), (b_img, b_msk, "real_")], tmp_path / "mix")
    assert [s for s, *_ in find_pairs(images, masks)] == ["real_x", "x"]
    assert (images / "real_x.png").read_bytes() == (b_img / "x.png").read_bytes()
