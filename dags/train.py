"""Train a diagnostic model when its deidentified tables change: features → screen → train → evaluate →
robustness → judge → register.

Data-aware: runs whenever de-identification publishes ``outcomes`` (the label table of the synthetic cohort);
params pick another table/label/config. Each task is one call into ``analytics.flow``; the tasks share a run
folder under ``$MEDGUARD_HOME/analytics/runs`` (its path is the XCom). ``judge`` holds the candidate to the
governance floors and compares it with the current model; ``register`` signs it, promotes it when it earned it
and returns the decision (``promotion``: promoted, candidate or duplicate, with the reasons; a candidate left a
candidate is also an ``alert`` audit event). A training of data and configuration already registered registers
nothing. ``register`` updates the ``medguard://models/registry`` asset, which starts batch diagnosis.
"""

from __future__ import annotations

from typing import Any

from airflow.sdk import Asset, Param, dag, task

OUTCOMES = Asset("medguard://deidentified/outcomes")
REGISTRY = Asset("medguard://models/registry")


@dag(
    dag_id="medguard_train",
    description="Train, screen, evaluate, attack and sign a diagnostic model on deidentified tables",
    doc_md=__doc__,
    schedule=[OUTCOMES],
    catchup=False,
    tags=["medguard", "analytics"],
    default_args={"owner": "medguard-analytics", "retries": 0},
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
        from pipeline.settings import get_settings

        config = params["config"] or (str(T2D_CONFIG) if params["label"] == "t2d_within_1y" else None)
        return step_features(get_settings(), params["table"], params["label"], config_path=config)

    @task(task_id="screen")
    def screen(run_dir: str) -> str:
        from analytics.flow import step_screen
        from pipeline.settings import get_settings

        step_screen(get_settings(), run_dir)
        return run_dir

    @task(task_id="train")
    def train(run_dir: str) -> str:
        from analytics.flow import step_train
        from pipeline.settings import get_settings

        step_train(get_settings(), run_dir)
        return run_dir

    @task(task_id="evaluate")
    def evaluate(run_dir: str) -> str:
        from analytics.flow import step_evaluate
        from pipeline.settings import get_settings

        step_evaluate(get_settings(), run_dir)
        return run_dir

    @task(task_id="robustness")
    def robustness(run_dir: str) -> str:
        from analytics.flow import step_robustness
        from pipeline.settings import get_settings

        step_robustness(get_settings(), run_dir)
        return run_dir

    @task(task_id="judge")
    def judge(run_dir: str) -> str:
        from analytics.flow import step_judge
        from pipeline.settings import get_settings

        step_judge(get_settings(), run_dir)
        return run_dir

    @task(task_id="register", outlets=[REGISTRY])
    def register(run_dir: str) -> dict[str, Any]:
        from analytics.flow import step_register
        from pipeline.settings import get_settings

        return step_register(get_settings(), run_dir)

    register(judge(robustness(evaluate(train(screen(features()))))))


medguard_train()
