"""A simulated subscription company with known ground truth.

``simulate()`` writes a SaaS company's Stripe webhook events (JSON Lines), the CSV
exports a business also has (usage, support tickets, CRM signals, FX rates) and,
beside them, the ground truth that produced them (churn hazards, payment recovery
probabilities, the retention-offer experiment, injected anomalies, the regime
change). See :mod:`workbench.simulator.output` for the file layout and
:mod:`workbench.simulator.truth` for the truth tables.

Modules: ``catalog`` (price book), ``behaviour`` (the latent model: the truth),
``lifecycle`` (one account's life), ``stripe_objects`` (Stripe shapes),
``billing`` (exact money arithmetic), ``signals`` (usage, tickets, CRM),
``timeline`` (calendar), ``ids`` (Stripe-style ids), ``faults`` (ingestion faults),
``output`` and ``truth`` (files), ``simulation`` (``simulate``), ``data_folder``
(``simulate_data_folder``: the pipeline's data folder, never two companies in one warehouse).
"""

from workbench.simulator.data_folder import DataFolderConflict, simulate_data_folder
from workbench.simulator.simulation import SimulationSummary, simulate

__all__ = ["DataFolderConflict", "SimulationSummary", "simulate", "simulate_data_folder"]
