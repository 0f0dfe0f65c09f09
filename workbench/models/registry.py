"""The one MLflow adapter: tracking, registration, aliases, promotion and model cards.

Every MLflow call in the workbench lives here (and in the wrapper it logs as code). The
tracking store is ``settings.mlflow_tracking_uri`` (default: an embedded SQLite database under
``<data_dir>/mlflow/``) and artifacts go to ``<data_dir>/mlflow/artifacts/<experiment>``.

* :func:`log_training_run` records one trained model: parameters, metrics, the feature-set
  version, the calibration (reliability) plot, the SHAP summary, lift or Qini charts, the
  card data and the model itself (an MLflow ``pyfunc`` model wrapping our plain-file
  bundle, so ``mlflow.pyfunc.load_model("models:/churn_90d@champion")`` works too; the
  wrapper, :mod:`workbench.models.mlflow_pyfunc`, is logged as code, not pickled).
* :func:`register_run` registers it (``churn_30d``, ``churn_90d``, ``churn_180d``,
  ``recovery_<h>d``, ``retention_uplift``) and points the ``challenger`` alias at it.
* :func:`promote` moves ``champion`` to a version and records who did it and why. It is
  the executor of the approvals queue's ``model_promotion`` action:
  :func:`request_promotion` queues the request, an approver approves it in the queue,
  and the queue runs :func:`promote` (registered by :func:`register_approval_executors`,
  which importing this module does). ``model_rollback`` moves ``champion`` back. Either,
  once approved, can be rolled back from the queue within the policy's override window
  (:func:`_undo_promotion`), as long as ``champion`` is still where the approval put it.
* :func:`model_card` renders a version's card (markdown) from what was logged.
"""

from __future__ import annotations

import contextlib
import json
import logging
import os
import tempfile
import threading
import time
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import pandas as pd

from workbench.config import Settings, load_settings

log = logging.getLogger(__name__)

ALIASES: tuple[str, ...] = ("champion", "challenger")
EXPERIMENTS: dict[str, str] = {
    "churn": "churn",
    "recovery": "recovery",
    "uplift": "retention_uplift",
}
STATE_SCOPE = "model_registry"
_QUIET_ENV = {
    "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR": "false",
    "MLFLOW_DISABLE_TELEMETRY": "true",
    "DO_NOT_TRACK": "true",
    "MLFLOW_TRACKING_TELEMETRY_DISABLED": "true",
    "GIT_PYTHON_REFRESH": "quiet",
}
_MODEL_CACHE: dict[tuple[str, str, str], Any] = {}
_LOCK = threading.Lock()


class RegistryError(RuntimeError):
    """A model, version or alias does not exist, or the registry refused a change."""


# --------------------------------------------------------------------------- setup


def _quiet() -> None:
    for k, v in _QUIET_ENV.items():
        os.environ.setdefault(k, v)
    for name in ("mlflow", "alembic", "mlflow.store.db.utils", "mlflow.tracking"):
        logging.getLogger(name).setLevel(logging.WARNING)


def artifact_root(settings: Settings) -> Path:
    """``<data_dir>/mlflow/artifacts``."""
    return Path(settings.data_dir) / "mlflow" / "artifacts"


def client(settings: Settings | None = None):  # noqa: ANN201 - mlflow.MlflowClient
    """An ``MlflowClient`` on the settings' tracking store (folders created as needed)."""
    settings = settings or load_settings()
    _quiet()
    import mlflow

    uri = settings.mlflow_tracking_uri
    if uri.startswith("sqlite:///"):
        Path(uri[len("sqlite:///") :]).parent.mkdir(parents=True, exist_ok=True)
    artifact_root(settings).mkdir(parents=True, exist_ok=True)
    return mlflow.MlflowClient(tracking_uri=uri, registry_uri=uri)


def use_tracking(settings: Settings | None = None) -> str:
    """Point MLflow's process-wide tracking and registry URIs at the settings' store, so
    plain ``mlflow`` calls (``mlflow.pyfunc.load_model("models:/churn_90d@champion")``) in
    a notebook see the workbench's models. Returns the URI."""
    settings = settings or load_settings()
    client(settings)
    import mlflow

    mlflow.set_tracking_uri(settings.mlflow_tracking_uri)
    mlflow.set_registry_uri(settings.mlflow_tracking_uri)
    return settings.mlflow_tracking_uri


def _experiment_id(c, name: str, settings: Settings) -> str:  # noqa: ANN001
    exp = c.get_experiment_by_name(name)
    if exp is not None:
        return exp.experiment_id
    location = (artifact_root(settings) / name).resolve().as_uri()
    try:
        return c.create_experiment(name, artifact_location=location)
    except Exception:  # noqa: BLE001 - created concurrently by another process
        exp = c.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


# --------------------------------------------------------------------------- pyfunc wrapper


def _load_bundle(path: Path):  # noqa: ANN202 - BinaryModel | UpliftModel
    meta = json.loads((Path(path) / "model.json").read_text())
    if meta["kind"] == "uplift":
        from workbench.models.uplift import UpliftModel

        return UpliftModel.load(path)
    if meta["kind"] == "retry_schedule":
        from workbench.models.retry_schedule import RetryScheduleModel

        return RetryScheduleModel.load(path)
    from workbench.models.training import BinaryModel

    return BinaryModel.load(path)


# --------------------------------------------------------------------------- tracking


