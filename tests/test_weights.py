"""emcopilot.weights: registry, local folders, Hugging Face cache, hashes, offline errors,
safe loading, model cards and publishing (HfApi recorded, no network)."""

from __future__ import annotations

import hashlib
import os
import re
from pathlib import Path

import pytest
import torch

from emcopilot import weights
from emcopilot.errors import EMCopilotError, InputError, WeightsUnavailableError

COMMIT = "0123456789abcdef0123456789abcdef01234567"
PAYLOAD = b"not really weights, but bytes with a known hash\n" * 100


def _sha(data: bytes) -> str:
    return hashlib.sha256(data).hexdigest()


@pytest.fixture
def test_registry(tmp_path, monkeypatch) -> Path:
    """A registry with small fake entries; EMCOPILOT_REGISTRY points at it."""
    reg = tmp_path / "registry.toml"
    reg.write_text(f"""
[tiny]
repo_id = "testorg/tiny-weights"
filename = "sub/tiny.bin"
sha256 = "{_sha(PAYLOAD)}"
size = {len(PAYLOAD)}
kind = "sam"
description = "Tiny test model"
licence = "MIT"
published = true

[tiny_nohash]
repo_id = "testorg/tiny-weights"
filename = "other.bin"
sha256 = ""
size = 0
kind = "segmentor"
description = "Unhashed"
licence = "MIT"

[tiny_unpub]
repo_id = "emcopilot/not-there"
filename = "model.safetensors"
sha256 = ""
size = 0
kind = "generator"
description = "Future model"
licence = "MIT"
published = false
""")
    monkeypatch.setenv("EMCOPILOT_REGISTRY", str(reg))
    return reg


def _fake_hub_cache(cache: Path, repo_id: str, filename: str, data: bytes) -> Path:
    """The layout hf_hub_download(local_files_only=True) reads."""
    repo = cache / ("models--" + repo_id.replace("/", "--"))
    (repo / "refs").mkdir(parents=True)
    (repo / "refs" / "main").write_text(COMMIT)
    f = repo / "snapshots" / COMMIT / filename
    f.parent.mkdir(parents=True)
    f.write_bytes(data)
    return f


# --- registry -------------------------------------------------------------------------------

def test_bundled_registry_entries_are_complete():
    reg = weights.registry()
    assert {"sam_vit_b", "sam_vit_l", "sam_vit_h", "lpips_alex", "fid_inception",
            "emcopilot_generator_demo", "emcopilot_segmentor_demo"} <= set(reg)
    for name, e in reg.items():
        assert e.name == name and "/" in e.repo_id and e.filename
        assert e.sha256 == "" or re.fullmatch(r"[0-9a-f]{64}", e.sha256), name
        assert e.kind and e.description and e.licence
    # the official SAM file names carry an MD5 prefix; the sha256 are the published ones
    for mt, prefix in [("vit_b", "01ec64"), ("vit_l", "0b3195"), ("vit_h", "4b8939")]:
        e = reg[f"sam_{mt}"]
        assert e.basename == f"sam_{mt}_{prefix}.pth" and e.published and e.size > 10**8
    # torchvision-style names carry the sha256 prefix
    assert reg["lpips_alex"].sha256.startswith("7be5be79")
    assert reg["fid_inception"].sha256.startswith("6726825d")
    for n in ("emcopilot_generator_demo", "emcopilot_segmentor_demo"):
        assert reg[n].repo_id.startswith("emcopilot/") and reg[n].published is False


def test_unknown_name_lists_known_ones():
    with pytest.raises(WeightsUnavailableError, match="sam_vit_b"):
        weights.resolve_weights("sam_vit_x")
    assert weights.weights_available("sam_vit_x") is False


# --- resolution -----------------------------------------------------------------------------

