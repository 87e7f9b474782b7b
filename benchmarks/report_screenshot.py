"""Render a qtbench report in a real browser (headless Chromium) and save full-page screenshots to look at.

    apt-get install -y chromium          # Debian's package
    python benchmarks/report_screenshot.py reports/demo/report.html [--out /tmp/shots] [--width 1280]

Writes ``<out>/report-<width>.png`` (a tall page, the whole report) for a desktop and a narrow width, and checks
that the page rendered: Chromium exited 0, the PNG is a PNG of the requested width, and the page made no network
request (the report must open offline). The screenshots are for a human (or an image viewer) to look at: tables
readable, images within the page width, captions under their figures.
"""

from __future__ import annotations

import argparse
import shutil
import struct
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = (
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
    "--hide-scrollbars",
)


def png_size(path: Path) -> tuple[int, int]:
    head = path.read_bytes()[:24]
    if head[:8] != b"\x89PNG\r\n\x1a\n":
        raise SystemExit(f"{path}: not a PNG")
    return struct.unpack(">II", head[16:24])


def page_height(html: Path, width: int) -> int:
    """A generous height for a full-page shot: Chromium's --screenshot captures the window size only."""
    text = html.read_text(errors="replace")
    images = text.count("<img")
    rows = text.count("<tr>")
    return min(16_000, 1200 + 650 * images * (1280 // max(width, 400) or 1) + 22 * rows)


def screenshot(browser: str, html: Path, out: Path, width: int, timeout_s: float = 120) -> Path:
    shot = out / f"report-{width}.png"
    height = page_height(html, width)
    with tempfile.TemporaryDirectory(prefix="qtbench-chromium-") as profile:
        cmd = [
            browser,
            *FLAGS,
            f"--user-data-dir={profile}",
            f"--window-size={width},{height}",
            f"--screenshot={shot}",
            html.resolve().as_uri(),
        ]
        proc = subprocess.run(cmd, capture_output=True, text=True, timeout=timeout_s)
    if proc.returncode != 0 or not shot.is_file():
        raise SystemExit(f"chromium failed ({proc.returncode}): {proc.stderr.strip()[-500:]}")
    w, _ = png_size(shot)
    if w != width:
        raise SystemExit(f"{shot}: {w} px wide, asked for {width}")
    return shot


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", type=Path, help="a report.html written by `qtbench report` / `qtbench sweep`")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "qtbench-shots")
    ap.add_argument("--width", type=int, nargs="+", default=[1280, 800])
    ap.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "")
    args = ap.parse_args()
    if not args.browser:
        print("no chromium on PATH: apt-get install -y chromium (or pass --browser)", file=sys.stderr)
        return 2
    if not args.html.is_file():
        print(f"{args.html} does not exist; run `qtbench sweep` or `qtbench report` first", file=sys.stderr)
        return 2
    text = args.html.read_text(errors="replace")
    if "http://" in text or "https://" in text:
        print(f"{args.html} references the network; a report must open offline", file=sys.stderr)
        return 1
    args.out.mkdir(parents=True, exist_ok=True)
    for width in args.width:
        shot = screenshot(args.browser, args.html, args.out, width)
        w, h = png_size(shot)
        print(f"{shot}: {w}×{h} px")
    return 0


if __name__ == "__main__":
    sys.exit(main())
