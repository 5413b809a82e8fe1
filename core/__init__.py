"""OwnGPT core: everything but the page scripts. Only core.ui imports streamlit."""
