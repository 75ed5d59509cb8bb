"""Human (and LM-judge) pairwise ratings of a bench run: the ratings.sqlite schema, the statistics, the report section.

`dgalign rate` and `dgalign judge` (dgalign.rate) write RUN_DIR/ratings.sqlite with the schema below;
`dgalign report` reads it here. An *item* is one prompt (suite, prompt index, seed) and the answers of
two methods x < y (sorted labels); a verdict says which of x, y won one dimension, or a tie.

Statistics, per method pair and dimension, humans and each judge apart:
- win / tie / loss fractions with 95% percentile intervals from a bootstrap over prompts (the prompt is
  the unit that varies; several ratings of one prompt move together);
- a Bradley–Terry ranking (Bradley & Terry 1952), fitted by Hunter's (2004) MM algorithm, ties as half
  a win each, with a weak prior of one virtual tie per compared pair so an undefeated method stays finite;
- inter-rater agreement on the three categories {x, tie, y}: Cohen's κ (Cohen 1960) when exactly two
  humans rated, else Fleiss' κ (Fleiss 1971) over items rated at least twice; a judge against the humans
  by Cohen's κ over (human verdict, judge verdict) pairs of the same item and dimension.
"""

from __future__ import annotations

import math
import sqlite3
from dataclasses import dataclass
from pathlib import Path

import numpy as np

DB_NAME = "ratings.sqlite"  # in the run directory
JUDGE_PREFIX = "judge:"  # raters named judge:<model> are LM judges
CATEGORIES = ("x", "tie", "y")
BOOTSTRAP = 2000  # bootstrap resamples of the prompts
BT_PRIOR = 1.0  # virtual ties per compared pair in the Bradley–Terry fit

_NOW = "(strftime('%Y-%m-%dT%H:%M:%fZ', 'now'))"
SCHEMA = f"""
CREATE TABLE IF NOT EXISTS meta (key TEXT PRIMARY KEY, value TEXT NOT NULL);
CREATE TABLE IF NOT EXISTS items (
  id INTEGER PRIMARY KEY,
  suite TEXT NOT NULL, prompt_index INTEGER NOT NULL, seed INTEGER NOT NULL,
  method_x TEXT NOT NULL, method_y TEXT NOT NULL CHECK (method_x < method_y),
  prompt TEXT NOT NULL, completion_x TEXT NOT NULL, completion_y TEXT NOT NULL,
  position REAL NOT NULL,  -- random, fixed at creation: every rater walks the items in this order
  created_at TEXT NOT NULL DEFAULT {_NOW},
  UNIQUE (suite, prompt_index, seed, method_x, method_y));
CREATE TABLE IF NOT EXISTS raters (
  name TEXT PRIMARY KEY,
  token_sha256 TEXT UNIQUE,  -- set by `dgalign rate --invite NAME`: the name then signs in by token only
  created_at TEXT NOT NULL DEFAULT {_NOW});
CREATE TABLE IF NOT EXISTS assignments (  -- an item shown to a rater: at most once per (item, rater)
  id INTEGER PRIMARY KEY,
  item_id INTEGER NOT NULL REFERENCES items (id), rater TEXT NOT NULL REFERENCES raters (name),
  x_on_left INTEGER NOT NULL,  -- the random left/right order of this showing
  status TEXT NOT NULL DEFAULT 'open' CHECK (status IN ('open', 'rated', 'skipped')),
  created_at TEXT NOT NULL DEFAULT {_NOW}, done_at TEXT,
  UNIQUE (item_id, rater));
CREATE TABLE IF NOT EXISTS ratings (  -- written with its verdicts in one transaction
  id INTEGER PRIMARY KEY,
  assignment_id INTEGER NOT NULL UNIQUE REFERENCES assignments (id),
  item_id INTEGER NOT NULL REFERENCES items (id), rater TEXT NOT NULL,
  score_x INTEGER CHECK (score_x BETWEEN 1 AND 5), score_y INTEGER CHECK (score_y BETWEEN 1 AND 5),
  note TEXT NOT NULL DEFAULT '',
  created_at TEXT NOT NULL DEFAULT {_NOW});
CREATE TABLE IF NOT EXISTS verdicts (
  rating_id INTEGER NOT NULL REFERENCES ratings (id), dimension TEXT NOT NULL,
  winner TEXT NOT NULL CHECK (winner IN ('x', 'tie', 'y')),
  PRIMARY KEY (rating_id, dimension));
"""


