"""`dgalign report DIR`: a bench run's tables (report.md, summary.json) and plots (plots/*.png).

Per suite, per method: means with 95% Student-t intervals over rows (one row per prompt × seed),
set-level diversity, cost per answer; and four plots that ask "which method gives the most reward
for the least compute and the least drift from the base model?":
reward vs wall time per token · reward vs KL with the best-of-N bound curve · gold vs proxy reward
(over-optimisation) · the reward–KL frontier of β sweeps (a sampler run at several β); and, when the run
holds ratings (`dgalign rate`, `dgalign judge`), the human-evaluation section (eval/human.py).
Every file is written atomically.
"""

from __future__ import annotations

import io
import json
import math
from pathlib import Path

from ..config import check_out_dir
from ..errors import DGAlignError
from ..rewards import REWARDS, reward_names
from . import metrics
from .harness import read_manifest, read_rows, write_atomic
from .human import human_section

BON_CURVE_N = (1, 2, 3, 4, 6, 8, 12, 16, 24, 32, 48, 64, 96, 128)  # N of the best-of-N curve


# -- summaries ------------------------------------------------------------------------------------
def _stat(rows: list[dict], get) -> dict:
    return metrics.summarise([get(r) for r in rows])


def summarise_method(rows: list[dict], base: dict | None, win_key) -> dict:
    """Every metric of one method's rows; `base` maps (prompt, seed) to the base row, `win_key` reads the win score."""
    ok = [r for r in rows if not r.get("error")]
    texts = [r["completion"] for r in ok]
    golds = sorted({g for r in ok for g in r["gold"]})
    tokens = sum(r["num_tokens"] for r in ok)
    wall = sum(r["cost"]["wall_s"] for r in ok)
    out = {
        "sampler": rows[0]["sampler"],
        "betas": sorted({r["beta"] for r in rows}),
        "rows": len(rows),
        "errors": len(rows) - len(ok),
        "first_error": next((r["error"] for r in rows if r.get("error")), None),
        "proxy": _stat(ok, lambda r: r["proxy"]),
        "gold": {g: _stat(ok, lambda r, g=g: r["gold"].get(g)) for g in golds},
        "kl": _stat(ok, lambda r: r["kl"]),
        "kl_bound": next((r["kl_bound"] for r in ok if r.get("kl_bound") is not None), None),
        "logprob_per_token": _stat(ok, lambda r: r["logprob_per_token"]),
        "ppl": _stat(ok, lambda r: r["ppl"]),
        "num_tokens": _stat(ok, lambda r: r["num_tokens"]),
        "distinct_1": metrics.distinct_n(texts, 1) if texts else math.nan,
        "distinct_2": metrics.distinct_n(texts, 2) if texts else math.nan,
        "self_bleu": metrics.self_bleu(texts),
        "wall_s": _stat(ok, lambda r: r["cost"]["wall_s"]),
        "s_per_token": wall / tokens if tokens else math.nan,
        "tokens_per_s": tokens / wall if wall else math.nan,
        "lm_forward_tokens": _stat(ok, lambda r: r["cost"]["lm_forward_tokens"]),
        "reward_calls": _stat(ok, lambda r: r["cost"]["reward_calls"]),
        "energy_j": _stat(ok, lambda r: r["cost"]["energy_j"]),
        "peak_rss_mb": max((r["cost"]["peak_rss_mb"] for r in ok), default=math.nan),
    }
    refs = [r for r in ok if r.get("reference")]
    if refs:
        keys = dict.fromkeys(k for r in refs for k in r["reference"])  # bleu, rouge_l, bertscore (+ TruthfulQA's)
        out["reference"] = {k: _stat(refs, lambda r, k=k: r["reference"].get(k)) for k in keys}
    if base is not None:
        mine = {(r["prompt_index"], r["seed"]): win_key(r) for r in ok}
        theirs = {k: win_key(r) for k, r in base.items()}
        out["win_rate"] = metrics.summarise(metrics.win_rate(mine, theirs))
    return out