def _flat_metrics(run) -> dict[str, float]:  # noqa: ANN001
    import math

    if getattr(run, "task", "") == "uplift":
        items = {f"cv_{k}": v for k, v in run.metrics.items()}
    else:
        items = dict(run.metrics)
        ev = run.evaluation["by_cohort"]
        if len(ev) and "roc_auc" in ev.columns:
            for _, r in ev.iterrows():
                if pd.notna(r.get("roc_auc")):
                    key = f"cohort_{r['cohort']}_{r['value']}_roc_auc".replace(" ", "_").replace(
                        "/", "_"
                    )
                    items[key[:250]] = r["roc_auc"]
    return {k: float(v) for k, v in items.items() if v is not None and math.isfinite(float(v))}


def _params(run) -> dict[str, str]:  # noqa: ANN001
    model = run.model
    p = {f"lgb_{k}": v for k, v in model.params.items()}
    p |= {
        "feature_set_version": model.feature_set_version,
        "n_features": len(model.features),
        "target": run.target,
        "task": run.task,
        "horizon_days": getattr(run, "horizon_days", None) or model.horizon_days,
    }
    if getattr(run, "task", "") == "uplift":
        p |= {"learner": model.learner, "rounds": model.rounds, "folds": run.card.get("folds")}
    else:
        p |= {f"split_{k}": v for k, v in run.split.describe().items()}
        p |= {"calibration": model.calibrator.method, "best_iteration": model.best_iteration}
    return {k: str(v)[:6000] for k, v in p.items()}


def _write_artifacts(run, folder: Path, *, sample: int, seed: int) -> None:  # noqa: ANN001
    from workbench.models import charts, explain
    from workbench.models.training import nan_to_none

    folder.mkdir(parents=True, exist_ok=True)
    (folder / "card.json").write_text(json.dumps(nan_to_none(run.card), indent=1, default=str))
    (folder / "features.json").write_text(
        json.dumps(
            {"feature_set_version": run.model.feature_set_version, "features": run.model.features},
            indent=1,
        )
    )
    run.importance.to_csv(folder / "importance.csv", index=False)
    charts.save_chart(charts.importance_chart(run.importance), folder / "shap_importance")
    if run.task == "uplift":
        data = run.dataset[run.dataset[run.target].notna()]
        rows = data.sample(n=min(sample, len(data)), random_state=seed)
        contrib = run.model.contributions(rows)
        charts.save_chart(
            charts.shap_summary_chart(contrib, rows, title=f"SHAP summary: {run.name}"),
            folder / "shap_summary",
        )
        charts.save_chart(
            charts.qini_chart(run.qini_curves(), title=f"Qini curve: {run.name}"), folder / "qini"
        )
        run.scored.to_parquet(folder / "cross_fitted.parquet")
        return
    ev = run.evaluation
    ev["reliability"].to_csv(folder / "reliability.csv", index=False)
    ev["lift"].to_csv(folder / "lift.csv", index=False)
    ev["by_cohort"].to_csv(folder / "by_cohort.csv", index=False)
    ev["metrics"].to_csv(folder / "metrics.csv", index=False)
    charts.save_chart(
        charts.reliability_chart(ev["reliability"], title=f"Calibration: {run.name} (test)"),
        folder / "calibration",
    )
    charts.save_chart(
        charts.lift_chart(ev["lift"], title=f"Lift: {run.name} (test)"), folder / "lift"
    )
    test = run.test
    rows = test.sample(n=min(sample, len(test)), random_state=seed)
    # feature values live in the modelling frame, not in the slim test frame
    values = _feature_rows(run, rows)
    contrib = explain.contributions(run.model, values)
    charts.save_chart(
        charts.shap_summary_chart(contrib, values, title=f"SHAP summary: {run.name}"),
        folder / "shap_summary",
    )
    run.test.to_parquet(folder / "test_predictions.parquet")


def _feature_rows(run, rows: pd.DataFrame) -> pd.DataFrame:  # noqa: ANN001
    return run.test_features.loc[rows.index] if run.test_features is not None else rows


class _NoSignatureNotice(logging.Filter):
    """Drops MLflow's notice that a ``pd.DataFrame`` type hint gives no model signature."""

    def filter(self, record: logging.LogRecord) -> bool:
        return not record.getMessage().startswith("Failed to infer model signature: Type hint")


@contextlib.contextmanager
def _quiet_signature_inference():  # noqa: ANN202
    """The pyfunc wrapper takes whatever feature frame its bundle takes (the bundle checks
    its own inputs), so MLflow cannot infer a signature from its ``pd.DataFrame`` hint
    and says so on every save: in the notebooks that is noise, so it is dropped here."""
    logger = logging.getLogger("mlflow.pyfunc")
    notice = _NoSignatureNotice()
    logger.addFilter(notice)
    try:
        yield
    finally:
        logger.removeFilter(notice)