@dataclass(frozen=True)
class Verdict:
    """One rater's verdict on one item and dimension."""

    item: int
    prompt: tuple[str, int]  # (suite, prompt index): the bootstrap's unit
    pair: tuple[str, str]  # (method x, method y), x < y
    rater: str
    dimension: str
    winner: str  # x | tie | y


def read_verdicts(path: Path) -> list[Verdict]:
    """Every verdict in a ratings database (empty when there is none)."""
    if not path.exists():
        return []
    conn = sqlite3.connect(path)
    try:
        rows = conn.execute(
            "SELECT i.id, i.suite, i.prompt_index, i.method_x, i.method_y, r.rater, v.dimension, v.winner "
            "FROM verdicts v JOIN ratings r ON r.id = v.rating_id JOIN items i ON i.id = r.item_id "
            "ORDER BY r.id, v.rowid").fetchall()
    finally:
        conn.close()
    return [Verdict(item, (suite, index), (x, y), rater, dim, winner)
            for item, suite, index, x, y, rater, dim, winner in rows]


# -- statistics -----------------------------------------------------------------------------------
def win_tie_loss(verdicts: list[Verdict], *, resamples: int = BOOTSTRAP, seed: int = 0) -> dict:
    """Fractions of x wins, ties, y wins with 95% bootstrap intervals, prompts resampled with replacement."""
    prompts = sorted({v.prompt for v in verdicts})
    where = {p: i for i, p in enumerate(prompts)}
    counts = np.zeros((len(prompts), 3))  # (P, 3): x wins, ties, y wins per prompt
    for v in verdicts:
        counts[where[v.prompt], CATEGORIES.index(v.winner)] += 1
    point = counts.sum(0) / counts.sum()
    draws = np.random.default_rng(seed).integers(0, len(prompts), (resamples, len(prompts)))  # (R, P)
    boot = counts[draws].sum(1)  # (R, 3)
    boot = boot / boot.sum(-1, keepdims=True)
    lo, hi = np.percentile(boot, [2.5, 97.5], axis=0)
    return {"n": len(verdicts), "prompts": len(prompts),
            **{c: {"mean": float(point[k]), "lo": float(lo[k]), "hi": float(hi[k])} for k, c in enumerate(CATEGORIES)}}


def bradley_terry(outcomes: list[tuple[str, str, float]], *, prior: float = BT_PRIOR, iters: int = 10_000,
                  tol: float = 1e-12) -> dict[str, float]:
    """Bradley–Terry strengths θ_i = log p_i (mean 0), P(i beats j) = p_i / (p_i + p_j), by Hunter's MM.

    `outcomes`: (i, j, s) with s = 1 if i won, 0.5 a tie, 0 if j won. `prior` virtual games per compared
    pair, split evenly. MM step: p_i ← W_i / Σ_j N_ij / (p_i + p_j) (W: wins, N: games)."""
    methods = sorted({m for i, j, _ in outcomes for m in (i, j)})
    k = {m: n for n, m in enumerate(methods)}
    wins = np.zeros((len(methods), len(methods)))  # wins[i, j]: i's wins over j
    for i, j, s in outcomes:
        wins[k[i], k[j]] += s
        wins[k[j], k[i]] += 1 - s
    games = wins + wins.T
    compared = games > 0
    wins = wins + prior / 2 * compared
    games = games + prior * compared
    w = wins.sum(1)
    p = np.ones(len(methods))
    for _ in range(iters):
        new = w / (games / (p[:, None] + p[None, :])).sum(1)
        new = new / np.exp(np.log(new).mean())
        done = np.abs(new - p).max() < tol
        p = new
        if done:
            break
    return {m: float(math.log(p[k[m]])) for m in methods}


def cohen_kappa(a: list[str], b: list[str]) -> float:
    """Cohen's κ = (p_o − p_e) / (1 − p_e) of two raters' labels on the same items; NaN if p_e = 1."""
    a_, b_ = np.array(a), np.array(b)
    po = float((a_ == b_).mean())
    pe = sum(float((a_ == c).mean() * (b_ == c).mean()) for c in set(a) | set(b))
    return math.nan if pe == 1 else (po - pe) / (1 - pe)


def fleiss_kappa(table: np.ndarray) -> float:
    """Fleiss' κ of an (items, categories) count table, every item rated at least twice (counts may vary:
    P_i = Σ_j n_ij(n_ij − 1) / (n_i(n_i − 1)), p_j = Σ_i n_ij / Σ n_i); NaN if chance agreement is 1."""
    n = table.sum(1)
    agree = ((table * (table - 1)).sum(1) / (n * (n - 1))).mean()
    pj = table.sum(0) / n.sum()
    pe = float((pj**2).sum())
    return math.nan if pe == 1 else float((agree - pe) / (1 - pe))


