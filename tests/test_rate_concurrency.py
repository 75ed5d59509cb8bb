"""`dgalign rate` under load: 8 raters posting at once over HTTP, the server killed with SIGKILL mid-stream;
after a restart every acknowledged rating is stored exactly once, whole, and rating goes on."""

import os
import signal
import sqlite3
import threading

import httpx

from rate_helpers import copy_run, free_port, start_server

RATERS = 8
DIMS = ["quality", "helpfulness"]
KILL_AFTER = 40  # acknowledged ratings before the kill (the 15 items × 8 raters offer 120)


def _rater(url: str, name: str, acked: list, stop: threading.Event) -> None:
    with httpx.Client(base_url=url, timeout=30) as client:
        try:
            client.post("/api/signin", json={"name": name}).raise_for_status()
            while not stop.is_set():
                nxt = client.get("/api/next").json()
                if "assignment_id" not in nxt:
                    return
                r = client.post("/api/rate", json={"assignment_id": nxt["assignment_id"], "note": f"{name} says hi",
                                                   "sides": {"quality": "left", "helpfulness": "tie"}})
                r.raise_for_status()
                acked.append((name, nxt["assignment_id"], r.json()["rating_id"]))
        except httpx.TransportError:  # the server is gone: whatever was not acknowledged may be lost
            return


def test_eight_raters_then_kill_9_then_every_acknowledged_rating_exactly_once(tmp_path):
    run, port = copy_run(tmp_path), free_port()
    url = f"http://127.0.0.1:{port}"
    args = ("--dimensions", ",".join(DIMS))
    server = start_server(run, port, *args)
    acked: list = []
    stop = threading.Event()
    threads = [threading.Thread(target=_rater, args=(url, f"rater{i}", acked, stop)) for i in range(RATERS)]
    try:
        for t in threads:
            t.start()
        while len(acked) < KILL_AFTER and any(t.is_alive() for t in threads):
            threading.Event().wait(0.005)
        os.kill(server.pid, signal.SIGKILL)  # mid-stream: requests are in flight
        server.wait()
        for t in threads:
            t.join(60)
    finally:
        stop.set()
        server.kill()
        server.wait()
    assert len(acked) >= KILL_AFTER and len({a for _, a, _ in acked}) == len(acked)

    server = start_server(run, port, *args)  # the restart reopens the same database
    try:
        with sqlite3.connect(run / "ratings.sqlite") as conn:
            stored = conn.execute("SELECT r.id, r.rater, r.assignment_id, a.status, COUNT(v.dimension) FROM ratings r "
                                  "JOIN assignments a ON a.id = r.assignment_id "
                                  "LEFT JOIN verdicts v ON v.rating_id = r.id GROUP BY r.id").fetchall()
            orphans = conn.execute("SELECT COUNT(*) FROM verdicts WHERE rating_id NOT IN (SELECT id FROM ratings)")
            assert orphans.fetchone()[0] == 0
            open_rated = conn.execute("SELECT COUNT(*) FROM assignments a WHERE status = 'rated' AND NOT EXISTS "
                                      "(SELECT 1 FROM ratings r WHERE r.assignment_id = a.id)").fetchone()[0]
        assert open_rated == 0
        assert all(status == "rated" and n == len(DIMS) for *_, status, n in stored)  # whole, never half
        by_assignment = {}
        for rid, rater, aid, *_ in stored:
            by_assignment.setdefault(aid, []).append((rid, rater))
        for rater, aid, rid in acked:
            assert by_assignment.get(aid) == [(rid, rater)], (rater, aid)  # present, exactly once
        # a rater whose reply was lost posts again: stored once, told so; then rating continues
        print(f"{len(acked)} acknowledged, {len(stored)} stored (committed, reply lost to the kill: "
              f"{len(stored) - len(acked)})")
        rater, aid, rid = acked[-1]
        with httpx.Client(base_url=url, timeout=30) as client:
            client.post("/api/signin", json={"name": rater}).raise_for_status()
            again = client.post("/api/rate", json={"assignment_id": aid, "sides": {"quality": "right",
                                                                                   "helpfulness": "right"}})
            assert again.json() == {"rating_id": rid, "duplicate": True}
            nxt = client.get("/api/next").json()
            assert nxt["progress"]["done"] == sum(1 for _, r, *_ in stored if r == rater)
            if "assignment_id" in nxt:
                ok = client.post("/api/rate", json={"assignment_id": nxt["assignment_id"],
                                                    "sides": {"quality": "left", "helpfulness": "left"}})
                assert ok.json()["duplicate"] is False
    finally:
        server.kill()
        server.wait()
