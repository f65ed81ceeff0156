"""MOPO Studio: the Streamlit entry point (``streamlit run app/main.py``)."""
from pathlib import Path

import streamlit as st

st.set_page_config(page_title="MOPO Studio", layout="wide")
VIEWS = Path(__file__).parent / "views"
st.navigation([
    st.Page(VIEWS / "explore.py", title="Explore", default=True),
    st.Page(VIEWS / "sweep.py", title="Sweep"),
    st.Page(VIEWS / "compare.py", title="Compare"),
    st.Page(VIEWS / "train.py", title="Train"),
    st.Page(VIEWS / "learn.py", title="Learn"),
    st.Page(VIEWS / "models.py", title="Models"),
]).run()