def test_offline_and_missing_says_the_way_forward():
    assert os.environ["HF_HUB_OFFLINE"] == "1"  # set by conftest
    assert not weights.weights_available("sam_vit_b")
    with pytest.raises(WeightsUnavailableError) as ei:
        weights.resolve_weights("sam_vit_b")
    msg = str(ei.value)
    assert "\n" not in msg
    assert "sam_vit_b_01ec64.pth" in msg and "not on this machine" in msg
    assert "https://huggingface.co/ybelkada/segment-anything" in msg
    assert "$EMCOPILOT_WEIGHTS_DIR" in msg and "--sam-checkpoint" in msg
    assert "classical masker works without weights" in msg


def test_unpublished_model_says_not_yet_published():
    with pytest.raises(WeightsUnavailableError, match="not yet published"):
        weights.resolve_weights("emcopilot_segmentor_demo", offline=False)


def test_resolves_through_hf_hub_cache(test_registry, tmp_path):
    from huggingface_hub import hf_hub_download

    cache = tmp_path / "hub"
    f = _fake_hub_cache(cache, "testorg/tiny-weights", "sub/tiny.bin", PAYLOAD)
    # the layout really is what huggingface_hub reads offline
    direct = hf_hub_download("testorg/tiny-weights", "sub/tiny.bin", cache_dir=str(cache),
                             local_files_only=True)
    assert Path(direct).resolve() == f.resolve()
    got = weights.resolve_weights("tiny", cache_dir=cache)
    assert got.resolve() == f.resolve() and got.read_bytes() == PAYLOAD
    assert weights.weights_available("tiny", cache_dir=cache)
    # the default cache is read from $HF_HOME at call time (conftest sets it per test)
    _fake_hub_cache(Path(os.environ["HF_HOME"]) / "hub", "testorg/tiny-weights",
                    "sub/tiny.bin", PAYLOAD)
    assert weights.resolve_weights("tiny").read_bytes() == PAYLOAD


def test_corrupt_hub_cache_file_is_rejected(test_registry, tmp_path):
    cache = tmp_path / "hub"
    bad = bytearray(PAYLOAD)
    bad[10] ^= 0xFF
    _fake_hub_cache(cache, "testorg/tiny-weights", "sub/tiny.bin", bytes(bad))
    with pytest.raises(WeightsUnavailableError, match="sha256") as ei:
        weights.resolve_weights("tiny", cache_dir=cache)
    assert "delete it" in str(ei.value)


def test_explicit_path_then_env_dir_take_precedence(test_registry, tmp_path, monkeypatch):
    cache = tmp_path / "hub"
    hub_file = _fake_hub_cache(cache, "testorg/tiny-weights", "sub/tiny.bin", PAYLOAD)
    env_dir = tmp_path / "env_weights"
    env_dir.mkdir()
    (env_dir / "tiny.bin").write_bytes(PAYLOAD)
    monkeypatch.setenv("EMCOPILOT_WEIGHTS_DIR", str(env_dir))
    assert weights.resolve_weights("tiny", cache_dir=cache) == env_dir / "tiny.bin"

    explicit = tmp_path / "mine" / "renamed.bin"
    explicit.parent.mkdir()
    explicit.write_bytes(PAYLOAD)
    assert weights.resolve_weights("tiny", path=explicit, cache_dir=cache) == explicit
    # a folder holding the registered file name works too
    assert weights.resolve_weights("tiny", path=env_dir) == env_dir / "tiny.bin"
    # without the env folder it falls back to the hub cache
    monkeypatch.delenv("EMCOPILOT_WEIGHTS_DIR")
    assert weights.resolve_weights("tiny", cache_dir=cache).resolve() == hub_file.resolve()


def test_explicit_path_problems(test_registry, tmp_path):
    with pytest.raises(WeightsUnavailableError, match="does not exist"):
        weights.resolve_weights("tiny", path=tmp_path / "nope.bin")
    with pytest.raises(WeightsUnavailableError, match="not in the folder"):
        weights.resolve_weights("tiny", path=tmp_path)
    wrong = tmp_path / "wrong.bin"
    wrong.write_bytes(PAYLOAD[:-1] + b"X")  # same size, other bytes
    with pytest.raises(WeightsUnavailableError, match="sha256"):
        weights.resolve_weights("tiny", path=wrong)
    short = tmp_path / "short.bin"
    short.write_bytes(PAYLOAD[:100])
    with pytest.raises(WeightsUnavailableError, match="bytes, expected"):
        weights.resolve_weights("tiny", path=short)


