"""Retake the MLflow UI screenshots in README.md: `mentor ui` on a store, pages captured by headless Chromium.

    apt-get install chromium                      # Debian's package
    mentor run experiments/quickstart.yaml        # a store with the quickstart in it (mlruns/ here)
    python docs/screenshots/take.py --experiment fashion-quickstart --stage student_kd

Writes runs.png (the experiment's runs table as `mentor ui --experiment`
opens it: stage runs grouped by stage) and overview.png (a stage run's page:
name, parent, source, dataset, description, summary metrics) and metrics.png
(its Model metrics tab: the curves, then the summaries) into docs/screenshots/.
Only loopback addresses are used; the UI is stopped at the end.
"""

from __future__ import annotations

import argparse
import json
import shutil
import socket
import subprocess
import sys
import time
import urllib.request
from pathlib import Path

HERE = Path(__file__).parent


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def call(base: str, endpoint: str, body: dict | None = None, **query) -> dict:
    from urllib.parse import urlencode

    url = f"{base}/api/2.0/mlflow/{endpoint}" + (f"?{urlencode(query)}" if query else "")
    data = json.dumps(body).encode() if body is not None else None
    request = urllib.request.Request(url, data, {"Content-Type": "application/json"})
    with urllib.request.urlopen(request, timeout=10) as response:
        return json.loads(response.read())


def shoot(chromium: str, url: str, out: Path, size: str, budget_ms: int = 20000) -> None:
    # the new headless mode, drawing every frame: the charts' canvases are empty otherwise
    subprocess.run([chromium, "--headless=new", "--no-sandbox", "--disable-gpu", "--hide-scrollbars",
                    "--run-all-compositor-stages-before-draw", f"--window-size={size}",
                    f"--virtual-time-budget={budget_ms}", f"--screenshot={out}", url],
                   check=True, capture_output=True, timeout=180)
    print(f"{out} <- {url}")


def main(argv: list[str] | None = None) -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--experiment", default="fashion-quickstart")
    parser.add_argument("--stage", default="student_kd", help="the stage whose run pages are captured")
    parser.add_argument("--store-dir", type=Path, default=Path("."), help="the folder holding mlruns/")
    parser.add_argument("--out", type=Path, default=HERE)
    parser.add_argument("--size", default="1600,1000", help="window width,height in pixels")
    args = parser.parse_args(argv)
    chromium = shutil.which("chromium") or shutil.which("chromium-browser")
    if chromium is None:
        print("error: no chromium on PATH (apt-get install chromium)", file=sys.stderr)
        return 2
    port = free_port()
    base = f"http://127.0.0.1:{port}"
    ui = subprocess.Popen([sys.executable, "-m", "mentor.cli", "ui", "--port", str(port)], cwd=args.store_dir,
                          stdout=subprocess.DEVNULL, stderr=subprocess.DEVNULL)
    try:
        deadline, experiment = time.time() + 90, None
        while experiment is None and time.time() < deadline:
            try:
                experiment = call(base, "experiments/get-by-name", experiment_name=args.experiment)["experiment"]
            except OSError:
                time.sleep(1)
        if experiment is None:
            print(f"error: the UI on {base} did not answer, or has no experiment '{args.experiment}'",
                  file=sys.stderr)
            return 2
        eid = experiment["experiment_id"]
        runs = call(base, "runs/search", {"experiment_ids": [eid], "max_results": 500,
                                          "order_by": ["attributes.start_time DESC"]})["runs"]

        def tag(run: dict, key: str) -> str | None:
            return next((t["value"] for t in run["data"].get("tags", []) if t["key"] == key), None)

        stage = next((r for r in runs if tag(r, "mentor.stage") == args.stage and tag(r, "mentor.kind") == "stage"
                      and r["info"]["status"] == "FINISHED"), None)
        if stage is None:
            print(f"error: no finished run of stage '{args.stage}' in '{args.experiment}'", file=sys.stderr)
            return 2
        run_id = stage["info"]["run_id"]
        view = "workflowType=machine_learning"
        args.out.mkdir(parents=True, exist_ok=True)
        from mentor.tracking.ui_view import ui_url

        shoot(chromium, ui_url(base, eid), args.out / "runs.png", args.size)  # the address `mentor ui` prints
        shoot(chromium, f"{base}/#/experiments/{eid}/runs/{run_id}?{view}", args.out / "overview.png", args.size)
        shoot(chromium, f"{base}/#/experiments/{eid}/runs/{run_id}/model-metrics?{view}", args.out / "metrics.png",
              args.size, budget_ms=120000)  # every chart fetches its metric's history
    finally:
        ui.terminate()
        ui.wait(timeout=30)
    return 0


if __name__ == "__main__":
    sys.exit(main())
