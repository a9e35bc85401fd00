"""``lvlm serve``: an HTTP API and a browser page in front of packaged pipelines (``lvlm[serve]``).

- :mod:`lvlm.serve.worker`: one worker thread and one lazily built pipeline per config, behind a
  bounded admission count (no web framework needed).
- :mod:`lvlm.serve.app`: the FastAPI app (``create_app``): ``POST /api/segment``, ``GET /api/configs``,
  ``GET /healthz`` and the page at ``/``.
- :mod:`lvlm.serve.cli`: the ``lvlm serve`` command (uvicorn).

See docs/serve.md.
"""

#: what ``lvlm serve`` serves without ``--config``: the offline text-prompted default and LiteMedSAM with
#: boxes
DEFAULT_CONFIGS = ("embedded", "sam/litemedsam_box")
