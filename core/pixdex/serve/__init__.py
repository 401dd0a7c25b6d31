"""`pixdex serve`: a warm HTTP server over an index or a run folder (extra ``pixdex[serve]``).

:mod:`pixdex.serve.service` holds the loaded model and index and answers queries (plain
Python, no web framework); :mod:`pixdex.serve.app` is the Starlette application around it;
``static/`` is the web page.
"""
