"""Deliberately empty: the benchmarks' bare gunicorn configuration (``support.GunicornConfig``,
``deployed=False``). gunicorn reads ./gunicorn.conf.py, the deployment's, whenever ``--config``
is unset or empty, so a run with nothing but its command line needs a file of its own."""