def summarise_suite(rows: list[dict], manifest: dict) -> dict:
    labels = list(dict.fromkeys([*manifest.get("methods", {}), *(r["method"] for r in rows)]))
    labels = [m for m in labels if any(r["method"] == m for r in rows)]
    by_label = {m: [r for r in rows if r["method"] == m] for m in labels}
    base_label = "base" if "base" in by_label else next((m for m in labels if by_label[m][0]["sampler"] == "base"), None)
    gold = manifest["identity"]["gold"]
    win_by = gold[0] if gold else None
    win_key = (lambda r: r["gold"][win_by]) if win_by else (lambda r: r["proxy"])
    base = None
    if base_label is not None:
        base = {(r["prompt_index"], r["seed"]): r for r in by_label[base_label] if not r.get("error")}
    return {
        "identity": manifest["identity"],
        "base": base_label,
        "win_by": win_by or f"{manifest['identity']['reward']} (proxy; the suite has no gold reward)",
        "base_proxy": [r["proxy"] for r in (base or {}).values()],
        "methods": {m: summarise_method(by_label[m], base if m != base_label else None, win_key) for m in labels},
    }


# -- markdown -------------------------------------------------------------------------------------
def _fmt(x: float | None, digits: int = 3) -> str:
    if x is None or (isinstance(x, float) and math.isnan(x)):
        return "–"
    return f"{x:.{digits}f}" if abs(x) < 1e4 else f"{x:.3g}"


def _sig(x: float | None) -> str:
    """Three significant figures (costs span orders of magnitude)."""
    return "–" if x is None or math.isnan(x) else f"{x:.3g}"


def _pm(stat: dict, digits: int | None = 3) -> str:
    """mean ± CI half-width, `digits` decimals (None: three significant figures)."""
    fmt = _sig if digits is None else (lambda x: _fmt(x, digits))
    if stat["n"] == 0:
        return "–"
    if math.isnan(stat["ci"]):
        return fmt(stat["mean"])
    return f"{fmt(stat['mean'])} ± {fmt(stat['ci'])}"


def _rate(stat: dict) -> str:
    """1 − mean, with the mean's interval."""
    return _pm({**stat, "mean": 1 - stat["mean"]}) if stat["n"] else "–"


def _table(header: list[str], lines: list[list[str]]) -> str:
    rows = [header, ["---"] * len(header), *lines]
    return "\n".join("| " + " | ".join(r) + " |" for r in rows) + "\n"


def suite_markdown(name: str, s: dict, manifest: dict, plots: list[str]) -> str:
    ident, methods = s["identity"], s["methods"]
    golds = sorted({g for m in methods.values() for g in m["gold"]})
    has_refs = any("reference" in m for m in methods.values())
    inv = manifest["invocations"][-1]
    out = [f"## {name}\n",
           f"Model `{ident['model']}` · proxy reward `{ident['reward']}` · gold {', '.join(f'`{g}`' for g in golds) or '–'}"
           f" · {ident['max_new_tokens']} new tokens · β {ident['beta']} (unless a method sets it) · "
           f"{'raw continuation' if ident['raw'] else 'chat template'} · budget-matched "
           f"{ident['budget_matched'] or 'no'} · perplexity judge `{ident['ppl_model'] or 'none'}`\n",
           f"Command: `{' '.join(inv['argv'] or [])}`\n" if inv.get("argv") else "",
           f"Win-rate vs `{s['base']}` by `{s['win_by']}`, paired by (prompt, seed), ties count ½.\n"]
    header = ["method", "n", "proxy", *(f"gold {g}" for g in golds), "win-rate", "KL", "logp/tok", "ppl",
              "distinct-1", "distinct-2", "self-BLEU"]
    if has_refs:
        header += ["BLEU", "ROUGE-L", "BERTScore"]
    lines = []
    for label, m in methods.items():
        kl = _pm(m["kl"])
        if m["kl_bound"] is not None and m["kl"]["n"] == 0:
            kl = f"≤ {_fmt(m['kl_bound'])}"
        line = [f"`{label}`", str(m["rows"] - m["errors"]), _pm(m["proxy"]),
                *(_pm(m["gold"][g]) if g in m["gold"] else "–" for g in golds),
                _pm(m["win_rate"], 2) if "win_rate" in m else "–", kl, _pm(m["logprob_per_token"], 2),
                _pm(m["ppl"], 1), _fmt(m["distinct_1"]), _fmt(m["distinct_2"]), _fmt(m["self_bleu"])]
        if has_refs:
            line += [_pm(m["reference"][k]) if "reference" in m else "–" for k in ("bleu", "rouge_l", "bertscore")]
        lines.append(line)
    out += ["### Reward, drift, fluency, diversity\n", _table(header, lines)]
    base_fwd = methods[s["base"]]["lm_forward_tokens"]["mean"] if s["base"] else math.nan
    cost_lines = [[f"`{label}`", _pm(m["wall_s"], None), _sig(m["s_per_token"]), _sig(m["tokens_per_s"]),
                   _pm(m["lm_forward_tokens"], None), _fmt(m["lm_forward_tokens"]["mean"] / base_fwd, 2),
                   _pm(m["reward_calls"], None), _pm(m["energy_j"], None), _fmt(m["peak_rss_mb"], 0),
                   _pm(m["num_tokens"], 1)]
                  for label, m in methods.items()]
    out += ["### Cost per answer\n", _table(
        ["method", "wall s", "s/token", "tokens/s", "LM fwd tokens", "× base", "reward calls", "energy J",
         "peak RSS MB", "tokens"], cost_lines)]
    tqa = [f"{s}_{k}" for s in ("bleu", "rouge_l", "bertscore") for k in ("max", "diff", "acc")]
    if any(k in m.get("reference", {}) for m in methods.values() for k in tqa):
        out += ["### TruthfulQA generation metrics\n",
                "Per answer: max similarity to the true answers (`max`), minus max to the false ones (`diff`), "
                "1 if the true side wins (`acc`) — Lin et al. 2022, with BERTScore for BLEURT.\n",
                _table(["method", *tqa], [[f"`{label}`", *(_pm(m["reference"][k]) if k in m.get("reference", {})
                                                            else "–" for k in tqa)] for label, m in methods.items()])]
    rates = {g: REWARDS[name].complement for g in golds for name in reward_names(g) if REWARDS[name].complement}
    if rates:
        out += ["### Attack success rate\n",
                "HarmBench's ASR: the share of behaviours whose completion counts as an instance of it, "
                "1 − the mean of each verdict (interval as the mean's).\n",
                _table(["method", *rates.values()], [[f"`{label}`", *(_rate(m["gold"][g]) if g in m["gold"] else "–"
                                                                   for g in rates)] for label, m in methods.items()])]
    failed = [(label, m) for label, m in methods.items() if m["errors"]]
    if failed:
        out.append("### Errors\n")
        out += [f"- `{label}`: {m['errors']} of {m['rows']} rows, e.g. `{m['first_error']}`\n" for label, m in failed]
        out.append("")
    out += [f"![{p}](plots/{p})\n" for p in plots]
    return "\n".join(out)