def log_training_run(
    run, *, settings: Settings | None = None, seed: int = 0, sample: int = 2000
) -> str:  # noqa: ANN001
    """Record a trained model in MLflow (one run) and set ``run.run_id``.

    Logs parameters (LightGBM's, the split, calibration, feature-set version), test
    metrics (overall, baseline, by cohort; cross-fitted Qini/AUUC for uplift), the
    calibration plot, lift or Qini chart, SHAP summary and importance, the card data and
    the model.

    Args:
        run: A :class:`~workbench.models.training.ModelRun` or
            :class:`~workbench.models.uplift.UpliftResult`.

    Returns:
        The MLflow run id.
    """
    settings = settings or load_settings()
    c = client(settings)
    import mlflow.pyfunc
    from mlflow.entities import Metric, Param, RunTag

    exp_id = _experiment_id(c, EXPERIMENTS[run.task], settings)
    tags = {
        "workbench.model_name": run.name,
        "workbench.task": run.task,
        "workbench.feature_set_version": run.model.feature_set_version,
        "mlflow.runName": f"{run.name} {time.strftime('%Y-%m-%d %H:%M', time.gmtime())}",
    }
    r = c.create_run(exp_id, tags=tags)
    run_id = r.info.run_id
    now = int(time.time() * 1000)
    try:
        c.log_batch(
            run_id,
            metrics=[Metric(k, v, now, 0) for k, v in _flat_metrics(run).items()],
            params=[Param(k, v) for k, v in _params(run).items()],
            tags=[RunTag("workbench.train_seconds", f"{run.train_seconds:.2f}")],
        )
        with tempfile.TemporaryDirectory(prefix="wb-mlflow-") as tmp:
            tmp = Path(tmp)
            _write_artifacts(run, tmp / "report", sample=sample, seed=seed)
            run.model.save(tmp / "bundle")
            with _quiet_signature_inference():
                mlflow.pyfunc.save_model(
                    str(tmp / "model"),
                    python_model=str(Path(__file__).with_name("mlflow_pyfunc.py")),
                    artifacts={"bundle": str(tmp / "bundle")},
                    pip_requirements=[
                        "lightgbm>=4", "pandas>=2", "numpy>=1.26", "scikit-learn>=1.4"
                    ],
                )  # fmt: skip
            c.log_artifacts(run_id, str(tmp / "report"), "report")
            c.log_artifacts(run_id, str(tmp / "model"), "model")
        c.set_terminated(run_id, "FINISHED")
    except BaseException:
        c.set_terminated(run_id, "FAILED")
        raise
    run.run_id = run_id
    log.info("logged %s to MLflow run %s", run.name, run_id)
    return run_id


def log_metrics(
    run_id: str,
    metrics: Mapping[str, float],
    *,
    settings: Settings | None = None,
    card: Mapping[str, Any] | None = None,
) -> None:
    """Add metrics (e.g. the oracle comparison) to a finished run; optionally rewrite its card data."""
    import math

    from mlflow.entities import Metric

    from workbench.models.training import nan_to_none

    c = client(settings)
    now = int(time.time() * 1000)
    ms = [
        Metric(k, float(v), now, 0)
        for k, v in metrics.items()
        if v is not None and math.isfinite(float(v))
    ]
    if ms:
        c.log_batch(run_id, metrics=ms)
    if card is not None:
        with tempfile.TemporaryDirectory(prefix="wb-mlflow-") as tmp:
            p = Path(tmp) / "card.json"
            p.write_text(json.dumps(nan_to_none(dict(card)), indent=1, default=str))
            c.log_artifact(run_id, str(p), "report")


# --------------------------------------------------------------------------- registration


def register_run(run, *, settings: Settings | None = None, alias: str = "challenger") -> str:  # noqa: ANN001
    """Register a logged run's model under ``run.name`` and point ``alias`` at it.

    Sets ``run.version``; the version carries tags ``feature_set_version``, ``task``,
    ``target``, ``run_id`` and the headline test metrics, and the rendered model card is
    logged to the run as ``report/model_card.md``.

    Returns:
        The new version (as text).

    Raises:
        RegistryError: ``alias`` is ``champion``: a new version becomes champion only by a
            promotion (:func:`request_promotion`, approved in the queue), which records who
            and why in the champion history that rollbacks rely on.
    """
    if alias == "champion":
        raise RegistryError(
            f"a new version of {run.name} cannot be registered as champion: register it as "
            "challenger, then request a promotion (`workbench models promote ...`), which an "
            "approver approves in the queue"
        )
    if run.run_id is None:
        log_training_run(run, settings=settings)
    settings = settings or load_settings()
    c = client(settings)
    from mlflow.exceptions import MlflowException

    name = run.name
    try:
        c.get_registered_model(name)
    except MlflowException:
        c.create_registered_model(name, description=run.card.get("intended_use", ""))
    source = f"{c.get_run(run.run_id).info.artifact_uri}/model"
    headline = {
        k: v
        for k, v in _flat_metrics(run).items()
        if k in ("test_roc_auc", "test_pr_auc", "test_brier", "test_ece", "cv_qini", "cv_auuc")
    }
    tags = {
        "feature_set_version": run.model.feature_set_version,
        "task": run.task,
        "target": run.target,
        "run_id": run.run_id,
        "registered_at": pd.Timestamp.now(tz="UTC").isoformat(),
        **{k: f"{v:.6g}" for k, v in headline.items()},
    }
    mv = c.create_model_version(
        name,
        source=source,
        run_id=run.run_id,
        tags=tags,
        description=f"{run.task} model, feature set {run.model.feature_set_version}",
    )
    version = str(mv.version)
    c.set_registered_model_alias(name, alias, version)
    run.version = version
    try:
        text = model_card(name, version, settings=settings)
        with tempfile.TemporaryDirectory(prefix="wb-mlflow-") as tmp:
            p = Path(tmp) / "model_card.md"
            p.write_text(text)
            c.log_artifact(run.run_id, str(p), "report")
    except Exception:  # noqa: BLE001 - the card can always be rendered later with model_card()
        log.exception("could not render the model card of %s v%s", name, version)
    log.info("registered %s version %s as %s", name, version, alias)
    return version


def _version(c, name: str, version_or_alias: str):  # noqa: ANN001, ANN202
    from mlflow.exceptions import MlflowException

    try:
        if str(version_or_alias).isdigit():
            return c.get_model_version(name, str(version_or_alias))
        return c.get_model_version_by_alias(name, str(version_or_alias))
    except MlflowException as exc:
        raise RegistryError(f"model {name!r} has no version or alias {version_or_alias!r}") from exc


