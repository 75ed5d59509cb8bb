"""RUN_DIR/ratings.sqlite: items to rate, raters, assignments, ratings (schema: dgalign.eval.human).

SQLite in WAL mode with synchronous=FULL; every write is one `BEGIN IMMEDIATE … COMMIT` transaction on
its own connection, so concurrent raters serialise on the write lock and a kill -9 leaves each rating
either stored whole (rating, its verdicts, its assignment closed) or not at all. Posting a rating
twice (a retry after a lost reply) stores it once and says so. Re-opening a run continues: items are
added with INSERT OR IGNORE, a rater's open assignment is shown again, rated and skipped ones never.
"""

from __future__ import annotations

import hashlib
import hmac
import random
import secrets
import sqlite3
from collections.abc import Iterator
from contextlib import contextmanager
from dataclasses import dataclass
from itertools import combinations
from pathlib import Path

from ..errors import DGAlignError
from ..eval.harness import read_rows
from ..eval.human import DB_NAME, JUDGE_PREFIX, SCHEMA

MAX_NAME = 64  # characters in a rater's name
SIDES = ("left", "tie", "right")  # what a rater chooses, per dimension


@dataclass(frozen=True)
class Assignment:
    """An item as one rater sees it: the answers in this showing's left/right order."""

    id: int
    item_id: int
    prompt: str
    left: str
    right: str
    x_on_left: bool


def run_methods(run_dir: Path) -> dict[tuple[str, int, int], dict[str, dict]]:
    """The answers of a bench run: (suite, prompt index, seed) -> method label -> row (rows with errors left out)."""
    answers: dict[tuple[str, int, int], dict[str, dict]] = {}
    for manifest in sorted(run_dir.glob("*.manifest.json")):
        suite = manifest.name.removesuffix(".manifest.json")
        for row in read_rows(run_dir / f"{suite}.jsonl", checked=True):
            if not row.get("error"):
                answers.setdefault((suite, row["prompt_index"], row["seed"]), {})[row["method"]] = row
    return answers


def resolve_pairs(run_dir: Path, pair: str | None) -> list[tuple[str, str]]:
    """`--pair A,B` (or every pair of the run's methods), each as (x, y) with x < y, checked against the run."""
    if not run_dir.is_dir() or not any(run_dir.glob("*.manifest.json")):
        raise DGAlignError(f"no bench run in {run_dir} (no *.manifest.json); run `dgalign bench --out {run_dir}` first")
    methods = sorted({m for by_method in run_methods(run_dir).values() for m in by_method})
    if pair is None:
        if len(methods) < 2:
            raise DGAlignError(f"{run_dir} has answers of {len(methods)} method(s); rating needs two")
        return list(combinations(methods, 2))
    names = [m.strip() for m in pair.split(",")]
    if len(names) != 2 or names[0] == names[1] or not all(names):
        raise DGAlignError(f"--pair takes two different method labels A,B, got {pair!r}")
    unknown = [m for m in names if m not in methods]
    if unknown:
        raise DGAlignError(f"--pair: {', '.join(unknown)} not in the run; its methods: {', '.join(methods)}")
    return [tuple(sorted(names))]


