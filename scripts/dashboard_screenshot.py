"""The README's dashboard screenshot: the heart-disease simulation with its pooled baseline job,
then a server started again on the simulation's state, shown in headless Chromium.

    .venv/bin/python scripts/dashboard_screenshot.py --out docs/dashboard.png

Needs Debian's chromium and chromium-driver, and the `dev` extra (selenium).
"""

from __future__ import annotations

import argparse
import io
import pathlib
import subprocess
import sys
import tempfile
import tomllib

import tomli_w
from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from quorum.admin.client import AdminClient  # noqa: E402
from quorum.ports import free_port  # noqa: E402
from quorum.sim import processes  # noqa: E402
from tests.e2e.browser import Dashboard, chromium  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs/dashboard.png")
    parser.add_argument("--sim-dir", type=pathlib.Path, help="reuse a finished simulation here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        work = pathlib.Path(tmp)
        sim_dir = args.sim_dir or work / "sim"
        if args.sim_dir is None:
            subprocess.run(
                [sys.executable, "-m", "quorum", "sim", "--config",
                 "examples/heart_disease/sim.toml", "--set", f"sim.output_dir={sim_dir}"],
                cwd=REPO, check=True, timeout=900,
            )  # fmt: skip
        shoot(sim_dir / "work", work, args.out)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


def shoot(sim_work: pathlib.Path, work: pathlib.Path, out: pathlib.Path) -> None:
    """Serves the simulation's state again (on fresh ports) and photographs its run."""
    config = tomllib.loads((sim_work / "server.toml").read_text())
    admin_port = free_port()
    config["server"]["federation_address"] = f"127.0.0.1:{free_port()}"
    config["server"]["admin_address"] = f"127.0.0.1:{admin_port}"
    server_toml = work / "server.toml"
    server_toml.write_text(tomli_w.dumps(config))
    url, token = f"http://127.0.0.1:{admin_port}", config["server"]["admin_token"]
    server = processes.start(
        "server", ["server", "start", "--config", str(server_toml), "--insecure"], work
    )
    try:
        admin = AdminClient(url, token)
        admin.wait_ready(60)
        run = admin.get("/api/v1/runs")[-1]
        admin.close()
        with chromium(work / "chromium", size="1440,1300") as driver:
            page = Dashboard(driver, url)
            page.sign_in(token)
            page.select_run(run["id"])
            rounds = list(range(1, run["rounds_completed"] + 1))
            page.until(lambda: page.chart("accuracy")[0] == rounds, "every round on the chart")
            page.until(lambda: len(page.chart("accuracy")[1]) > 1, "the baseline on the chart")
            height = driver.execute_script("return document.documentElement.scrollHeight")
            driver.set_window_size(1440, height + 20)
            png = driver.get_screenshot_as_png()
    finally:
        processes.stop([server])
    # A 64-colour palette keeps the file small; the page has few colours.
    image = Image.open(io.BytesIO(png)).convert("RGB").quantize(64)
    out.parent.mkdir(parents=True, exist_ok=True)
    image.save(out, optimize=True)


if __name__ == "__main__":
    main()
