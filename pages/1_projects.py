"""Projects: create, open, rename, delete; load the bundled example micrographs."""

from __future__ import annotations

import streamlit as st

from pages import _ui

st.title("Projects")
st.caption("A project holds your micrographs, masks, models and reports. Pick the current one "
           "in the sidebar.")
store = _ui.get_store()

with st.form("create_project", clear_on_submit=True):
    name = st.text_input("New project name", placeholder="e.g. Pt on carbon, March")
    if st.form_submit_button("Create project", icon=":material/add:", type="primary"):
        project = _ui.guarded(store.create_project, name)
        if project is not None:
            st.session_state["project_id"] = project.id
            st.rerun()

projects = store.list_projects()
if projects:
    st.dataframe([{"name": p.name, "id": p.id, "owner": p.owner,
                   "images": len(p.images())} for p in projects],
                 hide_index=True, width="stretch")

project = _ui.current_project(store) if projects else None
if project is not None:
    st.subheader(f"Current project: {project.name}")
    c1, c2 = st.columns(2)
    with c1:
        st.markdown("**Example data**")
        st.caption("Copies the bundled example micrographs (nanoparticles and catalysts, MIT "
                   "licence) into this project so you can try every stage.")
        per_set = st.number_input("Images per example set (0 = all)", min_value=0,
                                  max_value=10, value=0, step=1,
                                  help="A smaller set makes a quick first run: 1 = one "
                                       "nanoparticle and one catalyst image.")
        if st.button("Load example data", icon=":material/science:"):
            from emcopilot.examples import load_examples

            added = _ui.guarded(load_examples, project, limit=int(per_set) or None)
            if added is not None:
                st.success(f"Added {len(added)} example images.")
    with c2:
        new_name = st.text_input("Rename to", value=project.name, key="rename_to")
        if st.button("Rename", icon=":material/edit:") and new_name != project.name:
            try:
                store.rename_project(project.id, new_name)
                st.rerun()
            except _ui.EMCopilotError as exc:
                st.error(str(exc))
        confirm = st.checkbox(f"Yes, delete '{project.name}' and all its files")
        if st.button("Delete project", icon=":material/delete:", disabled=not confirm):
            _ui.guarded(store.delete_project, project.id)
            st.session_state["project_id"] = None
            st.rerun()
