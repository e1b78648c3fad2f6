"""The files a training or evaluation run writes into its folder as its record: ``metrics.json`` on success,
``error.json`` on failure (with the traceback). The table runner reads them back (:mod:`segexp.tables.store`)."""

METRICS_FILE = "metrics.json"
ERROR_FILE = "error.json"
