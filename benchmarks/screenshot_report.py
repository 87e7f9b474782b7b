"""Where does a qtbench report put its answer? Render report.html in headless Chromium and measure it.

    apt-get install -y chromium          # Debian's package (/usr/bin/chromium)
    pip install playwright               # the Python package only: no browser download, this uses /usr/bin/chromium
    python benchmarks/screenshot_report.py reports/demo/report.html [--out /tmp/shots] [--viewport 1280x800 390x844]

For each viewport (default: a 1280×800 laptop and a 390×844 phone) this writes ``<out>/<name>-<W>x<H>-fold.png``
(what a reader sees before scrolling) and ``<out>/<name>-<W>x<H>-full.png`` (the whole page), and prints the page
height and the vertical position (CSS px from the top of the page) of:

- the verdict card (``#verdict``) — its top and bottom, and whether its bottom is above the fold (the viewport
  height): the answer must be readable without scrolling;
- the first figure and the FP→Q gap figure, the full table (``#full-table``);
- a text of your choice (``--find TEXT``, e.g. the headline "INT4 mean gap" of a report older than the card).

It also says whether the page scrolls sideways (content wider than the viewport). Without Playwright it falls
back to the chromium CLI (``--screenshot --window-size``): screenshots of the fold only, no positions. Nothing
in qtbench's tests needs this script or Playwright.
"""

from __future__ import annotations

import argparse
import json
import shutil
import subprocess
import sys
import tempfile
from pathlib import Path

FLAGS = [
    "--headless",
    "--no-sandbox",
    "--disable-gpu",
    "--disable-quic",
    "--no-first-run",
    "--disable-background-networking",
    "--disable-component-update",
    "--disable-sync",
]

#: (label, CSS selector) of the elements whose positions are printed; a missing one prints as "absent"
PROBES = [
    ("verdict card", "#verdict"),
    ("first figure", "figure"),
    ("gap figure", "figure:has(img[alt^='FP→Q gap per precision'])"),
    ("full table", "#full-table"),
]

MEASURE_JS = """([probes, text]) => {
  const box = (el) => {
    if (!el) return null;
    const r = el.getBoundingClientRect();
    return {top: Math.round(r.top + window.scrollY), bottom: Math.round(r.bottom + window.scrollY),
            left: Math.round(r.left), right: Math.round(r.right)};
  };
  const out = {height: document.documentElement.scrollHeight, width: document.documentElement.scrollWidth,
               probes: {}};
  for (const [label, sel] of probes) out.probes[label] = box(document.querySelector(sel));
  if (text) {
    // the innermost element whose own text holds `text`
    const walker = document.createTreeWalker(document.body, NodeFilter.SHOW_TEXT);
    let node = null;
    while ((node = walker.nextNode())) if (node.textContent.includes(text)) break;
    out.probes['text: ' + text] = node ? box(node.parentElement) : null;
  }
  return out;
}"""


def parse_viewport(text: str) -> tuple[int, int]:
    w, _, h = text.lower().partition("x")
    try:
        return int(w), int(h)
    except ValueError:
        raise SystemExit(f"--viewport {text!r}: expected WIDTHxHEIGHT, e.g. 1280x800") from None


def with_playwright(html: Path, out: Path, viewports: list[tuple[int, int]], browser: str, text: str) -> list[dict]:
    from playwright.sync_api import sync_playwright

    results = []
    with sync_playwright() as p:
        b = p.chromium.launch(executable_path=browser, args=FLAGS, headless=True)
        try:
            for w, h in viewports:
                page = b.new_page(viewport={"width": w, "height": h})
                requests: list[str] = []
                page.on("request", lambda r, reqs=requests: reqs.append(r.url))
                page.goto(html.resolve().as_uri(), wait_until="load")
                m = page.evaluate(MEASURE_JS, [PROBES, text])
                stem = f"{html.parent.name or 'report'}-{w}x{h}"
                fold, full = out / f"{stem}-fold.png", out / f"{stem}-full.png"
                page.screenshot(path=str(fold))
                page.screenshot(path=str(full), full_page=True)
                page.close()
                network = [u for u in requests if not u.startswith(("file:", "data:"))]
                results.append({"viewport": [w, h], **m, "fold_png": str(fold), "full_png": str(full), "net": network})
        finally:
            b.close()
    return results


def with_cli(html: Path, out: Path, viewports: list[tuple[int, int]], browser: str) -> list[dict]:
    results = []
    for w, h in viewports:
        shot = out / f"{html.parent.name or 'report'}-{w}x{h}-fold.png"
        with tempfile.TemporaryDirectory(prefix="qtbench-chromium-") as profile:
            cmd = [browser, *FLAGS, "--hide-scrollbars", f"--user-data-dir={profile}", f"--window-size={w},{h}"]
            proc = subprocess.run([*cmd, f"--screenshot={shot}", html.resolve().as_uri()], capture_output=True)
        if proc.returncode != 0 or not shot.is_file():
            raise SystemExit(f"chromium failed ({proc.returncode}): {proc.stderr.decode(errors='replace')[-500:]}")
        results.append({"viewport": [w, h], "fold_png": str(shot)})
    return results


def report(results: list[dict]) -> None:
    for r in results:
        w, h = r["viewport"]
        print(f"== {w}×{h}")
        print(f"  fold screenshot: {r['fold_png']}")
        if "full_png" not in r:
            print("  (no positions: pip install playwright for them)")
            continue
        print(f"  full screenshot: {r['full_png']}")
        print(
            f"  page height: {r['height']} px"
            + (f"; SCROLLS SIDEWAYS ({r['width']} px wide)" if r["width"] > w else "")
        )
        for label, box in r["probes"].items():
            if box is None:
                print(f"  {label}: absent")
                continue
            where = "above" if box["bottom"] <= h else ("starts above, ends below" if box["top"] < h else "below")
            print(
                f"  {label}: top {box['top']} px, bottom {box['bottom']} px ({where} the {h} px fold; "
                f"{box['bottom'] - h:+d} px past it)"
            )
        if r["net"]:
            print(f"  NETWORK REQUESTS (a report must open offline): {r['net'][:5]}")


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("html", type=Path, help="a report.html written by `qtbench report` / `qtbench sweep`")
    ap.add_argument("--out", type=Path, default=Path(tempfile.gettempdir()) / "qtbench-shots")
    ap.add_argument("--viewport", nargs="+", default=["1280x800", "390x844"], help="WIDTHxHEIGHT, one or more")
    ap.add_argument("--find", default="", help="also print the position of the first element holding this text")
    ap.add_argument("--browser", default=shutil.which("chromium") or shutil.which("chromium-browser") or "")
    ap.add_argument("--json", action="store_true", help="print the measurements as JSON")
    args = ap.parse_args()
    if not args.browser:
        print("no chromium on PATH: apt-get install -y chromium (or pass --browser)", file=sys.stderr)
        return 2
    if not args.html.is_file():
        print(f"{args.html} does not exist; run `qtbench sweep` or `qtbench report` first", file=sys.stderr)
        return 2
    viewports = [parse_viewport(v) for v in args.viewport]
    args.out.mkdir(parents=True, exist_ok=True)
    try:
        import playwright.sync_api  # noqa: F401
    except ImportError:
        print("playwright not installed: fold screenshots only, no positions", file=sys.stderr)
        results = with_cli(args.html, args.out, viewports, args.browser)
    else:
        results = with_playwright(args.html, args.out, viewports, args.browser, args.find)
    if args.json:
        print(json.dumps(results, indent=1))
    else:
        report(results)
    return 0


if __name__ == "__main__":
    sys.exit(main())
