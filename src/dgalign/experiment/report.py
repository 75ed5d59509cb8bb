"""An experiment's report: OUT/report.md, OUT/summary.json and OUT/plots/ from its runs' rows, verdicts and timings.

Per run, one table of quality (proxy and gold means with 95% Student-t intervals over rows, HarmBench's ASR,
the paired win-rate vs base, the pairwise judge's win / tie / loss vs base with 95% bootstrap intervals over
prompts, TruthfulQA's generation metrics) and one of cost, the DPO model's rows joined to the others as `dpo`;
the bench report's plots; for efficiency runs the timings per batch size; for runs that share a `group`, the
frontier of the experiment's two `frontier` golds; and every step's wall time.
"""

from __future__ import annotations

import json
import math
from pathlib import Path

from ..bench import SUITES
from ..eval import metrics
from ..eval.harness import read_manifest, read_rows, suite_label, write_atomic
from ..eval.human import Verdict, win_tie_loss
from ..eval.report import _nan_to_null, _pm, _rate, _sig, _table, plot_suite, summarise_suite
from ..rewards import REWARDS, reward_names
from .config import DPO, Experiment
from .judging import BASE


def run_rows(benches) -> tuple[list[dict], dict]:
    """A run's rows over its bench directories (the DPO model's relabelled `dpo`) and its main manifest."""
    rows, manifest = [], None
    for cfg, relabel in benches:
        name = suite_label(cfg.suite)
        path = Path(cfg.out) / f"{name}.manifest.json"
        if not path.exists():
            continue
        manifest = manifest or read_manifest(path)
        rows += [{**r, "method": relabel[r["method"]]} for r in read_rows(Path(cfg.out) / f"{name}.jsonl", checked=True)
                 if r["method"] in relabel]
    return rows, manifest


def judge_table(path: Path, run_id: str) -> dict[tuple[str, str], dict]:
    """(method, dimension) -> win / tie / loss vs base with bootstrap intervals over prompts, and the debiased
    P(method preferred) (each prompt's mean over seeds, 95% bootstrap over prompts) where verdicts carry it."""
    from ..rate.judge import bootstrap_mean

    rows = read_rows(path)
    verdicts = [Verdict(i, (run_id, v["prompt_index"]), (v["method"], BASE), f"judge:{v['judge']}", v["dimension"],
                        v["winner"]) for i, v in enumerate(rows)]
    keys = sorted({(v.pair[0], v.dimension) for v in verdicts})
    out = {k: win_tie_loss([v for v in verdicts if (v.pair[0], v.dimension) == k]) for k in keys}
    for k in keys:
        by_prompt: dict[int, list[float]] = {}
        for v in rows:
            if (v["method"], v["dimension"]) == k and "pref_x" in v:
                by_prompt.setdefault(v["prompt_index"], []).append(v["pref_x"])
        if by_prompt:
            out[k]["preferred"] = bootstrap_mean([sum(p) / len(p) for p in by_prompt.values()])
    return out


def _wtl(s: dict) -> str:
    return " / ".join(f"{s[c]['mean']:.2f} [{s[c]['lo']:.2f}, {s[c]['hi']:.2f}]" for c in ("x", "tie", "y"))


def _preferred(s: dict) -> str:
    p = s.get("preferred")
    return f"{p['mean']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}]" if p else "–"


def check_section(path: Path) -> tuple[list[str], dict]:
    """What the judge's check on labelled pairs says (judge_check.json), per dimension, in words."""
    if not path.exists():
        return [], {}
    checks = json.loads(path.read_text())
    text = []
    for d, c in checks.items():
        p, a = c["preferred"], c["accuracy"]
        text.append(f"**Judge check ({d})**: on {c['pairs']} labelled pairs ({c['source']}), `{c['judge']}` prefers "
                    f"the better answer with P = {p['mean']:.3f} [{p['lo']:.3f}, {p['hi']:.3f}] (accuracy "
                    f"{a['mean']:.2f} [{a['lo']:.2f}, {a['hi']:.2f}]). "
                    + ("**The interval includes ½: on this dimension the judge is no better than a coin, so its "
                       "column below is not evidence.**" if c["chance"] else
                       ("The judge reads the answers better than chance; its column is weak evidence."
                        if p["mean"] > 0.5 else "**The judge prefers the worse answer: its column is not evidence.**"))
                    + "\n")
    return text, checks


