"""Voila dashboards. Each notebook in ``notebooks/dashboards/`` is a title and one call,
e.g. ``FinanceDashboard().show()``; the widgets live here and their callbacks call the
same pure functions the tests call."""

from workbench.dashboards.startup import defer_rfc3987_syntax

defer_rfc3987_syntax()  # 1.3-1.8 s of Altair's import, for a check charts never make
