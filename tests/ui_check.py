"""A headless-browser look at the MLflow UI over a tracking store, as a user opens it (not collected by pytest:
Chromium is a system package, and this is a check done by hand, its output quoted in closing notes).

    python tests/ui_check.py --store sqlite:////path/mlflow.db --out /tmp/ui [--runs ID ID]

Starts a real `mlflow server` on the store, loads the experiment's runs table and the Compare page of the
given runs (default: the two newest) in headless Chromium, saves a screenshot and the rendered DOM of each,
and prints which of these the pages show: the Dataset and Source columns filled, system metrics.
"""
from __future__ import annotations

import argparse
import json
import re
import shutil
import subprocess
from pathlib import Path

from mlflow.tracking import MlflowClient

from nlray.testing.servers import BIN, free_port, start, stop

CHROMIUM = shutil.which("chromium") or shutil.which("chromium-browser") or "chromium"


def render(url: str, out: Path, name: str, budget_ms: int = 20000) -> str:
    """The DOM of ``url`` after ``budget_ms`` of (virtual) time, and a screenshot beside it."""
    flags = [CHROMIUM, "--headless", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
             "--window-size=1600,1000", f"--virtual-time-budget={budget_ms}"]
    subprocess.run([*flags, f"--screenshot={out / (name + '.png')}", url], capture_output=True, timeout=180)
    dom = subprocess.run([*flags, "--dump-dom", url], capture_output=True, text=True, timeout=180).stdout
    (out / f"{name}.html").write_text(dom)
    return dom


def text_of(dom: str) -> str:
    return " ".join(re.sub(r"<[^>]+>", " ", dom).split())


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--store", required=True, help="MLflow backend store URI (sqlite:////abs/path/mlflow.db)")
    p.add_argument("--out", default="ui-check")
    p.add_argument("--experiment", default="nlray")
    p.add_argument("--runs", nargs="*", default=None)
    args = p.parse_args()
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    server = start([str(BIN / "mlflow"), "server", "--host", "127.0.0.1", "--port", str(port),
                    "--backend-store-uri", args.store, "--workers", "1"], url + "/health", out / "mlflow.log",
                   timeout=180)
    try:
        client = MlflowClient(url)
        exp = client.get_experiment_by_name(args.experiment)
        runs = args.runs or [r.info.run_id for r in client.search_runs(
            [exp.experiment_id], order_by=["attributes.start_time DESC"], max_results=2)]
        found = {}
        runs_page = text_of(render(f"{url}/#/experiments/{exp.experiment_id}/runs", out, "runs"))
        for run_id in runs:
            run = client.get_run(run_id)
            ds = [d.dataset for d in run.inputs.dataset_inputs]
            found[run.info.run_name] = {
                "dataset in table": any(d.name in runs_page for d in ds),
                "dataset": [f"{d.name} ({d.digest})" for d in ds],
                "source in table": Path(run.data.tags.get("mlflow.source.name", "?")).name in runs_page,
                "system metrics": sorted(k for k in run.data.metrics if k.startswith("system/"))[:4]}
            page = text_of(render(f"{url}/#/experiments/{exp.experiment_id}/runs/{run_id}/system-metrics",
                                  out, f"system-{run_id[:8]}"))
            found[run.info.run_name]["system metrics page mentions cpu"] = "cpu" in page.lower()
        ids = json.dumps(runs).replace('"', "%22")
        compare = text_of(render(f"{url}/#/compare-runs?runs={ids}&experiments=[%22{exp.experiment_id}%22]",
                                 out, "compare"))
        print(json.dumps({"runs page words": runs_page[:600], "runs": found,
                          "compare page words": compare[:600]}, indent=1))
    finally:
        stop(server)


if __name__ == "__main__":
    main()
