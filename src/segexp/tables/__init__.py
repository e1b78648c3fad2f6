"""Paper tables as first-class objects: specs (``experiments/<paper>/t<N>.yaml``), run profiles, the
``segexp-table`` runner (one Hydra multirun per table, resumable) and reports next to the paper's values.

Modules: :mod:`~segexp.tables.spec` (schema and loading), :mod:`~segexp.tables.plan` (overrides, config
hash, protocol guard), :mod:`~segexp.tables.runner` (launching), :mod:`~segexp.tables.measure` (model size
and speed), :mod:`~segexp.tables.store` (reading run folders), :mod:`~segexp.tables.report` (md/csv/png)
and :mod:`~segexp.cli.table`.
"""
