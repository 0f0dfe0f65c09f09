"""Voila dashboards. Each notebook in ``notebooks/dashboards/`` is a title and one call,
e.g. ``FinanceDashboard().show()``; the widgets live here and their callbacks call the
same pure functions the tests call."""