def test_env_offline_flag_and_download_path(test_registry, tmp_path, monkeypatch):
    """Not cached: offline refuses; online calls hf_hub_download (faked) and checks the hash."""
    import huggingface_hub

    cache = tmp_path / "hub"
    monkeypatch.delenv("HF_HUB_OFFLINE")
    monkeypatch.setenv("EMCOPILOT_OFFLINE", "1")
    with pytest.raises(WeightsUnavailableError, match="offline"):
        weights.resolve_weights("tiny", cache_dir=cache)
    monkeypatch.delenv("EMCOPILOT_OFFLINE")

    real = huggingface_hub.hf_hub_download
    calls = []

    def fake_download(repo_id, filename, **kw):
        calls.append((repo_id, filename, kw.get("local_files_only")))
        if kw.get("local_files_only"):
            return real(repo_id, filename, **kw)
        raise ConnectionError("no route to host")

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", fake_download)
    with pytest.raises(WeightsUnavailableError) as ei:
        weights.resolve_weights("tiny", cache_dir=cache, progress=False)
    assert "download from https://huggingface.co/testorg/tiny-weights failed" in str(ei.value)
    assert "no route to host" in str(ei.value)
    assert calls[-1] == ("testorg/tiny-weights", "sub/tiny.bin", False)

    def good_download(repo_id, filename, **kw):
        if kw.get("local_files_only"):
            return real(repo_id, filename, **kw)
        return str(_fake_hub_cache(Path(kw["cache_dir"]), repo_id, filename, PAYLOAD))

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", good_download)
    assert weights.resolve_weights("tiny", cache_dir=cache).read_bytes() == PAYLOAD
    # offline=True overrides the (now unset) environment: it is cached, so it still resolves
    assert weights.resolve_weights("tiny", cache_dir=cache, offline=True).is_file()


def test_sha256_is_cached_per_path_size_and_mtime(tmp_path):
    f = tmp_path / "w.bin"
    f.write_bytes(b"a" * 1000)
    first = weights.sha256_file(f)
    assert first == _sha(b"a" * 1000)
    st = f.stat()
    f.write_bytes(b"b" * 1000)  # same size; restore the mtime: the cached digest is reused
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns))
    assert weights.sha256_file(f) == first
    os.utime(f, ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))
    assert weights.sha256_file(f) == _sha(b"b" * 1000)


def test_add_local_weights_checks_then_copies(test_registry, tmp_path, monkeypatch):
    dest_dir = tmp_path / "wdir"
    monkeypatch.setenv("EMCOPILOT_WEIGHTS_DIR", str(dest_dir))
    bad = tmp_path / "bad.bin"
    bad.write_bytes(PAYLOAD[:-1] + b"Z")
    with pytest.raises(WeightsUnavailableError):
        weights.add_local_weights("tiny", bad)
    assert not (dest_dir / "tiny.bin").exists()
    assert not weights.weights_available("tiny")
    good = tmp_path / "download.bin"
    good.write_bytes(PAYLOAD)
    dest = weights.add_local_weights("tiny", good)
    assert dest == dest_dir / "tiny.bin" and dest.read_bytes() == PAYLOAD
    assert weights.weights_available("tiny")
    assert weights.resolve_weights("tiny") == dest
    with pytest.raises(InputError):
        weights.add_local_weights("tiny", tmp_path / "missing.bin")


def test_default_weights_dir_follows_emcopilot_data(test_registry, tmp_path):
    good = tmp_path / "x.bin"
    good.write_bytes(PAYLOAD)
    dest = weights.add_local_weights("tiny", good)
    assert dest.parent == Path(os.environ["EMCOPILOT_DATA"]) / "weights"
    assert weights.resolve_weights("tiny") == dest


