"""The viewer page's own cost per prompt: from the server's answer to the mask on screen.

A real server (uvicorn on loopback, in this process) and Debian's chromium in software WebGL (SwiftShader,
as in the browser tests), driven by Playwright. The page is clicked at voxels of the bundled demo volume;
a script injected before the page's own measures, the same way for any version of the page:

- ``answer``: when ``fetch`` of the ``/clicks`` request resolves (the server's answer is in);
- ``shown``: two animation frames after the page marks the update done (``body[data-updates]``), i.e.
  the frame holding the new mask has been produced.

``page = shown - answer`` is what the page spends (fetching the label map, decoding, uploading, drawing)
and does not include the segmentation. ``--page old`` serves the page of a git revision (default: the
viewer before issue 31) for the "before" figure, with today's vendored NiiVue.

    python -m benchmarks.bench_viewer [--page new|old] [--rev REV] [--layout grid|row] [--clicks 8]
"""

from __future__ import annotations

import argparse
import json
import shutil
import statistics
import subprocess
import tempfile
from pathlib import Path

from volsam.serve.routes.viewer import STATIC_DIR

OLD_REV = "51e1bb9"  # the viewer before issue 31

INJECT = """
window.__bench = { answers: [], shown: [] };
const realFetch = window.fetch;
window.fetch = async (...args) => {
  const res = await realFetch(...args);
  if (String(args[0]).includes("/clicks")) window.__bench.answers.push(performance.now());
  return res;
};
new MutationObserver(() => {
  requestAnimationFrame(() => requestAnimationFrame(() => window.__bench.shown.push(performance.now())));
}).observe(document, { subtree: true, attributes: true, attributeFilter: ["data-updates"] });
"""

CLICK_AT = """([frac]) => {
  const nv = window.volsamViewer.nv;
  nv.scene.crosshairPos = frac;
  nv.drawScene();
  const hit = nv.frac2canvasPosWithTile(frac, nv.sliceTypeAxial);
  const r = nv.canvas.getBoundingClientRect();
  const dpr = window.devicePixelRatio || 1;
  return [r.left + hit.pos[0] / dpr, r.top + hit.pos[1] / dpr];
}"""


def _old_static(rev: str, into: Path) -> Path:
    """The static folder of ``rev`` with today's vendored NiiVue."""
    into.mkdir(parents=True, exist_ok=True)
    root = Path(__file__).resolve().parents[1]
    listing = subprocess.run(
        ["git", "-C", str(root), "ls-tree", "--name-only", rev, "src/volsam/serve/static/"],
        check=True, capture_output=True, text=True,
    ).stdout.split()
    for path in listing:
        if path.endswith((".html", ".js", ".css")):
            show = ["git", "-C", str(root), "show", f"{rev}:{path}"]
            data = subprocess.run(show, check=True, capture_output=True).stdout
            (into / Path(path).name).write_bytes(data)
    shutil.copytree(STATIC_DIR / "vendor", into / "vendor")
    return into


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--page", choices=["new", "old"], default="new")
    ap.add_argument("--rev", default=OLD_REV, help="git revision of the old page")
    ap.add_argument(
        "--layout", choices=["grid", "grid3", "row"], default="grid",
        help="new page: 2x2 with 3D, 2x2 without it (software WebGL's default), or 1x3",
    )
    ap.add_argument("--clicks", type=int, default=8, help="timed clicks (after 2 untimed)")
    ap.add_argument("--model", default=None, help="the server's model (default: shipped)")
    ap.add_argument("--width", type=int, default=1400)
    ap.add_argument("--height", type=int, default=900)
    ap.add_argument("--json", default=None)
    args = ap.parse_args(argv)

    import numpy as np
    from playwright.sync_api import sync_playwright
    from tests.serve.test_viewer import CHROMIUM, CHROMIUM_ARGS

    import volsam.serve.routes.viewer as viewer_routes
    from volsam.serve.app import create_app
    from volsam.serve.background import background_server
    from volsam.session import Session

    if CHROMIUM is None:
        raise SystemExit("needs Debian's chromium (apt-get install chromium)")
    tmp = Path(tempfile.mkdtemp(prefix="volsam-bench-viewer-"))
    try:
        if args.page == "old":
            viewer_routes.STATIC_DIR = _old_static(args.rev, tmp / "static")
        model = Session(args.model).model
        app = create_app(session_factory=lambda: Session(model))
        rng = np.random.default_rng(0)
        fracs = [[float(rng.uniform(0.3, 0.7)), float(rng.uniform(0.3, 0.7)), 0.5] for _ in range(args.clicks + 2)]
        with background_server(app) as url, sync_playwright() as p:
            browser = p.chromium.launch(executable_path=CHROMIUM, args=CHROMIUM_ARGS)
            page = browser.new_page(viewport={"width": args.width, "height": args.height})
            page.add_init_script(INJECT)
            page.goto(url + "/")
            page.wait_for_selector("body[data-ready='1']", timeout=60_000)
            page.click("#demo")
            page.wait_for_selector("body[data-session]", timeout=60_000)
            if args.page == "new":
                page.evaluate("(layout) => window.volsamViewer.setLayout(layout)", args.layout)
            page.wait_for_timeout(500)
            for n, frac in enumerate(fracs, start=1):
                page.mouse.click(*page.evaluate(CLICK_AT, [frac]))
                page.wait_for_function(f"window.__bench.shown.length >= {n}", timeout=60_000)
            bench = page.evaluate("window.__bench")
            parts = page.evaluate("window.volsamViewer.state.timings || null")
            browser.close()
    finally:
        viewer_routes.STATIC_DIR = STATIC_DIR
        shutil.rmtree(tmp, ignore_errors=True)
    page_ms = [s - a for a, s in zip(bench["answers"][2:], bench["shown"][2:], strict=True)]
    result = {
        "page": args.page if args.page == "new" else f"old ({args.rev})",
        "layout": args.layout if args.page == "new" else "row of 4 (old)",
        "viewport": [args.width, args.height],
        "clicks": len(page_ms),
        "page_ms_median": round(statistics.median(page_ms), 1),
        "page_ms_min": round(min(page_ms), 1),
        "page_ms_max": round(max(page_ms), 1),
    }
    if parts:  # the new page's own split of that time
        timed = parts[2:]
        result["overlay_fetch_ms_median"] = round(statistics.median(t["overlay"] for t in timed), 1)
        result["decode_upload_draw_call_ms_median"] = round(statistics.median(t["draw"] for t in timed), 1)
    print(json.dumps(result, indent=1))
    if args.json:
        Path(args.json).write_text(json.dumps(result, indent=1))
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