def agreement(verdicts: list[Verdict]) -> dict:
    """Inter-rater κ of one dimension's verdicts: Cohen's for two raters, else Fleiss' over items rated ≥ 2 times."""
    raters = sorted({v.rater for v in verdicts})
    by_item: dict[int, dict[str, str]] = {}
    for v in verdicts:
        by_item.setdefault(v.item, {})[v.rater] = v.winner
    shared = {i: r for i, r in by_item.items() if len(r) >= 2}
    if len(raters) == 2:
        a, b = raters
        both = [r for r in shared.values() if a in r and b in r]
        kappa = cohen_kappa([r[a] for r in both], [r[b] for r in both]) if both else math.nan
        return {"raters": 2, "items": len(both), "kappa": kappa, "kind": "Cohen"}
    table = np.array([[sum(w == c for w in r.values()) for c in CATEGORIES] for r in shared.values()])
    kappa = fleiss_kappa(table) if len(shared) else math.nan
    return {"raters": len(raters), "items": len(shared), "kappa": kappa, "kind": "Fleiss"}


def judge_agreement(human: list[Verdict], judge: list[Verdict]) -> dict:
    """A judge against the humans: Cohen's κ and raw agreement over (human, judge) verdict pairs of an item."""
    said = {(v.item, v.dimension): v.winner for v in judge}
    pairs = [(v.winner, said[(v.item, v.dimension)]) for v in human if (v.item, v.dimension) in said]
    if not pairs:
        return {"pairs": 0, "kappa": math.nan, "agree": math.nan}
    a, b = zip(*pairs, strict=True)
    return {"pairs": len(pairs), "kappa": cohen_kappa(list(a), list(b)), "agree": float(np.mean(np.array(a) == b))}


def summarise(verdicts: list[Verdict]) -> dict:
    """Every statistic of a run's verdicts: win/tie/loss per (group, pair, dimension), Bradley–Terry per
    (group, dimension), human agreement per dimension and each judge's agreement with the humans."""
    groups = {"humans": [v for v in verdicts if not v.rater.startswith(JUDGE_PREFIX)]}
    groups |= {r: [v for v in verdicts if v.rater == r]
               for r in sorted({v.rater for v in verdicts if v.rater.startswith(JUDGE_PREFIX)})}
    groups = {g: vs for g, vs in groups.items() if vs}
    dims = list(dict.fromkeys(v.dimension for v in verdicts))
    out: dict = {"ratings": len({(v.item, v.rater) for v in verdicts}),
                 "raters": sorted({v.rater for v in groups.get("humans", [])}), "dimensions": dims, "groups": {}}
    for g, vs in groups.items():
        pairs = sorted({v.pair for v in vs})
        wtl = {f"{x} vs {y}": {d: win_tie_loss(sel) for d in dims
                               if (sel := [v for v in vs if v.pair == (x, y) and v.dimension == d])}
               for x, y in pairs}
        bt = {d: bradley_terry([(*v.pair, {"x": 1.0, "tie": 0.5, "y": 0.0}[v.winner]) for v in vs if v.dimension == d])
              for d in dims if any(v.dimension == d for v in vs)}
        out["groups"][g] = {"pairs": wtl, "bradley_terry": bt}
    humans = groups.get("humans", [])
    out["agreement"] = {d: agreement([v for v in humans if v.dimension == d]) for d in dims
                        if any(v.dimension == d for v in humans)}
    out["judges"] = {g: {d: judge_agreement([v for v in humans if v.dimension == d],
                                            [v for v in vs if v.dimension == d]) for d in dims}
                     for g, vs in groups.items() if g != "humans" and humans}
    return out


# -- the report section ---------------------------------------------------------------------------
def _f(x: float, digits: int = 2) -> str:
    return "–" if x is None or math.isnan(x) else f"{x:.{digits}f}"


def _ci(s: dict) -> str:
    return f"{s['mean']:.2f} [{s['lo']:.2f}, {s['hi']:.2f}]"