class Store:
    """The ratings database of one run directory."""

    def __init__(self, run_dir: str | Path):
        self.run_dir = Path(run_dir).expanduser()
        self.path = self.run_dir / DB_NAME
        with self._connect() as conn:
            conn.execute("PRAGMA journal_mode=WAL")
            conn.executescript(SCHEMA)
            conn.execute("INSERT OR IGNORE INTO meta VALUES ('secret', ?)", (secrets.token_hex(32),))
            self.secret = conn.execute("SELECT value FROM meta WHERE key = 'secret'").fetchone()[0]

    @contextmanager
    def _connect(self) -> Iterator[sqlite3.Connection]:
        conn = sqlite3.connect(self.path, timeout=60, isolation_level=None)
        conn.execute("PRAGMA synchronous=FULL")
        conn.execute("PRAGMA foreign_keys=ON")
        try:
            yield conn
        finally:
            conn.close()

    @contextmanager
    def _write(self) -> Iterator[sqlite3.Connection]:
        """One write transaction: committed whole on success, rolled back on any exception."""
        with self._connect() as conn:
            conn.execute("BEGIN IMMEDIATE")
            try:
                yield conn
            except BaseException:
                conn.execute("ROLLBACK")
                raise
            conn.execute("COMMIT")

    # -- items --------------------------------------------------------------------------------------
    def sync_items(self, pairs: list[tuple[str, str]]) -> list[int]:
        """Add an item per (prompt, seed) where both methods of a pair answered; the ids of all such items,
        in the order raters are shown them (a random order, fixed when an item is first added)."""
        rng = random.Random()
        with self._write() as conn:
            for (suite, index, seed), by_method in run_methods(self.run_dir).items():
                for x, y in pairs:
                    if x in by_method and y in by_method:
                        conn.execute(
                            "INSERT OR IGNORE INTO items (suite, prompt_index, seed, method_x, method_y, prompt, "
                            "completion_x, completion_y, position) VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?)",
                            (suite, index, seed, x, y, by_method[x]["prompt"], by_method[x]["completion"],
                             by_method[y]["completion"], rng.random()))
            wanted = set(pairs)
            rows = conn.execute("SELECT id, method_x, method_y FROM items ORDER BY position").fetchall()
        return [i for i, x, y in rows if (x, y) in wanted]

    def item(self, item_id: int) -> dict:
        with self._connect() as conn:
            conn.row_factory = sqlite3.Row
            return dict(conn.execute("SELECT * FROM items WHERE id = ?", (item_id,)).fetchone())

    # -- raters -------------------------------------------------------------------------------------
    def invite(self, name: str) -> str:
        """A new sign-in token for `name` (its hash is stored, the token is not); an older one stops working."""
        name = check_name(name)
        token = secrets.token_urlsafe(18)
        with self._write() as conn:
            conn.execute("INSERT INTO raters (name, token_sha256) VALUES (?, ?) "
                         "ON CONFLICT (name) DO UPDATE SET token_sha256 = excluded.token_sha256", (name, _sha(token)))
        return token

    def sign_in(self, *, name: str | None = None, token: str | None = None) -> str:
        """The rater a name or an invite token stands for; a name that holds an invite needs its token."""
        if token is not None:
            with self._connect() as conn:
                found = conn.execute("SELECT name FROM raters WHERE token_sha256 = ?", (_sha(token),)).fetchone()
            if found is None:
                raise DGAlignError("unknown invite token")
            return found[0]
        name = check_name(name or "")
        with self._write() as conn:
            row = conn.execute("SELECT token_sha256 FROM raters WHERE name = ?", (name,)).fetchone()
            if row is not None and row[0] is not None:
                raise DGAlignError(f"{name!r} was invited: sign in with the invite token")
            conn.execute("INSERT OR IGNORE INTO raters (name) VALUES (?)", (name,))
        return name

    def cookie(self, rater: str) -> str:
        """A signed cookie value naming the rater."""
        return f"{rater.encode().hex()}.{self._mac(rater)}"

    def rater_of(self, cookie: str | None) -> str | None:
        """The rater a cookie names, if its signature holds."""
        name_hex, _, mac = (cookie or "").partition(".")
        try:
            rater = bytes.fromhex(name_hex).decode()
        except ValueError:
            return None
        return rater if hmac.compare_digest(mac, self._mac(rater)) else None

    def _mac(self, rater: str) -> str:
        return hmac.new(self.secret.encode(), rater.encode(), hashlib.sha256).hexdigest()

    # -- assignments and ratings --------------------------------------------------------------------
    def next_assignment(self, rater: str, items: list[int]) -> Assignment | None:
        """The rater's open assignment among `items`, else a new one on the first item they have not been
        shown (random left/right order); None when every item was rated or skipped."""
        with self._write() as conn:
            seen = dict(conn.execute("SELECT item_id, status FROM assignments WHERE rater = ?", (rater,)).fetchall())
            open_item = next((i for i in items if seen.get(i) == "open"), None)
            fresh = next((i for i in items if i not in seen), None)
            if open_item is None and fresh is None:
                return None
            if open_item is None:
                conn.execute("INSERT INTO assignments (item_id, rater, x_on_left) VALUES (?, ?, ?)",
                             (fresh, rater, secrets.randbelow(2)))
            row = conn.execute(
                "SELECT a.id, a.item_id, a.x_on_left, i.prompt, i.completion_x, i.completion_y FROM assignments a "
                "JOIN items i ON i.id = a.item_id WHERE a.rater = ? AND a.item_id = ?",
                (rater, open_item if open_item is not None else fresh)).fetchone()
        aid, item_id, x_on_left, prompt, cx, cy = row
        left, right = (cx, cy) if x_on_left else (cy, cx)
        return Assignment(aid, item_id, prompt, left, right, bool(x_on_left))

    def progress(self, rater: str, items: list[int]) -> tuple[int, int]:
        """(items rated or skipped by the rater, items) among `items`."""
        with self._connect() as conn:
            done = {i for (i,) in conn.execute(
                "SELECT item_id FROM assignments WHERE rater = ? AND status != 'open'", (rater,))}
        return len(done & set(items)), len(items)

    def rate(self, rater: str, assignment_id: int, sides: dict[str, str], *, score_left: int | None = None,
             score_right: int | None = None, note: str = "") -> tuple[int, bool]:
        """Store a rating of an assignment (`sides`: dimension -> left | tie | right) with its verdicts, in one
        transaction; returns (rating id, whether it was stored before: a repeated post changes nothing)."""
        bad = {d: s for d, s in sides.items() if s not in SIDES}
        if not sides or bad:
            raise DGAlignError(f"a rating gives each dimension one of {', '.join(SIDES)}; got {sides}")
        for score in (score_left, score_right):
            if score is not None and not 1 <= score <= 5:
                raise DGAlignError(f"scores are 1..5, got {score}")
        with self._write() as conn:
            x_on_left, status = self._own(conn, rater, assignment_id)
            done = conn.execute("SELECT id FROM ratings WHERE assignment_id = ?", (assignment_id,)).fetchone()
            if done is not None:
                return done[0], True
            if status == "skipped":
                raise DGAlignError(f"assignment {assignment_id} was skipped")
            to_xy = {"left": "x", "right": "y"} if x_on_left else {"left": "y", "right": "x"}
            winners = {d: to_xy.get(s, "tie") for d, s in sides.items()}
            scores = (score_left, score_right) if x_on_left else (score_right, score_left)
            return self._insert(conn, assignment_id, rater, winners, scores, note), False

    def skip(self, rater: str, assignment_id: int) -> None:
        """Close an open assignment unrated: the rater is not shown that item again."""
        with self._write() as conn:
            _, status = self._own(conn, rater, assignment_id)
            if status == "open":
                conn.execute("UPDATE assignments SET status = 'skipped', done_at = strftime('%Y-%m-%dT%H:%M:%fZ', "
                             "'now') WHERE id = ?", (assignment_id,))

    def add_judged(self, rater: str, item_id: int, winners: dict[str, str], note: str) -> bool:
        """A judge's verdicts (dimension -> x | tie | y) on an item, with its assignment, in one transaction;
        False (nothing written) if this rater already rated the item."""
        with self._write() as conn:
            conn.execute("INSERT OR IGNORE INTO raters (name) VALUES (?)", (rater,))
            if conn.execute("SELECT 1 FROM assignments WHERE item_id = ? AND rater = ?", (item_id, rater)).fetchone():
                return False
            aid = conn.execute("INSERT INTO assignments (item_id, rater, x_on_left) VALUES (?, ?, 1)",
                               (item_id, rater)).lastrowid
            self._insert(conn, aid, rater, winners, (None, None), note)
        return True

    def judged(self, rater: str, items: list[int]) -> list[tuple[int, str]]:
        """(item id, note) of a rater's ratings among `items`."""
        with self._connect() as conn:
            rows = conn.execute("SELECT item_id, note FROM ratings WHERE rater = ?", (rater,)).fetchall()
        wanted = set(items)
        return [(i, note) for i, note in rows if i in wanted]

    @staticmethod
    def _own(conn: sqlite3.Connection, rater: str, assignment_id: int) -> tuple[int, str]:
        row = conn.execute("SELECT x_on_left, status FROM assignments WHERE id = ? AND rater = ?",
                           (assignment_id, rater)).fetchone()
        if row is None:
            raise DGAlignError(f"assignment {assignment_id} is not {rater!r}'s")
        return row

    @staticmethod
    def _insert(conn: sqlite3.Connection, assignment_id: int, rater: str, winners: dict[str, str],
                scores: tuple[int | None, int | None], note: str) -> int:
        item_id = conn.execute("SELECT item_id FROM assignments WHERE id = ?", (assignment_id,)).fetchone()[0]
        rid = conn.execute("INSERT INTO ratings (assignment_id, item_id, rater, score_x, score_y, note) "
                           "VALUES (?, ?, ?, ?, ?, ?)", (assignment_id, item_id, rater, *scores, note)).lastrowid
        conn.executemany("INSERT INTO verdicts (rating_id, dimension, winner) VALUES (?, ?, ?)",
                         [(rid, d, w) for d, w in winners.items()])
        conn.execute("UPDATE assignments SET status = 'rated', done_at = strftime('%Y-%m-%dT%H:%M:%fZ', 'now') "
                     "WHERE id = ?", (assignment_id,))
        return rid


def check_name(name: str) -> str:
    name = name.strip()
    if not 1 <= len(name) <= MAX_NAME:
        raise DGAlignError(f"a rater's name is 1..{MAX_NAME} characters, got {len(name)}")
    if name.startswith(JUDGE_PREFIX):
        raise DGAlignError(f"names starting with {JUDGE_PREFIX!r} are kept for LM judges")
    return name


def _sha(token: str) -> str:
    return hashlib.sha256(token.encode()).hexdigest()