def alias_version(name: str, alias: str, *, settings: Settings | None = None) -> str | None:
    """The version an alias points at, or None."""
    c = client(settings)
    try:
        return str(_version(c, name, alias).version)
    except RegistryError:
        return None


def list_models(*, settings: Settings | None = None) -> pd.DataFrame:
    """Every registered version: ``model``, ``version``, ``aliases``, ``feature_set_version``,
    ``task``, headline metrics, ``run_id``, ``created``, ``promoted_by``, ``promoted_at``."""
    c = client(settings)
    rows = []
    for rm in c.search_registered_models():
        aliases: dict[str, list[str]] = {}
        for a, v in (rm.aliases or {}).items():
            aliases.setdefault(str(v), []).append(a)
        for mv in c.search_model_versions(f"name = '{rm.name}'"):
            t = mv.tags or {}
            rows.append(
                {
                    "model": rm.name,
                    "version": str(mv.version),
                    "aliases": ",".join(sorted(aliases.get(str(mv.version), []))),
                    "feature_set_version": t.get("feature_set_version"),
                    "task": t.get("task"),
                    "test_roc_auc": _float(t.get("test_roc_auc")),
                    "test_ece": _float(t.get("test_ece")),
                    "cv_qini": _float(t.get("cv_qini")),
                    "run_id": mv.run_id,
                    "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC"),
                    "promoted_by": t.get("promoted_by"),
                    "promoted_at": t.get("promoted_at"),
                }
            )
    cols = [
        "model",
        "version",
        "aliases",
        "feature_set_version",
        "task",
        "test_roc_auc",
        "test_ece",
        "cv_qini",
        "run_id",
        "created",
        "promoted_by",
        "promoted_at",
    ]
    out = pd.DataFrame(rows, columns=cols)
    if len(out):
        out = (
            out.assign(_v=out["version"].astype(int))
            .sort_values(["model", "_v"])
            .drop(columns="_v")
        )
    return out.reset_index(drop=True)


def _float(v: Any) -> float | None:
    try:
        return None if v is None else float(v)
    except ValueError:
        return None


def load_model(name: str, version_or_alias: str = "champion", *, settings: Settings | None = None):  # noqa: ANN201
    """The model object of a registered version (cached per process).

    Returns:
        ``(model, info)``: a :class:`~workbench.models.training.BinaryModel` or
        :class:`~workbench.models.uplift.UpliftModel`, and a dict with ``name``,
        ``version``, ``run_id``, ``feature_set_version``.

    Raises:
        RegistryError: No such model, version or alias.
    """
    settings = settings or load_settings()
    c = client(settings)
    mv = _version(c, name, version_or_alias)
    key = (settings.mlflow_tracking_uri, name, str(mv.version))
    with _LOCK:
        if key not in _MODEL_CACHE:
            import mlflow.artifacts

            with tempfile.TemporaryDirectory(prefix="wb-model-") as tmp:
                local = mlflow.artifacts.download_artifacts(
                    artifact_uri=f"{mv.source}/artifacts/bundle",
                    dst_path=tmp,
                    tracking_uri=settings.mlflow_tracking_uri,
                )
                _MODEL_CACHE[key] = _load_bundle(Path(local))
    info = {
        "name": name,
        "version": str(mv.version),
        "run_id": mv.run_id,
        "feature_set_version": (mv.tags or {}).get("feature_set_version"),
    }
    return _MODEL_CACHE[key], info


# --------------------------------------------------------------------------- promotion