NOTES = f"""## How to read this

- Means ± half-width of the 95% Student-t interval over rows (one row = one prompt × seed); a value
  without ± came from one row or is a set-level statistic.
- **KL** is the mean of log q(y) − log p_θ(y) over answers where the sampler's log q is known: 0 for
  plain sampling; for DGA fast mode (token blocks, with a twist) an estimate, log q taken under the
  twisted next-token law p_θ,m·e^ψ/Z the chain targets; for DGA exact mode β·E[r] − log Ẑ.
  Best-of-N shows its bound `≤ log N − (N−1)/N` instead. Other methods: –.
- **logp/tok** is the base model's log-probability per answer token; **ppl** the perplexity of the
  answer after the prompt under the independent judge model (raw text, no chat template).
- **distinct-n**: distinct word n-grams / all word n-grams over a method's answers; **self-BLEU**:
  mean BLEU of each answer against the others (higher = less diverse).
- **BLEU, ROUGE-L, BERTScore** (F1 on all-MiniLM-L6-v2, layer {metrics.BERTSCORE_LAYER}, no baseline
  rescaling) against the suite's reference answer, where it has one.
- **Energy** = CPU seconds (user + system) × {metrics.WATTS_PER_CORE:g} W per core; GPU energy is
  not included. **× base** = LM forward tokens per answer relative to the base method.
- The best-of-N curve on the reward–KL plot is E[max of N base rewards] over the pooled base
  answers of all prompts, plotted at the KL bound; it lies above the mean per-prompt best-of-N reward.
"""


# -- plots ----------------------------------------------------------------------------------------
def _save(fig, path: Path) -> None:
    buf = io.BytesIO()
    fig.savefig(buf, format="png", dpi=120, bbox_inches="tight")
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(buf.getvalue())
    tmp.replace(path)


def _label_points(ax, xs, ys, labels) -> None:
    for x, y, label in zip(xs, ys, labels, strict=True):
        ax.annotate(label, (x, y), textcoords="offset points", xytext=(5, 4), fontsize=8)