def test_weights_available_checks_size_not_network(test_registry, tmp_path, monkeypatch):
    import huggingface_hub

    d = tmp_path / "w"
    d.mkdir()
    monkeypatch.setenv("EMCOPILOT_WEIGHTS_DIR", str(d))
    (d / "tiny.bin").write_bytes(PAYLOAD[:50])
    calls = []
    real = huggingface_hub.hf_hub_download

    def spy(*a, **kw):
        calls.append(kw.get("local_files_only"))
        return real(*a, **kw)

    monkeypatch.setattr(huggingface_hub, "hf_hub_download", spy)
    monkeypatch.delenv("HF_HUB_OFFLINE")
    assert weights.weights_available("tiny") is False  # wrong size
    assert weights.weights_available("tiny_nohash") is False
    assert all(c is True for c in calls)


# --- loading --------------------------------------------------------------------------------

def test_load_state_dict_formats(tmp_path):
    from safetensors.torch import save_file

    sd = {"a.weight": torch.arange(6, dtype=torch.float32).reshape(2, 3), "b": torch.ones(4)}
    save_file(sd, str(tmp_path / "m.safetensors"))
    torch.save(sd, tmp_path / "m.pth")
    torch.save({"state_dict": sd, "epoch": 3}, tmp_path / "wrapped.pt")
    for name in ("m.safetensors", "m.pth", "wrapped.pt"):
        got = weights.load_state_dict(tmp_path / name)
        assert set(got) == set(sd) and all(torch.equal(got[k], sd[k]) for k in sd), name
    (tmp_path / "m.ckpt").write_bytes(b"x")
    with pytest.raises(InputError, match="suffix"):
        weights.load_state_dict(tmp_path / "m.ckpt")
    with pytest.raises(InputError, match="does not exist"):
        weights.load_state_dict(tmp_path / "none.pth")
    torch.save({"lr": 0.1, "epoch": 3}, tmp_path / "meta.pth")
    with pytest.raises(InputError, match="not a state dict"):
        weights.load_state_dict(tmp_path / "meta.pth")
    (tmp_path / "bad.safetensors").write_bytes(b"\x00" * 20)
    with pytest.raises(InputError, match="safetensors"):
        weights.load_state_dict(tmp_path / "bad.safetensors")


class _Evil:
    def __init__(self, marker: Path):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_malicious_pickle_is_refused_not_executed(tmp_path):
    marker = tmp_path / "pwned"
    evil = tmp_path / "evil.pth"
    torch.save({"w": torch.zeros(1), "payload": _Evil(marker)}, evil)
    with pytest.raises(InputError, match="safely"):
        weights.load_state_dict(evil)
    assert not marker.exists()


# --- model cards and publishing -------------------------------------------------------------

CARD = {
    "title": "PtSn on Al2O3 segmentor",
    "task": "segmentor",
    "architecture": "CBAM-UNet++",
    "material_system": "PtSn nanoparticles on Al2O3",
    "imaging_mode": "HAADF-STEM",
    "pixel_size_nm": 0.1953,
    "metrics": {"mIoU": 0.8123, "mDice": 0.8744},
    "training_data": "5,940 synthetic images from 33 coarse masks",
    "seed": 7,
}


def test_model_card_content():
    from emcopilot import __version__

    text = weights.model_card(CARD)
    head, body = text.split("---", 2)[1:]
    assert "library_name: emcopilot" in head and "pipeline_tag: image-segmentation" in head
    assert "haadf-stem" in head and "license: mit" in head
    assert body.lstrip().startswith("# PtSn on Al2O3 segmentor")
    assert "- **Material system:** PtSn nanoparticles on Al2O3" in body
    assert "- **Imaging mode:** HAADF-STEM" in body
    assert "- **Pixel size (nm/px):** 0.1953" in body
    assert "| mIoU | 0.8123 |" in body and "| mDice | 0.8744 |" in body
    assert "5,940 synthetic images" in body
    assert f"- **EMcopilot version:** {__version__}" in body
    assert "- **seed:** 7" in body  # unknown keys are kept
    bare = weights.model_card({"task": "generator"})
    assert "pipeline_tag: image-to-image" in bare and "not stated" in bare
    assert "No metrics stated." in bare


