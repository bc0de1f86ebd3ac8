"""Train a diagnostic model once per de-identified batch: features → screen → train → evaluate → robustness →
judge → register.

Data-aware: runs once per ``medguard://deidentified/batch`` event (one per de-identification run); params pick
another table/label/config. Each task is one call into ``analytics.flow``; the tasks share a run folder under
``$MEDGUARD_HOME/analytics/runs`` (its path is the XCom). ``features`` fails the run when the deidentified table is
missing or yields no labelled example. ``judge`` holds the candidate to the governance floors and compares it with
the current model; ``register`` signs it, promotes it when it earned it and returns the decision (``promotion``:
promoted, candidate or duplicate, with the reasons; a candidate left a candidate is also an ``alert`` audit
event). A training of data and configuration already registered registers nothing. ``register`` emits
``medguard://models/registry`` once, its ``extra`` naming the model version, the decision and the training tables'
Delta versions; that event starts batch diagnosis.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param, dag, task

from pipeline.airflow_support import DEIDENTIFIED_BATCH, MODEL_REGISTRY, task_defaults


@dag(
    dag_id="medguard_train",
    description="Train, screen, evaluate, attack and sign a diagnostic model on deidentified tables",
    doc_md=__doc__,
    schedule=Asset(DEIDENTIFIED_BATCH),
    catchup=False,
    tags=["medguard", "analytics"],
    default_args=task_defaults("medguard-analytics"),
    params={
        "table": Param("outcomes", type="string", description="Deidentified table whose rows are the examples"),
        "label": Param("t2d_within_1y", type="string", description="Label column"),
        "config": Param(None, type=["null", "string"], description="Training config YAML (None: the T2D config)"),
    },
)
def medguard_train() -> None:
    @task(task_id="features")
    def features(params: dict[str, Any]) -> str:
        from analytics.demo import T2D_CONFIG
        from analytics.flow import step_features
        from pipeline.airflow_support import require_tables, task_settings

        settings = task_settings()
        require_tables(settings, "deidentified", [params["table"]])
        config = params["config"] or (str(T2D_CONFIG) if params["label"] == "t2d_within_1y" else None)
        return step_features(settings, params["table"], params["label"], config_path=config)

    @task(task_id="screen")
    def screen(run_dir: str) -> str:
        from analytics.flow import step_screen
        from pipeline.airflow_support import task_settings

        step_screen(task_settings(), run_dir)
        return run_dir

    @task(task_id="train")
    def train(run_dir: str) -> str:
        from analytics.flow import step_train
        from pipeline.airflow_support import task_settings

        step_train(task_settings(), run_dir)
        return run_dir

    @task(task_id="evaluate")
    def evaluate(run_dir: str) -> str:
        from analytics.flow import step_evaluate
        from pipeline.airflow_support import task_settings

        step_evaluate(task_settings(), run_dir)
        return run_dir

    @task(task_id="robustness")
    def robustness(run_dir: str) -> str:
        from analytics.flow import step_robustness
        from pipeline.airflow_support import task_settings

        step_robustness(task_settings(), run_dir)
        return run_dir

    @task(task_id="judge")
    def judge(run_dir: str) -> str:
        from analytics.flow import step_judge
        from pipeline.airflow_support import task_settings

        step_judge(task_settings(), run_dir)
        return run_dir

    @task(task_id="register", outlets=[Asset(MODEL_REGISTRY)])
    def register(run_dir: str, outlet_events: Any = None) -> dict[str, Any]:
        from analytics.flow import step_register
        from pipeline.airflow_support import registered_model, task_settings

        result = step_register(task_settings(), run_dir)
        outlet_events[Asset(MODEL_REGISTRY)].extra = registered_model(result)
        return result

    register(judge(robustness(evaluate(train(screen(features()))))))


medguard_train()
