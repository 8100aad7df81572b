"""The canvas: a Flask app that serves a digitjax checkpoint to a drawing page and a JSON API.

flask --app webui run                                      # the newest run under checkpoints/
gunicorn -w 2 "webui:create_app()"                         # production, same app
DIGITJAX_WORKDIR=checkpoints/seed flask --app webui run    # serve another run first
"""

from __future__ import annotations

import os

from flask import Flask


def create_app(config: dict | None = None) -> Flask:
    """The app, with every run under CHECKPOINTS_DIR restored and its predict function compiled."""
    from digitjax import data
    from webui import reports, serving, store, views

    app = Flask(__name__)
    app.config.from_mapping(
        CHECKPOINTS_DIR=os.environ.get("DIGITJAX_CHECKPOINTS", "checkpoints"),  # runs offered in the selector
        WORKDIR=os.environ.get("DIGITJAX_WORKDIR"),  # the run served by default; else the newest
        MAX_CONTENT_LENGTH=8 * 1024 * 1024,  # bytes of one request; more is a 413
        MAX_IMAGE_PIXELS=4096 * 4096,  # an upload larger than this is refused before decoding
        UNSURE_BELOW=0.7,  # a top probability under this is shown as unsure
        NEIGHBOURS=8,  # nearest training digits per answer; 0 skips embedding the training set at start-up
        # Start-up waits this long for a first embedding of the training set, then serves without
        # neighbours until it is done: under gunicorn's worker timeout (30 s by default).
        NEIGHBOURS_WAIT_S=float(os.environ.get("DIGITJAX_NEIGHBOURS_WAIT_S", 15)),
        DATA_DIR=os.environ.get("TFDS_DATA_DIR"),  # TFDS data dir: the runs' neighbours, test images, reports
        IDX_DIR=os.environ.get("DIGITJAX_IDX_DIR"),  # local IDX files to prepare them from (data.Paths)
        MISTAKES_SHOWN=96,  # test mistakes on a run page, the most confident first
    )
    app.config.update(config or {})
    c = app.config
    paths = data.Paths(c["DATA_DIR"], c["IDX_DIR"])
    datasets = serving.Datasets(paths)
    runs = serving.Runs.load(c["CHECKPOINTS_DIR"], c["WORKDIR"], datasets, c["NEIGHBOURS"], c["NEIGHBOURS_WAIT_S"])
    app.extensions["digitjax"] = runs
    app.extensions["digitjax.datasets"] = datasets
    app.extensions["digitjax.reports"] = reports.Reports(paths)
    if app.extensions["digitjax"].problem:
        app.logger.error(app.extensions["digitjax"].problem)
    app.register_blueprint(views.bp)
    store.init_app(app)
    return app
