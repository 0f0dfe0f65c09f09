"""What the Spark test modules share: skipping where Spark cannot run, and sessions for small
jobs."""

from __future__ import annotations

import pytest

#: Spark's settings for queries of many tiny stages (features, loads, derived tables):
#: adaptive execution (Spark's default; the shared session turns it off), one shuffle
#: partition and interpreted expressions (no Janino compiles) make them about twice as fast,
#: with the same results.
SMALL_JOBS = {
    "spark.sql.adaptive.enabled": "true",
    "spark.sql.shuffle.partitions": "1",
    "spark.sql.codegen.factoryMode": "NO_CODEGEN",
}


def require_spark() -> None:
    """Skip the calling module (at import) where pyspark, sqlglot or Java 17 is missing."""
    pytest.importorskip("pyspark", reason="Spark tests need pyspark: pip install -e '.[spark]'")
    pytest.importorskip("sqlglot", reason="Spark tests need sqlglot: pip install -e '.[spark]'")
    from workbench.engines import java_available

    if not java_available():
        pytest.skip(
            "Spark tests need a Java 17 runtime (apt-get install openjdk-17-jre-headless)",
            allow_module_level=True,
        )


def small_jobs_engine(spark):  # noqa: ANN001, ANN201 - a SparkEngine in, a SparkEngine out
    """A new session of ``spark``'s Spark (its own temp views) set up for small jobs."""
    from workbench.engines import SparkEngine

    session = spark.spark.newSession()
    for key, value in SMALL_JOBS.items():
        session.conf.set(key, value)
    return SparkEngine(session)
