"""What both faces (the notebook and the API server) compute from the store.

Pure pandas/pyarrow: nothing here imports IPython, ipywidgets, Plotly or FastAPI, so the server
never pulls in the notebook stack and the notebook never pulls in the server.
"""