def quality_section(run, s: dict, judged: dict, golds: list[str]) -> list[str]:
    methods = s["methods"]
    rates = {g: REWARDS[n].complement for g in golds for n in reward_names(g) if REWARDS[n].complement}
    dims = sorted({d for _, d in judged})
    tqa = [k for k in ("bleu_diff", "rouge_l_diff", "bertscore_diff", "bertscore_acc")
           if any(k in m.get("reference", {}) for m in methods.values())]
    refs = [] if tqa else [k for k in ("bleu", "rouge_l", "bertscore") if any(k in m.get("reference", {})
                                                                               for m in methods.values())]
    header = ["method", "n", "proxy", *(f"gold {g}" for g in golds), *rates.values(), f"win-rate vs base ({s['win_by']})",
              *(f"judge {d}: {col}" for d in dims for col in ("P(method preferred) [95% CI]", "win / tie / loss")),
              *(f"TruthfulQA {k}" for k in tqa),
              *(f"reference {k}" for k in refs)]
    lines = []
    for label, m in methods.items():
        lines.append([f"`{label}`", str(m["rows"] - m["errors"]), _pm(m["proxy"]),
                      *(_pm(m["gold"][g]) if g in m["gold"] else "–" for g in golds),
                      *(_rate(m["gold"][g]) if g in m["gold"] else "–" for g in rates),
                      _pm(m["win_rate"], 2) if "win_rate" in m else "–",
                      *(f(judged[(label, d)]) if (label, d) in judged else "–" for d in dims for f in (_preferred, _wtl)),
                      *(_pm(m["reference"][k]) if k in m.get("reference", {}) else "–" for k in [*tqa, *refs])])
    return ["### Quality\n", _table(header, lines)]


def _value(row: dict, gold: str) -> float | None:
    """A row's gold: a reward's score, or `reference.KEY` (BLEU, ROUGE-L, BERTScore, TruthfulQA's diffs)."""
    if gold in row["gold"]:
        return row["gold"][gold]
    return (row.get("reference") or {}).get(gold.removeprefix("reference."))


def _by_key(rows: list[dict], label: str, gold: str) -> dict:
    return {(r["prompt_index"], r["seed"]): _value(r, gold) for r in rows if r["method"] == label and not r.get("error")}


def gain_section(rows: list[dict], s: dict, golds: list[str]) -> tuple[list[str], dict]:
    """Each method's gold gain over base and DGA's over the strongest other method, paired by prompt (each
    prompt's difference averaged over seeds; 95% t-interval over prompts). The strongest peer is the non-DGA
    method with the largest mean gain on the first gold, chosen on these rows (so the comparison favours it)."""
    base, labels = s["base"], [m for m in s["methods"] if m != s["base"]]
    if base is None or not golds or not labels:
        return [], {}
    gains = {g: {m: metrics.paired_difference(_by_key(rows, m, g), _by_key(rows, base, g)) for m in labels}
             for g in golds}
    dga = [m for m in labels if m.split(":")[0] == "dga"]
    peers = [m for m in labels if m not in dga and gains[golds[0]][m]["n"]]
    peer = max(peers, key=lambda m: gains[golds[0]][m]["mean"]) if peers else None
    vs_peer = {d: {g: metrics.paired_difference(_by_key(rows, d, g), _by_key(rows, peer, g)) for g in golds}
               for d in dga} if peer else {}
    lines = [[f"`{m}`", *(_pm(gains[g][m]) for g in golds)] for m in labels]
    lines += [[f"`{d}` − `{peer}`", *(_pm(vs_peer[d][g]) for g in golds)] for d in vs_peer]
    text = ["### Gold gain over base, paired by prompt\n",
            f"Mean over prompts of (method − `{base}`), each prompt averaged over seeds, ± the 95% t half-width over "
            "prompts" + (f"; the last row(s): DGA minus the strongest other method on `{golds[0]}` (`{peer}`, picked "
                         "on these same rows, which favours the peer)" if peer else "") + ".\n",
            _table(["method", *(f"Δ gold {g}" for g in golds)], lines)]
    return text, {"gain_vs_base": gains, "strongest_peer": peer, "dga_vs_peer": vs_peer}


