"""Results: segment the images (trained segmentor or the coarse masker), PSD, downloads."""

from __future__ import annotations

import json

import altair as alt
import pandas as pd
import streamlit as st

from pages import _ui

st.title("Results: particle size distribution")
store = _ui.get_store()
project = _ui.current_project(store)
if project is None:
    st.stop()
if not project.images():
    st.info("No images yet: upload micrographs first.")
    st.stop()

from emcopilot import job_kinds  # noqa: E402

ckpt = job_kinds.segmentor_checkpoint(project)
options = (["segmentor"] if ckpt else []) + ["coarse"]
model = st.radio("Segment with", options, horizontal=True,
                 format_func={"segmentor": f"trained segmentor ({ckpt.name if ckpt else ''})",
                              "coarse": "coarse masker (quick report, no training; uses your "
                                        "edited masks where saved)"}.get)
params: dict = {"model": model}
if model == "segmentor":
    calibrated = job_kinds.segmentor_threshold(ckpt)
    note = (f" The threshold with the best Dice on this model's validation pairs was "
            f"{calibrated:.2f}; on real images 0.5 measured better (see BENCHMARKS.md)."
            if calibrated is not None else "")
    params["threshold"] = st.slider("Probability threshold", 0.05, 0.95, 0.5, 0.05,
                                    help="Pixels above it are particles." + note)
    core = job_kinds.segmentor_threshold(ckpt, "min_peak")
    if core is not None:
        keep_faint = st.checkbox(
            f"Keep faint particles too (core probability below {core:.2f})", value=False,
            help="After training, the particle core probability that best matched this "
                 "project's masks was chosen and recorded with the model: particles whose "
                 "highest probability stays below it are dropped. On EMPS this improved counts "
                 "and sizes and cost some pixel Dice (BENCHMARKS.md).")
        if keep_faint:
            params["min_peak"] = None
    grown = job_kinds.segmentor_grow_to(ckpt)
    grow = st.checkbox(
        ("Grow particles out to each image's Otsu probability level" if grown in (None, "otsu")
         else f"Grow particles out to probability {grown:.2f}")
        + (" (chosen for this model)" if grown is not None else ""), value=grown is not None,
        help="Each particle is extended over the neighbouring pixels down to a lower "
             "probability, without adding particles. The segmentor is often under-confident on "
             "real images, so outlines cut at the threshold come out small. After training, "
             "growth is switched on when it matches this project's masks better. On EMPS it "
             "raised pixel Dice and brought sizes closer (BENCHMARKS.md).")
    if grow != (grown is not None):
        params["grow_to"] = "otsu" if grow else None
    recorded = job_kinds.segmentor_add_coarse(ckpt)
    add = st.checkbox(
        "Also keep the masks' particles the segmentor missed"
        + (" (chosen for this model)" if recorded else ""), value=recorded,
        help="Each image's particle mask (edited, else the coarse mask; the classical "
             "masker's particles where it has none) adds the particles that the segmentor left at least 90 % uncovered, that are at least half "
             "that image's median mask particle area and where its probability averages at "
             "least the image's Otsu level (on an image where the segmentor found no "
             "particle at all, whatever its probability). On EMPS this raised object F1 and Dice "
             "over the segmentor's own particles, at the price of more particles counted on "
             "images with a few large ones (BENCHMARKS.md).")
    if add != recorded:
        params["add_coarse"] = add
    support = job_kinds.segmentor_support_removal(ckpt)
    choices = {"auto": "images that show particles on a support", "on": "every image",
               "off": "no image"}
    removal = st.selectbox(
        "Take a textured support out first, for", list(choices),
        index=list(choices).index(support),
        format_func=lambda k: choices[k] + (" (recorded with this model)" if k == support else ""),
        help="The segmentor learnt from synthetic micrographs, which show particles on a plain "
             "background, so it can take the bright grains of a support (HAADF-STEM of "
             "supported catalysts) for particles and miss the small particles on them. A white "
             "top-hat at the particle scale removes structures wider than the particles first. "
             "'Images that show particles on a support' follows the classical masker preset the "
             "model was trained with: none for 'isolated', all for 'supported', and for 'auto' "
             "the images where the masker picks its 'supported' preset. Free particles on a "
             "flat background are best left as they are, since the top-hat also cuts down "
             "large particles (BENCHMARKS.md).")
    if removal != support:
        params["support_removal"] = removal
    split = job_kinds.segmentor_scale_split(ckpt)
    split_choices = {"auto": "images that show particles on a support", "on": "every image",
                     "off": "no image"}
    splitting = st.selectbox(
        "Measure the particle width with touching mask particles split, for",
        list(split_choices), index=list(split_choices).index(split),
        format_func=lambda k: split_choices[k] + (" (recorded with this model)" if k == split
                                                  else ""),
        help="Each image is resized so that its typical mask particle has the width the "
             "segmentor learnt. Where small particles touch on a support, the masks often hold "
             "them merged, the image is shrunk too much and the segmentor finds the particles "
             "too large and too few. Splitting the mask's touching particles before measuring "
             "(a distance-transform watershed) gives those images their particles' own width. "
             "'Images that show particles on a support' are those the support removal's "
             "choice reaches. On the S/TEM catalysts it raised object F1 and brought the sizes "
             "closer; on free particles it cuts whole particles up and is best left off "
             "(BENCHMARKS.md, stop 30).")
    if splitting != split:
        params["scale_split"] = splitting
    checked = job_kinds.segmentor_support_check(ckpt)
    check = st.checkbox(
        "Keep the support removal only where it matches the masks at least as well"
        + (" (chosen for this model)" if checked else ""), value=checked,
        disabled=removal == "off",
        help="Each image whose support is taken out is segmented without that too, and the "
             "particles that match its mask (edited, else the coarse mask) better by object F1 "
             "are kept. The removal finds small particles on a support, but on some images the "
             "segmentor then takes what is left of the support for particles (BENCHMARKS.md). "
             "It segments those images twice.")
    if check != checked and removal != "off":
        params["support_check"] = check
    scales = job_kinds.segmentor_scale_choice(ckpt)
    tried = ", ".join(f"{m:g}x" for m in scales) or "1.5x"
    choose = st.checkbox(
        f"Also segment each image at {tried} its particle scale and keep what matches its mask "
        "best" + (" (chosen for this model)" if scales else ""), value=bool(scales),
        help="The segmentor sees each image resized so that its typical mask particle has the "
             "width it learnt; where the masks make particles look larger than they are, it "
             "finds them too large and too few. With this, each image is also segmented at the "
             "larger scale, and the particles that match its mask (edited, else the coarse "
             "mask) better by object F1 are kept. On the S/TEM catalysts it lowered the count "
             "error and brought sizes closer; on EMPS it raised object F1 but counted more "
             "particles on images with one or two (BENCHMARKS.md, stops 26-27). It takes about "
             "three times as long.")
    if choose != bool(scales):
        params["scale_choice"] = list(scales or (1.5,)) if choose else []
    from emcopilot.postprocess import MIN_SNR_DEFAULT  # noqa: E402

    recorded_snr = job_kinds.segmentor_min_snr(ckpt)
    drop_faint = st.checkbox(
        "Drop faint particles (blobs of a noisy support)"
        + (" (chosen for this model)" if recorded_snr else ""), value=bool(recorded_snr),
        help="A particle is dropped when its mean brightness stands out from the ring of "
             "background around it by at most the level below times the noise of that mean "
             "(contrast x sqrt(area) / the image's pixel noise). On noisy silica and alumina "
             "supports the segmentor takes blobs of the support's texture for particles; on "
             "the S/TEM catalysts this lowered the count error and raised object F1, on EMPS "
             "it changed nothing (BENCHMARKS.md, stop 28).")
    level = st.number_input("Faint: signal-to-noise at most", min_value=0.1, max_value=1e6,
                            value=float(recorded_snr or MIN_SNR_DEFAULT), step=5.0,
                            disabled=not drop_faint)
    wanted = float(level) if drop_faint else None
    if wanted != recorded_snr:
        params["min_snr"] = wanted
    if not st.checkbox(
            "Drop particles on text and scale bars drawn on the image", value=True,
            help="Figures and exported micrographs often carry a scale bar, its label, panel "
                 "letters or instrument text drawn over the specimen; their glyphs look like "
                 "small particles. They are found from the image alone (ink at its darkest or "
                 "brightest grey with sharp outlines, glyphs in a line, flat bars beside them) "
                 "and the particles lying on them dropped; on EMPS this lowered the count error "
                 "(BENCHMARKS.md, stop 37)."):
        params["annotations"] = False
