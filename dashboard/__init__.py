"""Streamlit glue for the CXR Dashboard: state, cached loaders, shared widgets and charts.

Pages in pages/ compose these with functions from cxrcore; no business logic lives here or there.
"""
