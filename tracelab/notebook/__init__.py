"""The notebook face: `%load_ext tracelab` magics, Plotly timelines, payload panels, diffs.

`tracelab.api` holds the objects users get (`Executions`, `Execution`); this package holds what
they draw with: `magics` (IPython), `timeline` (ipywidgets + Plotly), `repr` (escaped HTML),
and the pure-pandas `diff` and `latency` that the server reuses. Importing the package imports
none of them.
"""
