"""The ``nbkit`` command line, the quickstart and the notebook runner."""
