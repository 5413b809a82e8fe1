"""OwnGPT with remember-me: `streamlit run app.py` serves streamlit_app.py plus two routes.

A Streamlit script cannot set a cookie, so after a reload a gated app would ask for the
password again. This file wraps the same script in `st.App` with the routes of
`core.routes`, through which a signed-in browser gets a signed, HttpOnly cookie (and loses it
on sign out). `streamlit run streamlit_app.py` still works, without remember-me; AppTest
drives streamlit_app.py directly.
"""

import os

import streamlit as st

from core import routes

os.environ[routes.SERVED_ENV] = "1"  # tells the script it may offer remember-me
app = st.App("streamlit_app.py",
             routes=routes.routes(lambda: st.get_option("server.cookieSecret")))