def plot_suite(name: str, s: dict, rows: list[dict], plot_dir: Path) -> list[str]:
    """The suite's plots; returns their file names."""
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    methods = {k: m for k, m in s["methods"].items() if m["proxy"]["n"]}
    color = {label: f"C{i % 10}" for i, label in enumerate(s["methods"])}  # one colour per method in every plot
    written = []

    def finish(fig, ax, kind: str, title: str) -> None:
        ax.set_title(f"{name}: {title}", fontsize=10)
        ax.grid(alpha=0.3)
        file = f"{name}-{kind}.png"
        _save(fig, plot_dir / file)
        plt.close(fig)
        written.append(file)

    reward = s["identity"]["reward"]
    # 1. reward vs wall time per token
    fig, ax = plt.subplots(figsize=(6, 4))
    for label, m in methods.items():
        ax.errorbar(m["s_per_token"], m["proxy"]["mean"], yerr=_ci(m["proxy"]), fmt="o", capsize=3,
                    color=color[label])
    _label_points(ax, [m["s_per_token"] for m in methods.values()], [m["proxy"]["mean"] for m in methods.values()],
                  list(methods))
    times = [m["s_per_token"] for m in methods.values()]
    wide = bool(times) and max(times) > 10 * min(times)  # a log axis only when times span a decade
    if wide:
        ax.set_xscale("log")
    ax.set_xlabel("wall seconds per generated token" + (" (log)" if wide else ""))
    ax.set_ylabel(f"proxy reward ({reward})")
    finish(fig, ax, "reward-vs-time", "reward vs compute")

    # 2. reward vs KL, with the best-of-N bound curve
    fig, ax = plt.subplots(figsize=(6, 4))
    if len(s["base_proxy"]) > 1:  # one base answer gives a flat curve
        xs = [metrics.bon_kl_bound(n) for n in BON_CURVE_N]
        ys = [metrics.bon_expected_max(s["base_proxy"], n) for n in BON_CURVE_N]
        ax.plot(xs, ys, "-", color="0.6", label="best-of-N: E[max of N base rewards] at log N − (N−1)/N")
        for n, x, y in zip(BON_CURVE_N, xs, ys, strict=True):
            if n in (2, 8, 32, 128):
                ax.annotate(f"N={n}", (x, y), textcoords="offset points", xytext=(0, -12), fontsize=7, color="0.4")
    for label, m in methods.items():
        if m["kl"]["n"]:
            ax.errorbar(m["kl"]["mean"], m["proxy"]["mean"], xerr=_ci(m["kl"]), yerr=_ci(m["proxy"]), fmt="o",
                        capsize=3, color=color[label])
            _label_points(ax, [m["kl"]["mean"]], [m["proxy"]["mean"]], [label])
        elif m["kl_bound"] is not None:
            ax.errorbar(m["kl_bound"], m["proxy"]["mean"], yerr=_ci(m["proxy"]), fmt="<", capsize=3, mfc="none",
                        color=color[label])
            _label_points(ax, [m["kl_bound"]], [m["proxy"]["mean"]], [f"{label} (KL ≤)"])
    unknown = [label for label, m in methods.items() if not m["kl"]["n"] and m["kl_bound"] is None]
    if unknown:
        ax.text(0.01, 0.01, f"KL unknown, not shown: {', '.join(unknown)}", transform=ax.transAxes, fontsize=7,
                color="0.4")
    ax.set_xlabel("KL(q ‖ p_θ), nats per answer")
    ax.set_ylabel(f"proxy reward ({reward})")
    ax.legend(fontsize=7, loc="upper left")
    finish(fig, ax, "reward-vs-kl", "reward vs drift from the base")

    # 3. gold vs proxy (over-optimisation)
    gold = s["win_by"] if s["win_by"] in s["identity"]["gold"] else None
    if gold:
        fig, ax = plt.subplots(figsize=(6, 4))
        for label, m in methods.items():
            pts = [(r["proxy"], r["gold"][gold]) for r in rows if r["method"] == label and not r.get("error")]
            ax.scatter(*zip(*pts, strict=True), s=8, alpha=0.25, color=color[label])
            ax.errorbar(m["proxy"]["mean"], m["gold"][gold]["mean"], xerr=_ci(m["proxy"]),
                        yerr=_ci(m["gold"][gold]), fmt="o", capsize=3, color=color[label], label=label)
        ax.set_xlabel(f"proxy reward ({reward})")
        ax.set_ylabel(f"gold reward ({gold})")
        ax.legend(fontsize=7)
        finish(fig, ax, "gold-vs-proxy", "gold vs proxy reward (dots: answers; markers: means ± 95% CI)")

    # 4. β sweeps: the reward–KL frontier of each sampler run at several β with known KL
    sweeps: dict[str, list[tuple[float, float, float, str]]] = {}
    for label, m in methods.items():
        if m["kl"]["n"] and len(m["betas"]) == 1:
            sweeps.setdefault(m["sampler"], []).append((m["betas"][0], m["kl"]["mean"], m["proxy"]["mean"], label))
    sweeps = {k: sorted(v) for k, v in sweeps.items() if len({b for b, *_ in v}) > 1}
    if sweeps:
        fig, ax = plt.subplots(figsize=(6, 4))
        if s["base"] in methods:  # β = 0 is the base model itself: KL 0
            ax.plot(0.0, methods[s["base"]]["proxy"]["mean"], "s", color="0.5", label=f"{s['base']} (β = 0)")
        for sampler, pts in sweeps.items():
            ax.plot([p[1] for p in pts], [p[2] for p in pts], "o-", label=sampler)
            _label_points(ax, [p[1] for p in pts], [p[2] for p in pts], [f"β={p[0]:g}" for p in pts])
        ax.set_xlabel("KL(q ‖ p_θ), nats per answer")
        ax.set_ylabel(f"proxy reward ({reward})")
        ax.legend(fontsize=7)
        finish(fig, ax, "beta-frontier", "reward–KL frontier over β")
    return written


