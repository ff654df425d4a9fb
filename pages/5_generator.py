"""Generator: train pix2pix on (mask, image) pairs, live curves, synthetic micrographs."""

from __future__ import annotations

import streamlit as st

from pages import _ui

st.title("Generator (masks to micrographs)")
store = _ui.get_store()
project = _ui.current_project(store)
if project is None:
    st.stop()

from emcopilot import job_kinds  # noqa: E402

run_dir = job_kinds.project_path(project, "models_dir", "generator")
n_masks = len(job_kinds.prefer_masks(project))
st.caption(f"Trains on the project's {n_masks} (image, mask) pairs; edited masks are preferred.")

with st.form("train_generator"):
    c = st.columns(4)
    profile = c[0].selectbox("Profile", ["cpu", "paper"],
                             help="cpu: small model for a laptop; paper: the paper's sizes "
                                  "(GPU, hours).")
    epochs = c[1].number_input("Epochs (total)", 1, 5000, 20,
                               help="Training continues from the last checkpoint up to this.")
    batch = c[2].number_input("Batch size", 1, 64, 1)
    size = c[3].selectbox("Image size (px)", [128, 256, 512], index=1,
                          help="Side of the training crops.")
    c = st.columns(2)
    l1 = c[0].number_input("lambda L1", 0.0, 1000.0, 100.0, help="Weight of the L1 loss.")
    lssim = c[1].number_input("lambda SSIM", 0.0, 1000.0, 10.0, help="Weight of the SSIM loss.")
    go = st.form_submit_button("Train generator", type="primary", icon=":material/play_arrow:",
                               disabled=n_masks == 0)
if go:
    _ui.submit_job(store, project, "train_generator",
                   {"profile": profile, "epochs": int(epochs), "batch_size": int(batch),
                    "image_size": int(size), "lambda_l1": float(l1),
                    "lambda_ssim": float(lssim)})
job = _ui.job_panel(store, project, "train_generator", resumable=True)
_ui.training_curves(run_dir / "log.jsonl", job,
                   (["loss_g", "loss_d", "l1", "ssim_loss", "adv"], "Training losses"),
                   (["val_ssim", "val_ms_ssim", "val_lpips"], "Validation SSIM / LPIPS"))
if not (run_dir / "log.jsonl").is_file():
    st.button("Refresh", icon=":material/refresh:")

st.divider()
st.subheader("Synthetic micrographs")
ckpt = job_kinds.generator_checkpoint(project)
if st.button("Generate images for the synthetic masks", icon=":material/image:",
             disabled=ckpt is None):
    _ui.submit_job(store, project, "generate_images", {})
if ckpt is None:
    st.caption("Train the generator first (and make synthetic masks on the Priors page).")
_ui.job_panel(store, project, "generate_images")
synth_dir = job_kinds.project_path(project, "synthetic_images_dir")
synth = sorted(synth_dir.glob("*.png"))
if synth:
    from emcopilot.io import read_label_map

    masks_dir = job_kinds.synthetic_masks(project)
    st.caption(f"{len(synth)} synthetic images (magma colormap) next to their masks.")
    for p in synth[:4]:
        c1, c2 = st.columns(2)
        c1.image(_ui.magma(_ui.read_png01(p)), caption=f"synthetic {p.stem}",
                 width="stretch")
        m = masks_dir / p.name
        if m.is_file():
            c2.image((read_label_map(m) > 0).astype("uint8") * 255, caption="mask",
                     width="stretch")
real = project.images()[:2]
if real and synth:
    st.caption("Real micrographs for comparison")
    cols = st.columns(len(real))
    for col, rec in zip(cols, real):
        mg = _ui.guarded(project.read_image, rec["stem"])
        if mg is not None:
            from emcopilot.io import normalize

            col.image(_ui.gray_png(normalize(mg.image)), caption=rec["stem"],
                      width="stretch")

st.divider()
st.subheader("Pretrained generators")
from emcopilot.weights import registry, weights_available  # noqa: E402

entries = {n: e for n, e in registry().items() if getattr(e, "kind", "") == "generator"}
if not entries:
    st.caption("No pretrained generator is registered.")
for name, e in entries.items():
    here = weights_available(name)
    state = ("on this machine" if here else
             "not yet published" if not getattr(e, "published", True) else
             "downloadable from the Hub (`emcopilot weights download " + name + "`)")
    st.write(f"**{name}**: {getattr(e, 'description', '')} ({state})")