if st.button("Segment all images and write the report", type="primary",
             icon=":material/play_arrow:"):
    _ui.submit_job(store, project, "segment", params)
_ui.job_panel(store, project, "segment")

out = job_kinds.project_path(project, "results_dir")
summary_path = out / "summary.json"
if not summary_path.is_file():
    st.caption("No report yet.")
    st.stop()

summary = json.loads(summary_path.read_text())
batch = summary.get("batch", {})
per_image = summary.get("per_image", {})
st.subheader("Summary")
rows = [{"set": "all images", **batch}]
if isinstance(per_image, dict):
    rows += [{"set": k, **v} for k, v in per_image.items() if isinstance(v, dict)]
elif isinstance(per_image, list):
    rows += [{"set": r.get("image", ""), **r} for r in per_image if isinstance(r, dict)]
table = pd.DataFrame(rows)
st.dataframe(table, hide_index=True, width="stretch")

particles = pd.read_csv(out / "particles.csv") if (out / "particles.csv").is_file() else None
size_col = next((c for c in ("equivalent_diameter_nm", "equivalent_diameter_px")
                 if particles is not None and c in particles.columns
                 and particles[c].notna().any()), None)
c1, c2 = st.columns(2)
with c1:
    if (out / "psd.png").is_file():
        st.image(str(out / "psd.png"), caption="PSD with fitted curve", width="stretch")
with c2:
    if size_col:
        st.altair_chart(alt.Chart(particles.dropna(subset=[size_col]),
                                  title="Particle sizes").mark_bar()
                        .encode(x=alt.X(f"{size_col}:Q", bin=alt.Bin(maxbins=30),
                                        title=size_col.replace("_", " ")),
                                y=alt.Y("count():Q", title="particles")),
                        width="stretch")

st.subheader("Downloads")
zip_path = out / job_kinds.REPORT_ZIP
d = st.columns(3)
if zip_path.is_file():
    d[0].download_button("Download everything (ZIP)", zip_path.read_bytes(),
                         file_name=f"{project.name}_psd_report.zip", mime="application/zip",
                         type="primary", icon=":material/download:")
if (out / "particles.csv").is_file():
    d[1].download_button("Particles (CSV)", (out / "particles.csv").read_bytes(),
                         file_name="particles.csv", mime="text/csv")
d[2].download_button("Summary (JSON)", summary_path.read_bytes(), file_name="summary.json",
                     mime="application/json")

overlays = sorted((out / "overlays").glob("*.png")) if (out / "overlays").is_dir() else []
if overlays:
    st.subheader("Overlays")
    cols = st.columns(3)
    for i, p in enumerate(overlays[:9]):
        cols[i % 3].image(str(p), caption=p.stem, width="stretch")
