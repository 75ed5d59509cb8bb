"""docs/rating-page.png: the `dgalign rate` page in the system chromium (Playwright), on a copy of the
committed toy run whose first prompt's answers are replaced by readable text."""

import json
import shutil
import sys
import tempfile
import threading
import time
from pathlib import Path

import uvicorn
from playwright.sync_api import sync_playwright

from dgalign.rate.app import create_app
from dgalign.rate.store import Store

ROOT = Path(__file__).resolve().parents[1]
PROMPT = "Write a short, friendly reply to a customer whose parcel arrived damaged."
ANSWERS = {
    "base": "Sorry about that. Send it back and we will look at it when we can.",
    "bon:n=3": "I'm so sorry your parcel arrived damaged! That's not the experience we want for you. I've "
               "arranged a free replacement, which ships today, and you don't need to return the damaged item. "
               "If anything else is wrong, just reply to this message.",
}


def main(out: Path) -> None:
    run = Path(tempfile.mkdtemp()) / "run"
    shutil.copytree(ROOT / "tests" / "data" / "rate-run", run)
    rows_path = run / "toy-prompts.jsonl"
    rows = [json.loads(line) for line in rows_path.read_text().splitlines()]
    rows = [{**r, "prompt": PROMPT, "completion": ANSWERS[r["method"]]} for r in rows
            if r["prompt_index"] == 0 and r["method"] in ANSWERS]
    rows_path.write_text("".join(json.dumps(r) + "\n" for r in rows))
    store = Store(run)
    items = store.sync_items([("base", "bon:n=3")])
    server = uvicorn.Server(uvicorn.Config(create_app(store, items, ["quality", "helpfulness", "harmlessness"]),
                                           host="127.0.0.1", port=8917, log_level="warning"))
    threading.Thread(target=server.run, daemon=True).start()
    while not server.started:
        time.sleep(0.02)
    with sync_playwright() as p:
        browser = p.chromium.launch(executable_path=shutil.which("chromium"), args=["--no-sandbox"])
        page = browser.new_page(viewport={"width": 1100, "height": 720})
        page.goto("http://127.0.0.1:8917/")
        page.fill("#name", "ann")
        with page.expect_navigation():
            page.click("#signin")
        page.keyboard.press("3")  # quality: B better; the highlight moves to helpfulness
        page.screenshot(path=str(out), full_page=True)
        browser.close()
    server.should_exit = True
    print(f"wrote {out}")


if __name__ == "__main__":
    main(Path(sys.argv[1]) if len(sys.argv) > 1 else ROOT / "docs" / "rating-page.png")
