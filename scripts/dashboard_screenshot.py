"""The README's dashboard screenshot: the heart-disease simulation, its sites training with
DP-SGD under a budget of ε = 3 each, with its pooled baseline job; then a server started again on
the simulation's state, shown in headless Chromium.

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

from PIL import Image

REPO = pathlib.Path(__file__).resolve().parents[1]
sys.path.insert(0, str(REPO))

from tests.e2e.browser import Dashboard, chromium  # noqa: E402
from tests.e2e.cli import TOKEN, Deployment  # noqa: E402


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--out", type=pathlib.Path, default=REPO / "docs/dashboard.png")
    parser.add_argument("--sim-dir", type=pathlib.Path, help="reuse a finished simulation here")
    args = parser.parse_args()
    with tempfile.TemporaryDirectory() as tmp:
        sim_dir = args.sim_dir or pathlib.Path(tmp) / "sim"
        if args.sim_dir is None:
            subprocess.run(
                [sys.executable, "-m", "quorum", "sim", "--config",
                 "examples/heart_disease/sim.toml", "--set", f"sim.output_dir={sim_dir}",
                 "--set", "site.dp.epsilon=3"],
                cwd=REPO, check=True, timeout=900,
            )  # fmt: skip
        png, height = shoot(Deployment(sim_dir / "work", None), pathlib.Path(tmp))
    image = Image.open(io.BytesIO(png)).convert("RGB")
    # A 64-colour palette keeps the file small; the page has few colours.
    image = image.crop((0, 0, image.width, min(height, image.height))).quantize(64)
    args.out.parent.mkdir(parents=True, exist_ok=True)
    image.save(args.out, optimize=True)
    print(f"wrote {args.out} ({args.out.stat().st_size // 1024} KiB)")


def shoot(d: Deployment, work: pathlib.Path) -> tuple[bytes, int]:
    """Serves the simulation's state again (on fresh ports) and photographs its run; returns
    the PNG and the height of the page's content in it (the window is taller)."""
    try:
        d.start_server()
        run = d.run_record()
        assert run, "the simulation left no run"
        with chromium(work / "chromium", size="1440,2400") as driver:
            page = Dashboard(driver, f"http://127.0.0.1:{d.admin_port}")
            page.sign_in(TOKEN)
            page.select_run(run["id"])
            rounds = list(range(1, run["rounds_completed"] + 1))
            page.until(lambda: page.chart("accuracy")[0] == rounds, "every round on the chart")
            page.until(lambda: len(page.chart("accuracy")[1]) > 1, "the baseline on the chart")
            bottom = driver.execute_script(
                "return document.querySelector('main').getBoundingClientRect().bottom"
            )
            return driver.get_screenshot_as_png(), int(bottom) + 14
    finally:
        d.stop()


if __name__ == "__main__":
    main()
