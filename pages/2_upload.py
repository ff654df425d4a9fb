"""Upload: micrographs into the project; pixel size and polarity per image."""

from __future__ import annotations

import streamlit as st

from pages import _ui

SUFFIXES = ["png", "jpg", "jpeg", "tif", "tiff", "dm3", "dm4", "emd", "hspy"]

st.title("Upload micrographs")
store = _ui.get_store()
project = _ui.current_project(store)
if project is None:
    st.stop()

files = st.file_uploader("Micrographs (PNG, JPEG, TIFF, DM3/DM4, EMD, HSPY)", type=SUFFIXES,
                         accept_multiple_files=True, key="uploader")
if files and st.button("Add to project", type="primary", icon=":material/upload:"):
    added = 0
    for f in files:
        try:
            project.add_image(f.name, f.getvalue())
            added += 1
        except _ui.EMCopilotError as exc:
            msg = str(exc) if f.name in str(exc) else f"{f.name}: {exc}"
            st.error(msg.replace("\\", "\\\\"))  # markdown would eat a backslash
    if added:
        st.success(f"Added {added} image(s).")

images = project.images()
if not images:
    st.info("No images yet: upload micrographs above, or load the example data on the "
            "Projects page.")
    st.stop()

st.subheader(f"{len(images)} images")
st.caption("Pixel size comes from the file's metadata when it has one; set it where missing so "
           "sizes are reported in nm. Polarity: bright = particles brighter than the background "
           "(HAADF), dark = bright-field.")
with st.form("all_pixel"):
    c1, c2 = st.columns([3, 1])
    nm_all = c1.number_input("Pixel size for all images (nm/px)", min_value=0.0, value=0.0,
                             step=0.01, format="%.4f")
    if c2.form_submit_button("Apply to all") and nm_all > 0:
        _ui.guarded(project.set_pixel_size, None, nm_all)
        st.rerun()

cols = st.columns(4)
for i, rec in enumerate(images):
    stem = rec["stem"]
    with cols[i % 4].container(border=True):
        thumb = _ui.thumbnail(rec)
        if thumb is not None:
            st.image(thumb, caption=stem, width="stretch")
        nm = rec.get("pixel_size_nm")
        if nm and rec.get("pixel_size_source") == "metadata":
            st.caption(f"{nm:.4g} nm/px from the file's metadata")
        new_nm = st.number_input("nm/px", min_value=0.0, value=float(nm or 0.0), step=0.01,
                                 format="%.4f", key=f"nm_{stem}",
                                 help="0 = unknown (sizes in px)")
        pol_opts = ["auto", "bright", "dark"]
        pol = rec.get("polarity") or "auto"
        new_pol = st.selectbox("Polarity", pol_opts, index=pol_opts.index(pol)
                               if pol in pol_opts else 0, key=f"pol_{stem}")
        detected = _ui.detected_polarity(rec) if new_pol == "auto" else None
        if detected is not None:
            what = f"auto: {detected['polarity']} particles"
            if detected["unsure"]:
                st.warning(f"{what}, unsure: check the image and set it", icon=":material/help:")
            else:
                st.caption(what)
        bar = _ui.data_bar_row(rec)
        if bar is not None:
            st.caption(f"Data bar from row {bar} (of {rec.get('height') or '?'}): left out of "
                       "masks and segmentation")
        if new_nm != float(nm or 0.0):
            _ui.guarded(project.set_pixel_size, stem, new_nm if new_nm > 0 else None)
        if new_pol != pol:
            _ui.guarded(project.set_polarity, stem, new_pol)
        if st.button("Remove", key=f"rm_{stem}", icon=":material/delete:"):
            _ui.guarded(project.remove_image, stem)
            st.rerun()
