"""The canvas: a Flask app that serves a digitjax checkpoint to a drawing page and a JSON API.

flask --app webui run                                      # the newest run under checkpoints/
gunicorn -w 2 "webui:create_app()"                         # production, same app
DIGITJAX_WORKDIR=checkpoints/seed flask --app webui run    # serve another run first (docs/canvas.md: settings)
"""

from __future__ import annotations

from flask import Flask


def create_app(config: dict | None = None, instance_path: str | None = None) -> Flask:
    """The app, with every run under CHECKPOINTS restored and its predict function compiled.

    Settings, each over the one before: the defaults below, the instance folder's `config.py`
    (`instance/` beside the package in a checkout), `DIGITJAX_<KEY>` environment variables (values
    parsed as JSON where they are), then `config`. docs/canvas.md lists them."""
    from digitjax import data
    from webui import limits, reports, serving, store, views

    app = Flask(__name__, instance_path=instance_path, instance_relative_config=True)
    app.config.from_mapping(
        CHECKPOINTS="checkpoints",  # runs offered in the selector
        WORKDIR=None,  # the run served by default; else the newest
        MAX_CONTENT_LENGTH=8 * 1024 * 1024,  # bytes of one request; more is a 413
        MAX_IMAGE_PIXELS=4096 * 4096,  # an upload larger than this is refused before decoding
        UNSURE_BELOW=0.7,  # a top probability under this is shown as unsure
        NEIGHBOURS=8,  # nearest training digits per answer; 0 skips embedding the training set at start-up
        # Start-up waits this long for a first embedding of the training set, then serves without
        # neighbours until it is done: under gunicorn's worker timeout (30 s by default).
        NEIGHBOURS_WAIT_S=15,
        DATA_DIR=None,  # TFDS data dir (else $TFDS_DATA_DIR): the runs' neighbours, test images, reports
        IDX_DIR=None,  # local IDX files to prepare them from (data.Paths)
        MISTAKES_SHOWN=96,  # test mistakes on a run page, the most confident first
        DRAWINGS_DB=None,  # the labelled drawings' SQLite file; None: drawings.sqlite in the instance folder
        MAX_DRAWING_BYTES=256 * 1024,  # of one drawing's PNG
        DRAWINGS_MAX_ROWS=100_000,  # the store's quota: drawings kept; more is a 507
        DRAWINGS_MAX_BYTES=1024**3,  # the store's quota: bytes of their PNGs; more is a 507
        DRAWINGS_RATE_LIMIT="30 per minute; 500 per day",  # drawings one client may store (webui/limits.py)
        PREDICT_RATE_LIMIT=None,  # answers one client may ask for; None: unlimited (it stores nothing)
        OPERATOR_TOKEN=None,  # a secret that deletes any drawing through the API; None: only their own tokens do
    )
    app.config.from_pyfile("config.py", silent=True)
    app.config.from_prefixed_env("DIGITJAX")
    app.config.update(config or {})
    c = app.config
    paths = data.Paths(c["DATA_DIR"], c["IDX_DIR"])
    datasets = serving.Datasets(paths)
    runs = serving.Runs.load(c["CHECKPOINTS"], c["WORKDIR"], datasets, c["NEIGHBOURS"], c["NEIGHBOURS_WAIT_S"])
    app.extensions["digitjax"] = runs
    app.extensions["digitjax.datasets"] = datasets
    app.extensions["digitjax.reports"] = reports.Reports(paths)
    if app.extensions["digitjax"].problem:
        app.logger.error(app.extensions["digitjax"].problem)
    limits.init_app(app)
    app.register_blueprint(views.bp)
    store.init_app(app)
    return app