def cost_section(s: dict) -> list[str]:
    methods = s["methods"]
    base_fwd = methods[s["base"]]["lm_forward_tokens"]["mean"] if s["base"] in methods else math.nan
    # the DPO model is sampled plainly: its rows' KL is to itself (0), not to the base model, so it is not shown
    lines = [[f"`{label}`", "–" if label == DPO else _pm(m["kl"]) if m["kl"]["n"] else
              (f"≤ {m['kl_bound']:.2f}" if m["kl_bound"] else "–"),
              _pm(m["ppl"], 1), f"{m['distinct_2']:.3f}", _pm(m["wall_s"], None), _sig(m["s_per_token"]),
              f"{m['lm_forward_tokens']['mean'] / base_fwd:.2f}", _pm(m["energy_j"], None),
              f"{m['errors']}" + (f" (`{m['first_error'][:60]}`)" if m["errors"] else "")]
             for label, m in methods.items()]
    return ["### Drift and cost per answer\n", _table(
        ["method", "KL", "ppl", "distinct-2", "wall s", "s/token", "LM fwd × base", "energy J", "errors"], lines)]


def efficiency_section(path: Path) -> tuple[list[str], dict]:
    rows = read_rows(path)
    cells = sorted({(r["method"], r["batch"]) for r in rows}, key=lambda c: (c[1], c[0]))
    out, lines = {}, []
    for method, b in cells:
        sel = [r for r in rows if (r["method"], r["batch"]) == (method, b)]
        stats = {k: metrics.summarise([r[k] for r in sel]) for k in ("latency_s", "tokens_per_s", "energy_j_per_answer")}
        peak = max(r["gpu_peak_mb"] if r["gpu_peak_mb"] is not None else r["peak_mb"] for r in sel)
        rss = [r["peak_rss_mb"] for r in sel if r.get("peak_rss_mb") is not None]  # rows of older runs lack it
        out[f"{method}@{b}"] = {**stats, "peak_mb": peak, "peak_rss_mb": max(rss) if rss else None}
        lines.append([f"`{method}`", str(b), _pm(stats["latency_s"], None), _pm(stats["tokens_per_s"], None),
                      f"{peak:.0f}", f"{max(rss):.0f}" if rss else "–", _pm(stats["energy_j_per_answer"], None)])
    text = ["### Efficiency\n", "One sampler call per cell on `batch` prompts, the bench's settings; peak MB is "
            "the resident memory above the call's start, after freed memory was handed back to the OS (CUDA: the "
            "allocator's peak), peak RSS MB the process's whole resident memory at its peak (the loaded models "
            "included); energy = CPU s × "
            f"{metrics.WATTS_PER_CORE:g} W / batch. `dpo` is not timed apart: its LoRA is merged into the weights, so it "
            "decodes as `base` does.\n",
            _table(["method", "batch", "latency s", "tokens/s", "peak MB", "peak RSS MB", "energy J / answer"], lines)]
    return text, out


def frontier_plot(exp: Experiment, summaries: dict, plot_dir: Path) -> str | None:
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    groups: dict[str, list] = {}
    for run in exp.runs:
        if run.group and run.id in summaries:
            groups.setdefault(run.group, []).append(run)
    if not exp.frontier or not groups:
        return None
    fig, ax = plt.subplots(figsize=(6, 4))
    for group, runs in groups.items():
        runs = sorted(runs, key=lambda r: r.weight if r.weight is not None else 0.0)
        labels = dict.fromkeys(m for r in runs for m in summaries[r.id]["methods"])
        for label in labels:
            pts = [(summaries[r.id]["methods"][label]["gold"].get(exp.frontier.x, {}).get("mean", math.nan),
                    summaries[r.id]["methods"][label]["gold"].get(exp.frontier.y, {}).get("mean", math.nan), r.weight)
                   for r in runs if label in summaries[r.id]["methods"]]
            ax.plot([p[0] for p in pts], [p[1] for p in pts], "o-", label=f"{group}: {label}")
            for x, y, w in pts:
                ax.annotate(f"w={w:g}" if w is not None else "", (x, y), textcoords="offset points", xytext=(4, 4),
                            fontsize=7)
    ax.set_xlabel(f"gold {exp.frontier.x}")
    ax.set_ylabel(f"gold {exp.frontier.y}")
    ax.grid(alpha=0.3)
    ax.legend(fontsize=7)
    ax.set_title(f"{exp.name}: frontier over the objectives' weight", fontsize=10)
    file = "frontier.png"
    fig.savefig(plot_dir / file, dpi=120, bbox_inches="tight")
    plt.close(fig)
    return file