class _RecordingApi:
    calls: list = []
    fail: Exception | None = None

    def __init__(self, token=None):
        self.calls.append(("init", token))

    def create_repo(self, repo_id, **kw):
        self.calls.append(("create_repo", repo_id, kw))
        if self.fail:
            raise self.fail
        return f"https://huggingface.co/{repo_id}"

    def upload_folder(self, *, repo_id, folder_path, **kw):
        folder = Path(folder_path)
        files = {p.name: p.read_bytes() for p in folder.iterdir()}
        self.calls.append(("upload_folder", repo_id, files, kw))


@pytest.fixture
def recording_api(monkeypatch):
    import huggingface_hub

    _RecordingApi.calls = []
    _RecordingApi.fail = None
    monkeypatch.setattr(huggingface_hub, "HfApi", _RecordingApi)
    return _RecordingApi


def test_push_model_uploads_folder_with_card(tmp_path, recording_api):
    from safetensors.torch import save_file

    ck = tmp_path / "ckpt"
    ck.mkdir()
    save_file({"w": torch.ones(3)}, str(ck / "model.safetensors"))
    (ck / "config.json").write_text('{"arch": "cbam_unetpp"}')
    (ck / "optimizer.pth").write_bytes(b"not uploaded")
    (ck / "README.md").write_text("user's own notes")
    seen = []
    url = weights.push_model(ck, "my-lab/ptsn-segmentor", token="hf_x", card=CARD,
                             private=True, progress=lambda d, t, m: seen.append((d, t)))
    assert url == "https://huggingface.co/my-lab/ptsn-segmentor"
    names = [c[0] for c in recording_api.calls]
    assert names == ["init", "create_repo", "upload_folder"]
    _, repo, kw = recording_api.calls[1]
    assert repo == "my-lab/ptsn-segmentor" and kw["private"] is True and kw["exist_ok"]
    _, repo, files, kw = recording_api.calls[2]
    assert set(files) == {"model.safetensors", "config.json", "README.md"}
    assert files["README.md"].decode() == weights.model_card(CARD)
    assert files["model.safetensors"] == (ck / "model.safetensors").read_bytes()
    assert (ck / "README.md").read_text() == "user's own notes"  # the folder is untouched
    assert seen[-1][0] == seen[-1][1]


def test_push_model_card_falls_back_to_config(tmp_path, recording_api):
    ck = tmp_path / "ckpt"
    ck.mkdir()
    (ck / "model.safetensors").write_bytes(b"x")
    (ck / "config.json").write_text('{"task": "generator", "architecture": "pix2pix", '
                                    '"metrics": {"SSIM": 0.71}, "material_system": "Au/C"}')
    weights.push_model(ck, "a/b", card={"material_system": "Au in ZSM-5", "imaging_mode": None})
    readme = recording_api.calls[-1][2]["README.md"].decode()
    assert "- **Architecture:** pix2pix" in readme and "| SSIM | 0.71 |" in readme
    assert "- **Material system:** Au in ZSM-5" in readme  # the caller's value wins
    (ck / "config.json").write_text("{broken")
    with pytest.raises(InputError, match="not valid JSON"):
        weights.push_model(ck, "a/b", card={})


def test_push_model_errors(tmp_path, recording_api):
    ck = tmp_path / "ckpt"
    ck.mkdir()
    with pytest.raises(InputError, match="safetensors"):
        weights.push_model(ck, "a/b", card={})
    (ck / "model.safetensors").write_bytes(b"x")
    with pytest.raises(InputError, match="config.json"):
        weights.push_model(ck, "a/b", card={})
    (ck / "config.json").write_text("{}")
    with pytest.raises(InputError, match="owner/name"):
        weights.push_model(ck, "no-slash", card={})
    recording_api.fail = ConnectionError("Hub unreachable")
    with pytest.raises(EMCopilotError, match="Hub unreachable") as ei:
        weights.push_model(ck, "a/b", card={})
    assert "\n" not in str(ei.value)