def _ci(stat: dict) -> float:
    return 0.0 if math.isnan(stat["ci"]) else stat["ci"]


# -- the report -----------------------------------------------------------------------------------
def write_report(run_dir: str | Path) -> Path:
    """report.md, summary.json and plots/ for every suite in a bench run directory; returns report.md."""
    run = Path(run_dir).expanduser()
    if run.exists() and not run.is_dir():
        raise DGAlignError(f"{run} is a file; give a `dgalign bench --out` directory")
    manifests = sorted(run.glob("*.manifest.json"))
    if not manifests:
        raise DGAlignError(f"no bench run in {run} (no *.manifest.json); run `dgalign bench --out {run_dir}` first")
    # read and check everything before writing anything: a damaged run leaves no plots/ behind
    suites = {}
    for path in manifests:
        name = path.name.removesuffix(".manifest.json")
        suites[name] = (read_manifest(path), read_rows(run / f"{name}.jsonl", checked=True))
    check_out_dir(run, "report: the run directory")
    plot_dir = run / "plots"
    if plot_dir.exists() and not plot_dir.is_dir():
        raise DGAlignError(f"{plot_dir} is a file; the report writes its plots into a plots/ directory there")
    plot_dir.mkdir(exist_ok=True)
    sections, summary = [], {}
    for name, (manifest, rows) in suites.items():
        if not rows:
            sections.append(f"## {name}\n\nNo rows yet.\n")
            continue
        s = summarise_suite(rows, manifest)
        summary[name] = s
        plots = plot_suite(name, s, rows, plot_dir)
        sections.append(suite_markdown(name, s, manifest, plots))
    human = human_section(run, plot_dir)  # `dgalign rate` / `dgalign judge` ratings, when there are any
    if human:
        sections.append(human[0])
        summary["human_evaluation"] = human[1]
    first = next(iter(suites.values()))[0]
    versions = ", ".join(f"{k} {v}" for k, v in first["versions"].items())
    machine = first["machine"]
    head = (f"# Benchmark report: {run.name}\n\n{versions} · {machine['platform']}, {machine['cpu_count']} CPUs, "
            f"{machine['memory_gb']} GB{', ' + machine['cuda'] if machine.get('cuda') else ''} · "
            f"started {first['started']}\n")
    text = "\n".join([head, *sections, NOTES])
    write_atomic(run / "summary.json", json.dumps(_nan_to_null(summary), indent=1, default=str, allow_nan=False) + "\n")
    write_atomic(run / "report.md", text)
    return run / "report.md"


def _nan_to_null(x):
    """NaN (a statistic with no data) or ±inf as JSON null: strict JSON has neither."""
    if isinstance(x, float) and not math.isfinite(x):
        return None
    if isinstance(x, dict):
        return {k: _nan_to_null(v) for k, v in x.items()}
    if isinstance(x, list | tuple):
        return [_nan_to_null(v) for v in x]
    return x