def write_experiment_report(exp: Experiment, plan, out: Path, manifest: dict) -> Path:
    plot_dir = out / "plots"
    plot_dir.mkdir(parents=True, exist_ok=True)
    inv = manifest["invocations"]
    total = sum(e["seconds"] for e in manifest["steps"].values())
    machine = manifest["machine"]
    versions = ", ".join(f"{k} {v}" for k, v in manifest["versions"].items() if v)
    text = [f"# Experiment `{exp.name}`\n", f"{exp.description}\n" if exp.description else "",
            f"Made with `dgalign experiment {exp.name}` ({exp.path.name}); {len(inv)} invocation(s), the last "
            f"`{' '.join(inv[-1]['argv'] or [])}` on {inv[-1]['started']}. **Wall time: {total / 60:.1f} min** "
            f"(all steps, all invocations) on {machine['platform']}, {machine['cpu_count']} CPUs, "
            f"{machine['memory_gb']} GB{', ' + machine['cuda'] if machine.get('cuda') else ''}.\n",
            f"Versions: {versions}.\n"]
    summary = {"experiment": exp.name, "runs": {}, "steps": manifest["steps"], "wall_s": total}
    summaries = {}
    for run in exp.runs:
        benches = plan.benches[run.id]
        rows, bench_manifest = run_rows(benches)
        if not rows:
            text.append(f"## {run.id}\n\nNo rows yet.\n")
            continue
        s = summarise_suite(rows, bench_manifest)
        summaries[run.id] = s
        judged_path = Path(benches[0][0].out) / "judge.jsonl"
        judged = judge_table(judged_path, run.id) if judged_path.exists() else {}
        golds = plan.golds[run.id]
        ident = bench_manifest["identity"]
        seconds = sum(manifest["steps"].get(f"bench {Path(c.out).name}", {}).get("seconds", 0.0) for c, _ in benches)
        text += [f"## {run.id}\n",
                 f"Suite `{run.suite}` ({SUITES[run.suite].description}) · model `{run.model}` · guide "
                 f"`{plan.guides[run.id]}` · gold {', '.join(f'`{g}`' for g in golds) or '–'}"
                 f"{' + judge vs base (' + ', '.join(SUITES[run.suite].judge) + ')' if judged else ''} · "
                 f"{ident['max_new_tokens']} tokens · β {ident['beta']} · seeds {run.seeds} · "
                 f"{run.n_prompts} held-out prompts · budget-matched {ident['budget_matched'] or 'no'} · "
                 f"bench {seconds / 60:.1f} min\n"]
        checked, check = check_section(Path(benches[0][0].out) / "judge_check.json")
        text += checked
        text += quality_section(run, s, judged, golds)
        gain_text, gain = gain_section(rows, s, golds)
        text += gain_text
        text += cost_section(s)
        summary["runs"][run.id] = {"summary": s, "judge": {f"{m} {d}": v for (m, d), v in judged.items()},
                                   "judge_check": check, **gain}
        if run.kind == "efficiency" and (Path(benches[0][0].out) / "efficiency.jsonl").exists():
            section, eff = efficiency_section(Path(benches[0][0].out) / "efficiency.jsonl")
            text += section
            summary["runs"][run.id]["efficiency"] = eff
        text += [f"![{p}](plots/{p})\n" for p in plot_suite(run.id, s, rows, plot_dir)]
    frontier = frontier_plot(exp, summaries, plot_dir)
    if frontier:
        text += ["## Frontier\n", f"Gold `{exp.frontier.x}` against gold `{exp.frontier.y}` per method over the runs "
                 "of each group, one point per weight.\n", f"![{frontier}](plots/{frontier})\n"]
    steps = [[name, e.get("status", "–"), f"{e['seconds'] / 60:.1f}"] for name, e in manifest["steps"].items()]
    text += ["## Steps and their wall time\n", _table(["step", "status", "minutes"], steps),
             "\nMeans ± half-width of the 95% Student-t interval over rows (prompt × seed). Judge: P(method "
             "preferred) is the position-debiased preference (the verdict tokens' probabilities renormalised over "
             "A / B, averaged over both orders; ½ = no preference), each prompt's mean over seeds with a 95% "
             "bootstrap interval over prompts; win / tie / loss are the MT-Bench verdicts (each order's most "
             "probable, a flip with the order counted as a tie) as fractions of prompts × seeds. Per-run bench "
             "reports (every metric, all plots): the `report.md` of each bench directory named in `manifest.json`.\n"]
    write_atomic(out / "summary.json", json.dumps(_nan_to_null(summary), indent=1, default=str, allow_nan=False) + "\n")
    write_atomic(out / "report.md", "\n".join(text))
    return out / "report.md"

