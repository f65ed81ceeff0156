"""MOPO Studio: the Streamlit entry point (``streamlit run app/main.py``)."""
from pathlib import Path

import streamlit as st

st.set_page_config(page_title="MOPO Studio", layout="wide")
HERE = Path(__file__).parent
st.navigation([st.Page(HERE / "pages" / "explore.py", title="Explore", default=True)]).run()
