"""Command-line tools around the library: `python -m digitjax.tools.bench`."""