def markdown(s: dict, plot: str | None) -> str:
    out = ["## Human evaluation\n",
           f"{s['ratings']} ratings · human raters: {', '.join(f'`{r}`' for r in s['raters']) or '–'} · judges: "
           f"{', '.join(f'`{g}`' for g in s['groups'] if g != 'humans') or '–'} · from `{DB_NAME}` "
           "(`dgalign rate`, `dgalign judge`).\n",
           "Win / tie / loss of the first method of each pair against the second: fraction of verdicts with a "
           "95% bootstrap interval over prompts; n verdicts on P prompts. Position bias of the judges is removed "
           "by asking both orders: inconsistent verdicts count as ties.\n"]
    lines = [[f"`{g}`", f"`{pair.replace(' vs ', '` vs `')}`", d, f"{w['n']} / {w['prompts']}", _ci(w["x"]),
              _ci(w["tie"]), _ci(w["y"])]
             for g, group in s["groups"].items() for pair, by_dim in group["pairs"].items() for d, w in by_dim.items()]
    out.append(_table(["raters", "pair (first vs second)", "dimension", "n / P", "first wins", "tie", "second wins"],
                      lines))
    out.append("### Bradley–Terry ranking\n\nStrength θ = log p (mean 0; P(i beats j) = e^θi / (e^θi + e^θj)), ties "
               f"half a win, {BT_PRIOR:g} virtual tie per compared pair; methods by the first dimension's θ.\n")
    for g, group in s["groups"].items():
        bt = group["bradley_terry"]
        dims = list(bt)
        ranked = sorted(bt[dims[0]], key=lambda m: -bt[dims[0]][m])
        out.append(f"`{g}`:\n")
        out.append(_table(["rank", "method", *dims],
                          [[str(n), f"`{m}`", *(_f(bt[d].get(m, math.nan)) for d in dims)]
                           for n, m in enumerate(ranked, start=1)]))
    if s["agreement"]:
        out.append("### Agreement\n\nCohen's κ for two human raters (items both rated), Fleiss' κ for more (items "
                   "rated at least twice); a judge against the humans: Cohen's κ and raw agreement over (human, "
                   "judge) verdicts on the same item.\n")
        judges = list(s["judges"])
        lines = [[d, f"{a['kind']} κ {_f(a['kappa'])} ({a['raters']} raters, {a['items']} items)",
                  *(f"κ {_f(s['judges'][j][d]['kappa'])}, {_f(s['judges'][j][d]['agree'])} agree "
                    f"({s['judges'][j][d]['pairs']})" for j in judges)]
                 for d, a in s["agreement"].items()]
        out.append(_table(["dimension", "humans", *(f"`{j}` vs humans" for j in judges)], lines))
    if plot:
        out.append(f"![{plot}](plots/{plot})\n")
    return "\n".join(out)


def _table(header: list[str], lines: list[list[str]]) -> str:
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"


def plot(s: dict, path: Path) -> None:
    """Stacked win / tie / loss bars per (raters, pair, dimension), the first method's share with its interval."""
    import io

    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    bars = [(f"{g}: {pair} · {d}", w) for g, group in s["groups"].items()
            for pair, by_dim in group["pairs"].items() for d, w in by_dim.items()]
    fig, ax = plt.subplots(figsize=(8, 0.6 + 0.35 * len(bars)))
    ys = np.arange(len(bars))[::-1]
    left = np.zeros(len(bars))
    for c, colour, label in [("x", "C2", "first wins"), ("tie", "0.75", "tie"), ("y", "C3", "second wins")]:
        share = np.array([w[c]["mean"] for _, w in bars])
        ax.barh(ys, share, left=left, color=colour, label=label)
        left += share
    x = np.array([w["x"]["mean"] for _, w in bars])
    err = np.array([[w["x"]["mean"] - w["x"]["lo"], w["x"]["hi"] - w["x"]["mean"]] for _, w in bars]).T
    ax.errorbar(x, ys, xerr=err, fmt="none", ecolor="k", capsize=3)
    ax.set_yticks(ys, [b for b, _ in bars], fontsize=8)
    ax.set_xlim(0, 1)
    ax.set_xlabel("fraction of verdicts (bar: first method's wins, 95% bootstrap interval over prompts)")
    ax.legend(fontsize=7, loc="lower right")
    ax.set_title("human evaluation: pairwise verdicts", fontsize=10)
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    plt.close(fig)
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def human_section(run: Path, plot_dir: Path) -> tuple[str, dict] | None:
    """The report's human-evaluation section and its summary, or None when the run has no ratings."""
    verdicts = read_verdicts(run / DB_NAME)
    if not verdicts:
        return None
    s = summarise(verdicts)
    plot(s, plot_dir / "human-eval.png")
    return markdown(s, "human-eval.png"), s