def promote(
    model: str,
    version: str | int,
    *,
    who: str,
    reason: str = "",
    via: str = "direct",
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Point ``champion`` at ``version`` and record who promoted it, when, why and how.

    The version gets tags ``promoted_by``, ``promoted_at``, ``promotion_reason``,
    ``promoted_via`` (``direct`` or ``approvals:<item id>``) and ``previous_champion``; the
    registered model keeps the history in its ``champion_history`` tag. A ``challenger``
    alias on the same version is removed (it is the champion now).

    Returns:
        ``model``, ``version``, ``previous_champion``, ``who``, ``at``, ``via`` and
        ``challenger_removed`` (whether the version was ``challenger`` until now).
    """
    if not str(who).strip():
        raise ValueError("promote needs who: the person (or approval) promoting the model")
    c = client(settings)
    mv = _version(c, model, str(version))
    version = str(mv.version)
    previous = None
    with contextlib.suppress(RegistryError):
        previous = str(_version(c, model, "champion").version)
    at = pd.Timestamp.now(tz="UTC").isoformat()
    c.set_registered_model_alias(model, "champion", version)
    challenger_removed = False
    with contextlib.suppress(RegistryError):
        if str(_version(c, model, "challenger").version) == version:
            c.delete_registered_model_alias(model, "challenger")
            challenger_removed = True
    for k, v in {
        "promoted_by": who,
        "promoted_at": at,
        "promotion_reason": reason,
        "promoted_via": via,
        "previous_champion": previous or "",
    }.items():
        c.set_model_version_tag(model, version, k, str(v))
    # written last: the entry says the alias moved (and what else changed), so an
    # interrupted execution from the approvals queue can be told apart (_recover_promotion)
    _append_history(c, model, version=version, previous=previous, who=who, at=at, via=via,
                    reason=reason, challenger_removed=challenger_removed)  # fmt: skip
    log.info("%s: champion %s -> %s by %s (%s)", model, previous, version, who, via)
    return _champion_change(model, version, previous, who=who, at=at, via=via,
                            challenger_removed=challenger_removed)  # fmt: skip


def _champion_change(
    model: str, version: str | None, previous: str | None, *, who: str, at: str, via: str,
    **extra: Any,
) -> dict[str, Any]:  # fmt: skip
    """What a champion change records: ``model``, ``version`` (champion now; ``None``:
    none), ``previous_champion``, ``who``, ``at``, ``via``, then ``extra``."""
    return {"model": model, "version": version, "previous_champion": previous, "who": who,
            "at": at, "via": via, **extra}  # fmt: skip


def _history(c, model: str) -> list[dict[str, Any]]:  # noqa: ANN001
    rm = c.get_registered_model(model)
    raw = (rm.tags or {}).get("champion_history")
    return json.loads(raw) if raw else []


def _append_history(c, model: str, *, version: str | None, previous: str | None, who: str,  # noqa: ANN001
                    at: str, via: str, reason: str, **extra: Any) -> None:  # fmt: skip
    """Add a champion change to ``model``'s ``champion_history`` tag (the newest 50 kept);
    ``version`` ``None``: the ``champion`` alias was removed. ``extra`` is kept in the entry
    (:func:`promote`: ``challenger_removed``) but not shown by :func:`champion_history`."""
    history = _history(c, model)
    history.append(
        {"version": version, "previous": previous, "who": who, "at": at, "via": via,
         "reason": reason, **extra}
    )  # fmt: skip
    c.set_registered_model_tag(model, "champion_history", json.dumps(history[-50:]))


def champion_history(model: str, *, settings: Settings | None = None) -> pd.DataFrame:
    """Every champion change: ``version``, ``previous``, ``who``, ``at``, ``via``, ``reason``.

    ``version`` is ``None`` where the ``champion`` alias was removed (the undo, from the
    approvals queue, of the promotion that made a model's first champion); ``via`` is
    ``approvals:<item id>:rollback`` for such undos (:func:`_undo_promotion`)."""
    return pd.DataFrame(
        _history(client(settings), model),
        columns=["version", "previous", "who", "at", "via", "reason"],
    )


def rollback_champion(
    model: str,
    *,
    who: str,
    reason: str,
    to_version: str | int | None = None,
    via: str = "direct",
    settings: Settings | None = None,
) -> dict[str, Any]:
    """Move ``champion`` back to ``to_version`` (default: :func:`rollback_target`).

    Raises:
        RegistryError: No earlier champion to return to, or ``to_version`` is the champion
            or never was one.
    """
    to_version = _rollback_version(model, to_version, settings)
    return promote(
        model, to_version, who=who, reason=f"rollback: {reason}", via=via, settings=settings
    )


def rollback_target(model: str, *, settings: Settings | None = None) -> str | None:
    """The newest earlier champion that was never rolled back from (None if there is none).

    Unlike "the champion before the current one", this never flips back to a version that
    an earlier rollback moved away from (after an automatic rollback from v3 to v2, the
    champion "before" v2 is v3, the version just found wanting). A queued rollback that was
    itself undone from the approvals queue does not count: the version it moved away from
    was not found wanting after all.
    """
    history = champion_history(model, settings=settings)
    current = alias_version(model, "champion", settings=settings)
    if history.empty or current is None:
        return None
    via = history["via"].fillna("").astype(str)
    undone = {v.removesuffix(":rollback") for v in via if v.endswith(":rollback")}
    rolled = history["reason"].fillna("").str.startswith("rollback:") & ~via.isin(undone)
    bad = set(history.loc[rolled, "previous"].dropna().astype(str)) | {str(current)}
    for version in reversed(history["version"].dropna().astype(str).tolist()):
        if version not in bad:
            return version
    return None


def _rollback_version(model: str, to_version: str | int | None, settings: Settings | None) -> str:
    """The version a rollback goes to: ``to_version`` checked, else :func:`rollback_target`.

    Raises:
        RegistryError: No earlier champion, or ``to_version`` is the champion or never was one.
    """
    current = alias_version(model, "champion", settings=settings)
    if current is None:
        raise RegistryError(f"{model} has no champion to roll back")
    if to_version is None:
        target = rollback_target(model, settings=settings)
        if target is None:
            raise RegistryError(f"{model}: no earlier champion to roll back to")
        return target
    target = str(to_version)
    if target == str(current):
        raise RegistryError(f"{model}: version {target} is already the champion")
    former = set(champion_history(model, settings=settings)["version"].dropna().astype(str))
    if target not in former:
        raise RegistryError(
            f"{model}: version {target} was never champion; a rollback returns to an earlier "
            f"champion (earlier: {', '.join(sorted(former - {str(current)})) or 'none'}); "
            "to make a new version champion, request a promotion"
        )
    return target


def _queue_champion_change(
    settings: Settings,
    action_type: str,
    model: str,
    state: dict[str, Any],
    payload: dict,
    *,
    who,
    policy,
    now: pd.Timestamp | None,  # noqa: ANN001
):  # noqa: ANN202 - workbench.approvals.Outcome
    """Queue a change of ``model``'s champion alias (promotion or rollback) for an approver.

    The payload gets the override window of the policy in force
    (``automation.override_window_hours``), as a policy change's does: once approved, the
    change can be rolled back from the approvals queue (and its dashboard) within it
    (:func:`_undo_promotion`); later, request a rollback or a promotion.
    """
    from workbench import approvals
    from workbench.policy import load_policy

    policy = policy or load_policy(settings=settings)
    window = {"override_window_hours": policy.automation.override_window_hours}
    return approvals.request_action(
        settings,
        who=who,
        action_type=action_type,
        subject_id=f"{model}@champion",
        state=state,
        policy=policy,
        payload={**payload, **window},
        state_scope=STATE_SCOPE,
        risk="medium",
        now=now,
    )


def promotion_state(
    model: str, version: str | int, *, settings: Settings | None = None
) -> dict[str, Any]:
    """The registry state a promotion request is made (and approved) in: the candidate
    version and the current champion. If either changes before approval, the queued
    request is stale."""
    c = client(settings)
    mv = _version(c, model, str(version))
    champion = None
    with contextlib.suppress(RegistryError):
        champion = str(_version(c, model, "champion").version)
    return {
        "model": model,
        "version": str(mv.version),
        "champion": champion,
        "feature_set_version": (mv.tags or {}).get("feature_set_version"),
    }


def request_promotion(
    model: str,
    version: str | int,
    *,
    who,  # noqa: ANN001 - workbench.approvals.Identity
    reason: str = "",
    settings: Settings | None = None,
    policy=None,  # noqa: ANN001 - workbench.policy.Policy
    now: pd.Timestamp | None = None,
):  # noqa: ANN201 - workbench.approvals.Outcome
    """Queue "promote ``model`` ``version`` to champion" in the approvals queue.

    An approver other than the requester approves it there; approval runs
    :func:`promote` with the approver as ``who``. Within the policy's override window after
    that, an approver can roll it back from the queue (:func:`_undo_promotion`).

    Returns:
        The queue's ``Outcome`` (``queued``, ``duplicate``, ``denied``...).
    """

    settings = settings or load_settings()
    state = promotion_state(model, version, settings=settings)
    mv = _version(client(settings), model, str(version))
    tags = mv.tags or {}
    payload = {
        "reason": reason or f"promote {model} v{state['version']} to champion",
        "model": model,
        "version": state["version"],
        "previous_champion": state["champion"],
        "tracking_uri": settings.mlflow_tracking_uri,
        "metrics": {k: v for k, v in tags.items() if k.startswith(("test_", "cv_"))},
        "feature_set_version": state["feature_set_version"],
    }
    return _queue_champion_change(
        settings, "model_promotion", model, state, payload, who=who, policy=policy, now=now
    )


def request_rollback(
    model: str,
    *,
    who,  # noqa: ANN001
    reason: str,
    to_version: str | int | None = None,
    settings: Settings | None = None,
    policy=None,  # noqa: ANN001
    now: pd.Timestamp | None = None,
):  # noqa: ANN201
    """Queue "roll ``model``'s champion back" (``model_rollback``) in the approvals queue.

    Like a promotion, once approved it can be rolled back from the queue within the
    policy's override window (:func:`_undo_promotion`)."""

    settings = settings or load_settings()
    current = alias_version(model, "champion", settings=settings)
    to_version = _rollback_version(model, to_version, settings)
    state = promotion_state(model, to_version, settings=settings)
    payload = {
        "reason": reason,
        "model": model,
        "version": str(to_version),
        "previous_champion": current,
        "tracking_uri": settings.mlflow_tracking_uri,
    }
    return _queue_champion_change(
        settings, "model_rollback", model, state, payload, who=who, policy=policy, now=now
    )


def _settings_for(uri: str) -> Settings:
    base = load_settings()
    if base.mlflow_tracking_uri == uri:
        return base
    return load_settings(
        overrides={"mlflow_tracking_uri": uri, "data_dir": str(_data_dir_of(uri, base))}
    )


def _data_dir_of(uri: str, base: Settings) -> Path:
    if uri.startswith("sqlite:///"):
        db = Path(uri[len("sqlite:///") :])
        if db.parent.name == "mlflow":
            return db.parent.parent
    return Path(base.data_dir)


def current_state(item) -> dict[str, Any] | None:  # noqa: ANN001 - approvals.ActionItem
    """The approvals queue's state provider for model actions: the registry state now."""
    p = item.payload
    try:
        return promotion_state(p["model"], p["version"], settings=_settings_for(p["tracking_uri"]))
    except (RegistryError, KeyError):
        return None


def _execute_promotion(item, ctx, *, prefix: str = "") -> dict[str, Any]:  # noqa: ANN001
    p = item.payload
    return promote(
        p["model"],
        p["version"],
        who=ctx.actor,
        reason=f"{prefix}{p.get('reason', '')}",
        via=f"approvals:{item.item_id}",
        settings=_settings_for(p["tracking_uri"]),
    )


def _execute_rollback(item, ctx) -> dict[str, Any]:  # noqa: ANN001
    """A queued ``model_rollback``: recorded as a rollback (``rollback:`` reason), so later
    automatic rollbacks never return to the version it moved away from."""
    return _execute_promotion(item, ctx, prefix="rollback: ")


def _executed(item, ctx) -> tuple[str, str | None, dict[str, Any]]:  # noqa: ANN001
    """``(version, before, result)`` of an executed champion change: the version it made
    champion, the one that was champion before it (``None``: there was none) and the result
    its execution recorded (:func:`promote`'s). The result says what the execution found
    and did; the payload (what the request saw, which the approval checked) stands in for an
    execution recorded without it."""
    from workbench import approvals

    p = item.payload
    runs = approvals.executions_frame(ctx.store, item_id=item.item_id)
    done = runs[runs["kind"] == "execute"]
    result = json.loads(done["result"].iloc[-1]) if len(done) else {}
    version = str(result.get("version") or p["version"])
    before = result.get("previous_champion", p.get("previous_champion"))
    return version, None if before is None else str(before), result


def _label(version: str | None) -> str:
    return "none" if version is None else f"v{version}"


def _undo_promotion(item, ctx) -> dict[str, Any]:  # noqa: ANN001
    """Roll back an executed ``model_promotion`` or ``model_rollback`` from the approvals
    queue (within its override window, :func:`_queue_champion_change`).

    ``champion`` goes back to the version that was champion before the execution (as its
    result recorded it); if there was none (the promotion made the model's first champion),
    the alias is removed: the model has no champion again, as before, and scoring by
    ``champion`` fails as it did then (real-time dunning falls back to the challenger). A
    ``challenger`` alias the execution took from the version it promoted is put back, unless
    another version is challenger now.

    In the champion history (``via`` ``approvals:<item id>:rollback``, ``who`` the person
    rolling back, with their reason), undoing a promotion is a rollback (``rollback:``
    reason: :func:`rollback_target` never returns to the promoted version); undoing a
    ``model_rollback`` is not (``undo of rollback:``), and the rollback it undoes no longer
    counts as one. The entry is written last, so it says that the alias moved
    (:func:`_recover_undo`).

    Returns:
        ``model``, ``version`` (the champion now, ``None`` for none), ``previous_champion``
        (the version rolled back from), ``who``, ``at``, ``via`` and ``challenger`` (the
        version the alias points at now, or ``None``).

    Raises:
        approvals.RollbackRefused: ``champion`` no longer points at the version the
            execution made champion (someone changed it since: undoing would discard that
            change), or the version to return to is no longer in the registry. Nothing was
            changed then.
    """
    from workbench import approvals

    p = item.payload
    model = p["model"]
    version, before, result = _executed(item, ctx)
    c = client(_settings_for(p["tracking_uri"]))
    champion = _alias(c, model, "champion")
    if champion != version:
        if champion == before:
            again = ": it is already as it was before"
        elif before is not None:
            again = (
                f": to make v{before} champion again, request a rollback (`workbench models "
                f"rollback {model} --to {before} --reason ...`)"
            )
        else:
            again = ""
        raise approvals.RollbackRefused(
            f"{model}'s champion is now {_label(champion)}, not v{version} as {item.item_id} "
            f"left it (someone changed it since, and undoing this would discard that); nothing "
            f"was changed{again}"
        )
    if before is not None:
        try:
            _version(c, model, before)
        except RegistryError:
            raise approvals.RollbackRefused(
                f"{model} v{before}, the champion before {item.item_id}, is no longer in the "
                "registry; nothing was changed"
            ) from None
    if result.get("challenger_removed") and _alias(c, model, "challenger") is None:
        c.set_registered_model_alias(model, "challenger", version)
    via = f"approvals:{item.item_id}:rollback"
    undoing = "undo of rollback" if item.action_type == "model_rollback" else "rollback"
    reason = f"{undoing}: {ctx.reason or 'no reason given'} (approvals item {item.item_id})"
    if before is not None:
        moved = promote(model, before, who=ctx.actor, reason=reason, via=via,
                        settings=_settings_for(p["tracking_uri"]))  # fmt: skip
        at = moved["at"]
    else:
        at = pd.Timestamp.now(tz="UTC").isoformat()
        c.delete_registered_model_alias(model, "champion")
        _append_history(c, model, version=None, previous=version, who=ctx.actor, at=at, via=via,
                        reason=reason)  # fmt: skip
        log.info("%s: champion %s removed by %s (%s)", model, version, ctx.actor, via)
    return _undone(c, model, version=before, previous=version, who=ctx.actor, at=at, via=via)


def _alias(c, model: str, alias: str) -> str | None:  # noqa: ANN001
    """The version ``alias`` points at, or ``None``."""
    try:
        return str(_version(c, model, alias).version)
    except RegistryError:
        return None


def _undone(c, model: str, *, version: str | None, previous: str, who: str, at: str, via: str):  # noqa: ANN001, ANN202
    """The result an undone champion change records (:func:`_undo_promotion`): ``version``
    is the champion now (``None``: none), ``previous`` the version rolled back from."""
    return _champion_change(model, version, previous, who=who, at=at, via=via,
                            challenger=_alias(c, model, "challenger"))  # fmt: skip


def _logged_change(item, via: str):  # noqa: ANN001, ANN202
    """``(model, client, entry)``: the queued champion change's model, a registry client and
    the newest champion history entry written ``via`` (``None``: there is none)."""
    p = item.payload
    c = client(_settings_for(p["tracking_uri"]))
    mine = [e for e in _history(c, p["model"]) if e.get("via") == via]
    return p["model"], c, (mine[-1] if mine else None)


def _logged_note(model: str, e: dict[str, Any], what: str) -> str:
    return (
        f"{model}'s champion history has this {what}: {_label(e['previous'])} -> "
        f"{_label(e['version'])} by {e['who']} at {e['at']}"
    )


def _recover_undo(item, ctx):  # noqa: ANN001, ANN202 - approvals.Recovered
    """Whether a rollback from the queue (:func:`_undo_promotion`) interrupted before its
    outcome was recorded moved ``champion`` back (:func:`approvals.recover_interrupted`).

    The champion history tells: the undo writes its entry (``via``
    ``approvals:<item id>:rollback``, a via no one else writes) only after moving the
    alias, so the entry means it took effect (recorded as rolled back, with the result
    :func:`_undo_promotion` returns, ``challenger`` as it is now). Without the entry,
    ``champion`` still on the version the execution made champion means the alias did not
    move (the change stays executed); anything else (the alias moved but the entry is
    missing, or someone changed the champion since) the hook cannot tell, and says what
    it found.
    """
    from workbench import approvals

    via = f"approvals:{item.item_id}:rollback"
    model, c, e = _logged_change(item, via)
    if e is not None:
        return approvals.Recovered(
            True,
            _logged_note(model, e, "rollback"),
            _undone(
                c,
                model,
                version=e["version"],
                previous=e["previous"],
                who=e["who"],
                at=e["at"],
                via=via,
            ),
        )
    version, _, _ = _executed(item, ctx)
    champion = _alias(c, model, "champion")
    if champion == version:
        return approvals.Recovered(
            False,
            f"{model}'s champion is still v{version}, and its champion history has no entry "
            "of this rollback",
        )
    return approvals.Recovered(
        None,
        f"{model}'s champion is {_label(champion)}, not v{version} as {item.item_id} left it, "
        "and its champion history has no entry of this rollback",
    )


def _recover_promotion(item, ctx):  # noqa: ANN001, ANN202 - approvals.Recovered
    """Whether an approved ``model_promotion`` or ``model_rollback`` interrupted before its
    outcome was recorded moved ``champion`` (:func:`approvals.recover_interrupted`).

    :func:`promote` writes the champion history entry (``via`` ``approvals:<item id>``, a via
    no one else writes) after moving the alias and its tags, so the entry means it took
    effect: recorded as executed with the result :func:`promote` returns, rebuilt from the
    entry (``challenger_removed`` as the entry recorded it; entries written before it was
    recorded say no, so a rollback then leaves ``challenger`` alone). Without the entry,
    ``champion`` still on the version the request found champion means the alias did not
    move (the item fails, nothing changed; it can be requested again). Anything else (the
    alias moved but the entry is missing, or someone changed the champion since) the hook
    cannot tell, and says what it found.
    """
    from workbench import approvals

    p = item.payload
    via = f"approvals:{item.item_id}"
    model, c, e = _logged_change(item, via)
    if e is not None:
        return approvals.Recovered(
            True,
            _logged_note(model, e, "change"),
            _champion_change(model, e["version"], e["previous"], who=e["who"], at=e["at"],
                             via=via, challenger_removed=bool(e.get("challenger_removed"))),
        )  # fmt: skip
    champion = _alias(c, model, "champion")
    before = p.get("previous_champion")
    before = None if before is None else str(before)
    if champion == before and champion != str(p["version"]):
        return approvals.Recovered(
            False,
            f"{model}'s champion is still {_label(champion)}, as the request found it, and its "
            "champion history has no entry of this change",
        )
    return approvals.Recovered(
        None,
        f"{model}'s champion is {_label(champion)} (the request found {_label(before)} and "
        f"asked for v{p['version']}), and its champion history has no entry of this change",
    )


INTERRUPTED_HINT = (
    "see which version is champion (`workbench models list`) and the model's champion "
    "history (registry.champion_history; `via` names the approvals item, with `:rollback` for "
    "a rollback from the queue) before approving or rolling back again"
)


def register_approval_executors() -> None:
    """Make the approvals queue run :func:`promote` for ``model_promotion`` and
    ``model_rollback`` items (with :func:`_recover_promotion` for an interrupted execution),
    roll them back (:func:`_undo_promotion`, with :func:`_recover_undo` for an interrupted
    rollback) and check them against the registry
    now (:func:`current_state`) (idempotent; done when this module is imported, which the
    queue does on first use)."""
    from workbench import approvals

    for action_type, execute in (
        ("model_promotion", _execute_promotion),
        ("model_rollback", _execute_rollback),
    ):
        approvals.register_executor(action_type, execute, rollback=_undo_promotion,
                                    recover=_recover_promotion, recover_rollback=_recover_undo,
                                    interrupted_hint=INTERRUPTED_HINT)  # fmt: skip
    approvals.register_state_provider(STATE_SCOPE, current_state)


# --------------------------------------------------------------------------- model cards


def card_data(
    model: str, version: str | int, *, settings: Settings | None = None
) -> dict[str, Any]:
    """The card data logged with a version's run plus its registry facts (aliases, tags)."""
    c = client(settings)
    mv = _version(c, model, str(version))
    import mlflow.artifacts

    with tempfile.TemporaryDirectory(prefix="wb-card-") as tmp:
        try:
            path = mlflow.artifacts.download_artifacts(
                run_id=mv.run_id,
                artifact_path="report/card.json",
                dst_path=tmp,
                tracking_uri=c.tracking_uri,
            )
            data = json.loads(Path(path).read_text())
        except Exception as exc:  # noqa: BLE001
            raise RegistryError(f"{model} v{mv.version}: no card data in run {mv.run_id}") from exc
    rm = c.get_registered_model(model)
    aliases = sorted(a for a, v in (rm.aliases or {}).items() if str(v) == str(mv.version))
    run = c.get_run(mv.run_id)
    data["registry"] = {
        "version": str(mv.version),
        "aliases": aliases,
        "run_id": mv.run_id,
        "created": pd.Timestamp(mv.creation_timestamp, unit="ms", tz="UTC").isoformat(),
        "tags": dict(mv.tags or {}),
        "run_metrics": dict(run.data.metrics),
    }
    return data


def model_card(
    model: str, version: str | int = "champion", *, settings: Settings | None = None
) -> str:
    """The model card of a registered version, as markdown (see :mod:`workbench.models.cards`)."""
    from workbench.models.cards import render_card

    return render_card(card_data(model, version, settings=settings))


register_approval_executors()
