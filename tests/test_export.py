"""Export: a tiny random BERT + trained head -> model folder; torch vs ONNX parity; sparse head cost."""

import json
from pathlib import Path

import numpy as np
import onnx
import pytest

torch = pytest.importorskip("torch")
transformers = pytest.importorskip("transformers")

from moerm_build.graphs.onnx_backbone import export_backbone  # noqa: E402
from moerm_build.graphs.onnx_head import build_head_graph  # noqa: E402
from moerm_build.release.onnx_export import export_model  # noqa: E402
from moerm_build.train.train import TrainConfig, load_checkpoint, readout_run, train  # noqa: E402
from moerm_lite import RewardModel  # noqa: E402
from tests.model_test_utils import random_pairs  # noqa: E402
from tests.tiny import F, random_head, tiny_reference  # noqa: E402
from tests.torch_utils import torch_run_scores  # noqa: E402

ROOT = Path(__file__).resolve().parents[1]


@pytest.fixture(scope="module")
def tiny_run(tiny_bert, tmp_path_factory):
    out = tmp_path_factory.mktemp("run")
    pairs = random_pairs(120, seed=5)
    recs = [{"prompt": pairs[i][0], "chosen": pairs[i][1], "rejected": pairs[i + 1][1], "source": "syn",
             "user_id": f"u{i % 3}"} for i in range(0, 118, 2)]
    cfg = TrainConfig(backbone=str(tiny_bert), max_length=32, n_experts=6, n_shared=2, top_k=2, expert_hidden=8,
                      epochs=3,
                      batch_size=16, cache_dir=str(out / "cache"))
    train(cfg, out, records=recs)
    return out


@pytest.fixture(scope="module")
def tiny_export(tiny_run, tmp_path_factory):
    return export_model(tiny_run, tmp_path_factory.mktemp("models") / "tiny-export", also_fp32=True,
                        reference=tiny_reference())


def test_folder_loads_and_describes_itself(tiny_export):
    cfg = json.loads((tiny_export / "config.json").read_text())
    assert cfg["n_experts"] == 6 and cfg["top_k"] == 2 and sorted(cfg["graphs"]) == ["fp32", "int8"]
    tok = json.loads((tiny_export / "tokenizer.json").read_text())
    assert tok["truncation"]["max_length"] == 32 and tok["padding"] is None  # matches config
    assert (tiny_export / "README.md").read_text().startswith("# tiny-export")
    assert RewardModel.load(tiny_export).n_experts == 6
    card = (tiny_export / "README.md").read_text()  # expert cards read off the shipped reference corpus
    assert cfg["reference"] == "reference.jsonl" and "## Expert cards" in card and "`tone`" in card


def test_checkpoint_from_an_older_build(tiny_run, tmp_path):
    """A run from before two changes loads under today's names: ``features`` was renamed ``feature_layout``,
    and the head stopped training backbone layers (the retired fields are dropped); a run that did train
    backbone layers is refused, by name."""
    ckpt = torch.load(tiny_run / "ckpt.pt", weights_only=True)
    old_cfg = {k: v for k, v in ckpt["config"].items() if k != "feature_layout"}
    ckpt["config"] = {**old_cfg, "features": "prompt_response_v2", "train_backbone_layers": 0, "backbone_lr": 3e-5}
    torch.save({**ckpt, "backbone_state": None}, tmp_path / "ckpt.pt")
    old, head = load_checkpoint(tmp_path)
    assert "train_backbone_layers" not in old["config"] and "backbone_state" not in old
    assert TrainConfig.of_run(old).feature_layout == "prompt_response_v2"
    torch.save({**ckpt, "backbone_state": {"w": torch.zeros(1)}}, tmp_path / "ckpt.pt")
    with pytest.raises(ValueError, match="moerm_build finetune"):
        load_checkpoint(tmp_path)


def test_torch_onnx_parity(tiny_run, tiny_export):
    parts = load_checkpoint(tiny_run)
    pairs = random_pairs(64, seed=11)
    ref = torch_run_scores(parts, pairs)
    fp32 = RewardModel.load(tiny_export, precision="fp32", threads=1).score_pairs(pairs)
    np.testing.assert_allclose(fp32, ref, atol=1e-4)  # torch fp32 vs ONNX fp32
    int8 = RewardModel.load(tiny_export, threads=1).score_pairs(pairs)
    i, j = np.triu_indices(len(pairs), 1)
    agree = np.mean(np.sign(int8[i] - int8[j]) == np.sign(ref[i] - ref[j]))
    assert agree >= 0.95  # tiny random encoders are harsh on int8; the shipped model reports its own


def test_a_backbone_graph_reads_back_into_the_encoder_it_computes(tiny_bert, tiny_export, tmp_path):
    import torch
    import transformers

    from moerm_build.graphs.onnx_backbone import backbone_from_graph
    from moerm_build.model import Backbone
    from moerm_build.train.embed import embed_texts
    from moerm_lite.text import TextTokenizer

    cfg = json.loads((tiny_export / "config.json").read_text())
    graph = {p: tiny_export / cfg["graphs"][p]["backbone"] for p in ("fp32", "int8")}
    original = Backbone(tiny_bert).state_dict()
    read = backbone_from_graph(graph["fp32"], tiny_bert).state_dict()  # the fp32 export: the same numbers
    assert all(torch.equal(read[k], original[k]) for k in original if not k.startswith("encoder.pooler."))
    texts = ["the cat sat on the mat", "a dog", "what is the answer to this question " * 4]
    tok = TextTokenizer(tiny_export / "tokenizer.json", cfg["backbone"]["max_length"])
    for precision, path in graph.items():  # torch on the graph's weights = the runtime on that graph
        m = RewardModel.load(tiny_export, precision=precision, threads=1)
        ref = embed_texts(backbone_from_graph(path, tiny_bert), tok, texts, "response")
        np.testing.assert_allclose(m.embed(texts)[0], ref, atol=1e-5)
    int8 = backbone_from_graph(graph["int8"], tiny_bert).state_dict()
    w = "encoder.encoder.layer.0.attention.self.query.weight"
    assert 0 < (int8[w] - original[w]).abs().max() < 0.05  # 8-bit levels, dequantized: near, not equal
    wider = tmp_path / "wider"
    c = transformers.BertConfig.from_pretrained(tiny_bert)
    c.hidden_size, c.intermediate_size = 48, 96
    transformers.BertModel(c).save_pretrained(wider)
    with pytest.raises(ValueError, match="encoder.embeddings"):  # names the first weight that does not fit
        backbone_from_graph(graph["fp32"], wider)


def test_a_model_folder_gives_back_its_encoder_as_a_teacher(tiny_bert, tiny_export, tmp_path):
    """``python -m moerm_build encoder`` writes the shipped backbone as a Hugging Face folder that finetune
    can distil from: it loads like any encoder and embeds as the folder's int8 graph does."""
    from moerm_build.__main__ import main
    from moerm_build.model import Backbone
    from moerm_build.train.embed import embed_texts
    from moerm_lite.text import TextTokenizer

    out = tmp_path / "teacher"
    assert main(["encoder", "-i", str(tiny_export), "-o", str(out), "--template", str(tiny_bert)]) == 0
    assert (out / "tokenizer.json").read_text() == (tiny_bert / "tokenizer.json").read_text()
    texts = ["the cat sat on the mat", "a dog ran home", "what is the answer to this question " * 4]
    cfg = json.loads((tiny_export / "config.json").read_text())
    tok = TextTokenizer(tiny_export / "tokenizer.json", cfg["backbone"]["max_length"])
    runtime = RewardModel.load(tiny_export, threads=1).embed(texts)[0]  # (3, H)
    np.testing.assert_allclose(embed_texts(Backbone(out), tok, texts, "response"), runtime, atol=1e-5)
    (tmp_path / "not-a-model").mkdir()
    with pytest.raises(FileNotFoundError, match="manifest.json"):
        main(["encoder", "-i", str(tmp_path / "not-a-model"), "-o", str(tmp_path / "x"), "--template",
              str(tiny_bert)])


def test_dynamo_exporter_also_works(tiny_run, tmp_path):
    """The legacy exporter is deprecated; keep the dynamo path working."""
    import onnxruntime as ort

    from moerm_build.model import Backbone

    ckpt, _ = load_checkpoint(tiny_run)
    bb = Backbone(ckpt["backbone_path"])
    path = export_backbone(bb, tmp_path / "dyn.onnx", dynamo=True)
    sess = ort.InferenceSession(str(path), providers=["CPUExecutionProvider"])
    ids = torch.randint(5, 50, (3, 7))
    mask = torch.ones_like(ids)
    mask[0, 5:] = 0
    types = torch.zeros_like(ids)
    (emb,) = sess.run(None, {"input_ids": ids.numpy(), "attention_mask": mask.numpy(),
                             "token_type_ids": types.numpy()})
    with torch.no_grad():
        ref = bb(ids, mask, types).numpy()
    np.testing.assert_allclose(emb, ref, atol=1e-4)


def _expert_path_sizes(K):
    """Element counts of every intermediate tensor of the head at batch 4, outside the router."""
    m = build_head_graph(random_head(K, np.random.default_rng(0)), 2)
    m.graph.input[0].type.tensor_type.shape.dim[0].dim_value = 4
    inferred = onnx.shape_inference.infer_shapes(m)
    sizes = {}
    for vi in list(inferred.graph.value_info) + list(inferred.graph.output):
        dims = [d.dim_value for d in vi.type.tensor_type.shape.dim]
        sizes[vi.name] = int(np.prod(dims))
    router = {"logits_mm", "router_logits"}
    return {k: v for k, v in sizes.items() if k not in router}, {k: sizes[k] for k in router}


def test_head_cost_does_not_grow_with_K():
    small, r_small = _expert_path_sizes(8)
    big, r_big = _expert_path_sizes(256)
    assert small == big  # every tensor on the expert path has the same size at K=8 and K=256
    assert small["w1_sel"] == 4 * 2 * F * 8  # (B, k, F, D): only the routed experts' weights
    assert r_big["router_logits"] == 4 * 256  # only the router sees all K


def test_int8_folder_is_batch_invariant(tiny_export):
    m = RewardModel.load(tiny_export, threads=1)
    pairs = random_pairs(50, seed=4)
    np.testing.assert_allclose(m.score_pairs(pairs, batch_size=1), m.score_pairs(pairs, batch_size=32), atol=1e-3)


def test_embedding_rows_quantized_within_half_a_step():
    import onnxruntime as ort
    from onnx import TensorProto, helper, numpy_helper

    from moerm_build.graphs.quantize import quantize_embedding_rows

    table = np.random.default_rng(0).normal(size=(1200, 8)).astype(np.float32)
    table[7] *= 100  # one loud token must not cost the others precision (per-row scales)
    g = helper.make_graph([helper.make_node("Gather", ["T", "ids"], ["out"], axis=0)], "g",
                          [helper.make_tensor_value_info("ids", TensorProto.INT64, ["n"])],
                          [helper.make_tensor_value_info("out", TensorProto.FLOAT, ["n", 8])],
                          [numpy_helper.from_array(table, "T")])
    m = quantize_embedding_rows(helper.make_model(g, opset_imports=[helper.make_opsetid("", 17)], ir_version=8))
    assert {i.name for i in m.graph.initializer} == {"T_q", "T_scale"}
    ids = np.arange(1200)
    out = ort.InferenceSession(m.SerializeToString(), providers=["CPUExecutionProvider"]).run(None, {"ids": ids})[0]
    step = np.abs(table).max(1, keepdims=True) / 127
    assert (np.abs(out - table) <= 0.5 * step + 1e-6).all()


@pytest.mark.parametrize("variant", ["weight_only8_int8_compute", "dynamic", "fp16_weights"])
def test_other_backbone_variants_load_and_agree(tiny_run, tmp_path, variant):
    folder = export_model(tiny_run, tmp_path / variant, quant=variant)
    cfg = json.loads((folder / "config.json").read_text())
    assert cfg["graphs"]["int8"]["per_sequence"] is (variant == "dynamic")  # dynamic int8: one sequence per call
    pairs = random_pairs(40, seed=6)
    ref = torch_run_scores(load_checkpoint(tiny_run), pairs)
    m = RewardModel.load(folder, threads=1)
    s = m.score_pairs(pairs)
    np.testing.assert_allclose(s, m.score_pairs(pairs, batch_size=1), atol=1e-5)  # batch-invariant
    assert np.corrcoef(s, ref)[0, 1] > 0.95


def test_default_int8_backbone_is_gptq_rounded_on_the_checkpoints_training_pairs(tiny_run, tiny_export):
    ckpt, _ = load_checkpoint(tiny_run)
    pairs = random_pairs(120, seed=5)  # tiny_run's records: (prompt_i, response_i) vs (prompt_i, response_i+1)
    trained = {(pairs[i][0], pairs[i + d][1]) for i in range(0, 118, 2) for d in (0, 1)}
    assert ckpt["calibration"] and all(tuple(p) in trained for p in ckpt["calibration"])
    cfg = json.loads((tiny_export / "config.json").read_text())
    assert cfg["quantization"]["int8_backbone"] == "gptq8"
    graph = onnx.load(str(tiny_export / "onnx" / "backbone_int8.onnx")).graph
    levels = [i for i in graph.initializer if i.name.endswith("_levels")]  # GPTQ's 8-bit levels, stored int8
    assert levels and all(i.data_type == onnx.TensorProto.INT8 for i in levels)
    assert "MatMulNBits" not in {n.op_type for n in graph.node}  # dequantized to an fp32 MatMul at load
    assert "DequantizeLinear" in {n.op_type for n in graph.node}
    assert cfg["graphs"]["int8"]["dequantize_at_load"] is True  # the runtime folds, does not fuse


def test_check_tells_the_folders_own_run_from_another(tiny_run, tiny_export, tmp_path):
    """``release check`` re-exports rebuild the head from the folder's graph; ``run_made_folder`` is what
    says the run's trained weights are the folder's, whatever precision stores them (one expert weight or
    w0 changed: not)."""
    import torch

    from moerm_build.release.pipeline import run_made_folder

    _, head = load_checkpoint(tiny_run)
    assert run_made_folder(head, tiny_export)
    int8_experts = export_model(tiny_run, tmp_path / "int8-experts", head_experts="int8", reference=tiny_reference())
    assert run_made_folder(head, int8_experts)  # other bytes, the same run
    with torch.no_grad():
        head.w2[0, 0] += 0.5  # a routed expert's weight: another run
    assert not run_made_folder(head, tiny_export)
    _, head = load_checkpoint(tiny_run)
    with torch.no_grad():
        head.w0[0] += 0.5  # the same experts, other population weights
    assert not run_made_folder(head, tiny_export)


def test_card_records_the_int8_variant_choice(tiny_run, tiny_export):
    from moerm_build.release.card import model_card

    ckpt, _ = load_checkpoint(tiny_run)
    config = json.loads((tiny_export / "config.json").read_text())
    row = {"embedding_rel_error": 0.0106, "same_topk_selection_all": 0.9923, "same_topk_selection": 0.9945,
           "decision_agreement": 0.993, "backbone_mb": 26.2}
    variants = {"gptq8": row, "weight_only8": {**row, "backbone_mb": 26.1}}
    card = model_card(config, ckpt, {"quant_variants": variants})
    assert "## Choice of int8 backbone" in card
    assert "| gptq8 | 1.06% | 99.23% | 99.45% | 99.30% | 26.2 MB |" in card


def test_card_names_the_encoder_recipe_a_fine_tuned_backbone_came_from():
    """The card's backbone line names the finetune config the run's ``encoder_recipe`` gives, not a fixed one."""
    from moerm_build.release.card import backbone_source
    from moerm_build.train.embed import DEFAULT_BACKBONE_NAME
    from moerm_build.train.finetune import TUNED_BACKBONE_NAME

    tuned = backbone_source(TUNED_BACKBONE_NAME, "moerm_build/configs/encoder-noise-empty.json")
    assert "finetune --config moerm_build/configs/encoder-noise-empty.json`" in tuned and "Apache-2.0" in tuned
    assert "--config" not in backbone_source(TUNED_BACKBONE_NAME)  # a run from before encoder_recipe
    assert "Apache-2.0" in backbone_source(DEFAULT_BACKBONE_NAME) and "finetune" not in backbone_source(
        DEFAULT_BACKBONE_NAME)
    assert "its own licence" in backbone_source("my-encoder")


def test_card_counts_come_from_the_report_and_the_build(tiny_run, tiny_export):
    """The card's prose (moerm_build/release/card.md) carries no count of its own: users, comparisons,
    draws, the machine and the quantizer's settings are the report's and the build's."""
    from moerm_build.graphs.gptq import BLOCK
    from moerm_build.release.card import model_card

    ckpt, _ = load_checkpoint(tiny_run)
    config = json.loads((tiny_export / "config.json").read_text())
    shots = {str(n): 0.6 for n in (5, 10, 20, 50)}
    att = {"attributes": ["verbosity"], "n_prompts": 11, "n_responses": 33, "users": 7, "heldout_per_user": [3, 5],
           **{k: {"global": 0.5, **shots} for k in ("single", "multi")}, "single_by_attribute_n10": {}}
    dsp = {k: {**shots, "all": 0.7} for k in ("model", "frozen_probe")}
    rep = {"attribute_users": att, "dsp": {**dsp, "unpersonalized": 0.5, "train_comparisons": 40, "draws": 4},
           "machine": {"cpu": "Some CPU", "cores": 3, "gpu": False},
           "interpretability": {"axes": [{"axis": a, "expert": 0, "corr": 0.5, "routing_share": 1.0} for a in "ab"]},
           "persona": {"global": 0.5, **shots},
           "quant_variants": {"gptq8": {"embedding_rel_error": 0.01, "same_topk_selection_all": 0.99,
                                        "same_topk_selection": 0.99, "decision_agreement": 0.99, "backbone_mb": 1.0}}}
    card = model_card(config, ckpt, rep)
    assert "7 users each, 3–5 further comparisons" in card and "20 draws" not in card and "; 4 draws)" in card
    assert "this project's machine (Some CPU, 3 cores, no GPU)" in card
    assert "the stance of 2 persona axes" in card and "simulated users over the 2 benchmark axes" in card
    assert f"blocks of {BLOCK} " in card and f"chose on {len(ckpt['calibration'])} training pairs" in card
    assert "{" not in card.split("## ")[1]  # every field of the template filled


def test_the_reports_residual_is_the_folders_recommendation_and_the_cards_default(tiny_run, tmp_path):
    """The residual the report's default rows were measured with (``evaluate(residual_strength=...)``) is what
    the exported folder recommends (``fit_user``'s default) and what its card names, its prior per block too; a
    report from before the fields gives a folder that recommends 30 and no prior, as those reports measured."""
    from moerm_build.evaluate.real_eval import BUILD_RESIDUAL, BUILD_RESIDUAL_PRIOR

    shots = {str(n): 0.6 for n in (5, 10, 20, 50)}
    rep = {"residual_strength": "evidence", "residual_prior": BUILD_RESIDUAL_PRIOR,
           "persona": {"global": 0.5, **shots}, "persona_residual": {"global": 0.5, **shots}}
    folder = export_model(tiny_run, tmp_path / "ev", report=rep, precision="fp32")
    m = RewardModel.load(folder, precision="fp32")
    assert m.config.recommended_residual_strength == "evidence" == BUILD_RESIDUAL
    assert m.config.recommended_residual_prior == BUILD_RESIDUAL_PRIOR == {"relevance": 0.1, "statistics": 3.0}
    assert m.fit_user([{"prompt": "Hi.", "chosen": "Hello!", "rejected": "No."}]).residual_prior[1:] == (
        ("relevance", m.config.hidden_size, 0.1), ("statistics", 13, 3.0))
    card = (folder / "README.md").read_text()
    assert 'chosen per user, at every fit, by the Laplace evidence' in card
    assert ("under a prior that scales what it may use of each block of the pair features (relevance 0.1, "
            'statistics 3; the others 1) (`recommended_residual_strength` "evidence" and '
            "`recommended_residual_prior` in config.json;") in card
    assert '| this model (default: + residual, `residual_strength="evidence"`) |' in card
    old = RewardModel.load(export_model(tiny_run, tmp_path / "old", report={}, precision="fp32"), precision="fp32")
    assert old.config.recommended_residual_strength == 30.0
    assert old.config.recommended_residual_prior is None
    assert not {"recommended_residual_strength", "recommended_residual_prior"} & set(
        json.loads((tmp_path / "old" / "config.json").read_text()))
    assert ("a residual over the pair features of strength 30 (`recommended_residual_strength` in config.json;"
            in (tmp_path / "old" / "README.md").read_text())


def test_a_measurement_goes_into_the_report_and_the_card_is_written_from_it(tiny_run, tiny_export, tmp_path):
    """`tastes --card` / `robustness --card`: the result joins runs/ship/report.json and the whole card is
    written again from that report (the folder still loads: its manifest follows)."""
    import shutil

    from moerm_build.release.pipeline import record

    runs, folder = tmp_path / "runs", tmp_path / "model"
    shutil.copytree(tiny_run, runs / "ship")
    shutil.copytree(tiny_export, folder)
    (runs / "ship" / "report.json").write_text(json.dumps({"dsp": None}))
    shots = {str(n): 0.55 for n in (5, 10, 20, 50)}
    tastes = {"members": {"topic": ["food", "money"]}, "heldout_per_user": [4, 6],
              "topic": {"users": 3, "model": shots, "model_residual": {**shots, "50": 0.6}, "model_auto": shots,
                        "frozen_probe": shots}}
    record(runs, folder, "tastes", tastes)
    rep = json.loads((runs / "ship" / "report.json").read_text())
    assert rep["tastes"] == tastes and "dsp" in rep  # the rest of the report kept
    card = (folder / "README.md").read_text()
    assert "| topic (2 kinds) | 3 | this model (default: + residual) | 55.0 | 55.0 | 55.0 | 60.0 |" in card
    assert "| topic (2 kinds) | 3 | weights alone | 55.0 | 55.0 | 55.0 | 55.0 |" in card
    assert "scored on 4–6 more" in card
    RewardModel.load(folder)  # manifest refreshed with the card
    with pytest.raises(SystemExit, match="report.json not found"):
        record(tmp_path / "elsewhere", folder, "tastes", tastes)
    import torch  # another run's report never reaches this folder's card

    other = tmp_path / "other"
    shutil.copytree(runs, other)
    ckpt = torch.load(other / "ship" / "ckpt.pt", weights_only=False)
    ckpt["head"]["w0"] = ckpt["head"]["w0"] + 0.5
    torch.save(ckpt, other / "ship" / "ckpt.pt")
    before = (folder / "README.md").read_text()
    with pytest.raises(SystemExit, match="was not exported from"):
        record(other, folder, "tastes", {**tastes, "heldout_per_user": [1, 2]})
    assert (folder / "README.md").read_text() == before


def test_torch_pair_features_equal_the_runtime_function(tiny_bert):
    """Fine-tuning computes the features in torch; they must be the numpy features the runtime computes."""
    from moerm_build.model import Backbone
    from moerm_build.train.embed import TorchPairFeatures, embed_texts, features_of, text_tokenizer

    bb = Backbone(tiny_bert).eval()
    import tempfile
    from pathlib import Path

    with tempfile.TemporaryDirectory() as tmp:
        tok = text_tokenizer(tiny_bert, 32, Path(tmp))
        pairs = random_pairs(12, seed=3)
        ref = features_of(lambda t, role: embed_texts(bb, tok, t, role), pairs)
        with torch.no_grad():
            got = TorchPairFeatures(bb, tok)(pairs).numpy()
    np.testing.assert_allclose(got, ref, atol=1e-5)


def test_pruned_experts_leave_routed_scores_unchanged(tiny_run, tmp_path):
    """Dropping experts no input routes to: the folder's scores equal the full head's on those inputs."""
    from moerm_build.release.onnx_export import used_experts

    ckpt, head = load_checkpoint(tiny_run)
    pairs = random_pairs(40, seed=21)
    full = export_model(tiny_run, tmp_path / "full", prune=False, precision="fp32")
    g = RewardModel.load(full, precision="fp32").expert_outputs(pairs)["gating_output"]
    share = {"syn": (g > 0).mean(0).tolist()}
    share["syn"][1] = 0.0  # pretend expert 1 is never routed ...
    g_routed = g[:, 1] == 0  # ... and compare on the inputs that do not route to it
    keep = used_experts({"routing_share_by_source": share}, 6, 2)
    assert keep == [0, 2, 3, 4, 5]
    pruned = export_model(tiny_run, tmp_path / "pruned", report={"routing_share_by_source": share},
                          precision="fp32")
    m = RewardModel.load(pruned, precision="fp32")
    assert m.n_experts == 5 and m.config.extra["training"]["kept_experts"] == keep
    ref = RewardModel.load(full, precision="fp32").score_pairs(pairs)
    np.testing.assert_allclose(m.score_pairs(pairs)[g_routed], ref[g_routed], atol=1e-6)


@pytest.mark.slow
def test_own_data_in_one_command(tiny_bert, tmp_path):
    """`python -m moerm_build own prefs.jsonl -o DIR --scratch`: a loadable folder and a held-out accuracy."""
    import subprocess
    import sys

    from tests.tiny import WORDS

    rng = np.random.default_rng(0)
    rows = []
    for i in range(120):
        prompt = f"{WORDS[i % 40]} {WORDS[(i * 7) % 40]} question {i}"
        good = " ".join(rng.choice(["good", "great", "kind", "nice", "help"], 4))
        bad = " ".join(rng.choice(["bad", "awful", "rude", "mean", "harm"], 4))
        rows.append({"prompt": prompt, "chosen": good, "rejected": bad})
    f = tmp_path / "prefs.jsonl"
    f.write_text("".join(json.dumps(r) + "\n" for r in rows))
    out = tmp_path / "mine"
    res = subprocess.run([sys.executable, "-m", "moerm_build", "own", str(f), "-o", str(out), "--scratch", "--backbone",
                          str(tiny_bert), "--set", "max_length=32", "epochs=30", f'cache_dir="{tmp_path / "c"}"'],
                         capture_output=True, text=True, timeout=600, cwd=str(Path(__file__).resolve().parents[1]))
    assert res.returncode == 0, res.stderr[-3000:]
    report = json.loads(res.stdout)
    assert report["test_comparisons"] > 0 and report["heldout_accuracy"] >= 0.9  # a taste this plain is learnt
    m = RewardModel.load(out)
    q = f"{WORDS[3]} {WORDS[5]} question 999"
    assert m.score(q, "good kind help nice") > m.score(q, "rude awful harm mean")
    assert len(m.describe_experts()) == m.n_experts  # cards from the shipped reference corpus


def test_training_appends_the_population_readout_and_the_folder_computes_it(tiny_bert, tmp_path):
    pairs = random_pairs(160, seed=7)
    recs = [{"prompt": pairs[i][0], "chosen": pairs[i][1], "rejected": pairs[i + 1][1], "source": "syn",
             "user_id": f"u{i % 3}"} for i in range(0, 80, 2)]
    recs += [{"prompt": pairs[i][0], "chosen": pairs[i][1], "rejected": pairs[i + 1][1], "source": "pop"}
             for i in range(80, 158, 2)]  # population records: what the read-out is fitted on
    cfg = TrainConfig(backbone=str(tiny_bert), max_length=32, n_experts=6, n_shared=2, top_k=2,
                      expert_hidden=8, epochs=2, batch_size=16, cache_dir=str(tmp_path / "cache"),
                      readout_sources=["pop"])
    train(cfg, tmp_path / "run", records=recs)
    parts = load_checkpoint(tmp_path / "run")
    ckpt, head = parts
    assert (head.args.n_experts, head.args.n_shared, head.args.n_readout) == (7, 3, 1)
    prompted = sum(1 for r in recs if "user_id" not in r and r["prompt"].strip())  # population, with a prompt
    assert 0 < prompted < 39 and ckpt["readout"]["records"] == {"pop": prompted}
    assert float(head.w0[-1].detach()) == 1.0
    folder = export_model(tmp_path / "run", tmp_path / "model", also_fp32=True, prune=False)
    config = json.loads((folder / "config.json").read_text())
    assert config["n_experts"] == 7 and config["training"]["readout"]["experts"] == 1
    test = random_pairs(32, seed=12)
    np.testing.assert_allclose(RewardModel.load(folder, precision="fp32", threads=1).score_pairs(test),
                               torch_run_scores(parts, test), atol=1e-4)
    cfg_none = TrainConfig(**{**cfg.__dict__, "readout_sources": []})  # none asked for: the head as trained
    train(cfg_none, tmp_path / "plain", records=recs)
    assert load_checkpoint(tmp_path / "plain")[1].args.n_readout == 0
    # a run trained without one gets the same read-out afterwards (python -m moerm_build release build --resume)
    assert readout_run(tmp_path / "plain", cfg, records=recs)
    assert not readout_run(tmp_path / "plain", cfg, records=recs)  # it has one now
    later = load_checkpoint(tmp_path / "plain")[1].state_dict()
    assert [k for k, v in head.state_dict().items() if not torch.equal(v, later[k])] == []


def test_a_run_with_attribute_users_gets_attribute_readouts_and_an_older_run_gets_the_same(tiny_bert, tmp_path,
                                                                                          monkeypatch):
    from moerm_build.data.attributes import ATTRIBUTES, ResponsePool
    from moerm_build.train import train as train_module

    pairs = random_pairs(200, seed=9)
    recs = [{"prompt": pairs[i][0] or "a question", "chosen": pairs[i][1], "rejected": pairs[i + 1][1],
             "source": "attribute_users", "user_id": f"attribute-{i % 4}"} for i in range(0, 198, 2)]
    pool = ResponsePool.build(recs)  # the replies those users compared (the build reads the licensed sets)
    monkeypatch.setattr(train_module, "attribute_training_pool", lambda data_dir: pool)
    cfg = TrainConfig(backbone=str(tiny_bert), max_length=32, n_experts=6, n_shared=2, top_k=2,
                      expert_hidden=8, epochs=2, batch_size=16, cache_dir=str(tmp_path / "cache"),
                      readout_sources=[])
    train(cfg, tmp_path / "run", records=recs)
    ckpt, head = load_checkpoint(tmp_path / "run")
    A = len(ATTRIBUTES)
    assert (head.args.n_experts, head.args.n_readout) == (6 + A, A) and (head.w0[-A:] == 0).all()
    assert ckpt["readout"]["attribute_readouts"]["attributes"] == list(ATTRIBUTES)
    train(TrainConfig(**{**cfg.__dict__, "attribute_readout_variance": 0.0}), tmp_path / "plain", records=recs)
    assert load_checkpoint(tmp_path / "plain")[1].args.n_readout == 0
    assert readout_run(tmp_path / "plain", cfg, records=recs)
    assert not readout_run(tmp_path / "plain", cfg, records=recs)  # it has them now
    later = load_checkpoint(tmp_path / "plain")[1]
    assert later.args == head.args
    assert [k for k, v in head.state_dict().items() if not torch.equal(v, later.state_dict()[k])] == []
    folder = export_model(tmp_path / "run", tmp_path / "model", also_fp32=True, prune=False)
    config = json.loads((folder / "config.json").read_text())
    assert config["training"]["readout"]["experts"] == A and "8 predict a reply's verbosity" in (
        folder / "README.md").read_text()
    test = random_pairs(32, seed=13)
    w = np.zeros(6 + A)
    w[-A:] = np.linspace(-1.0, 1.0, A)  # a user of the attribute read-outs only: the population ignores them
    got = RewardModel.load(folder, precision="fp32", threads=1).score_pairs(test, user=w)
    np.testing.assert_allclose(got, torch_run_scores((ckpt, head), test, w), atol=1e-4)
    assert np.abs(got).max() > 0.1 and (got[[not p.strip() for p, _ in test]] == 0).all()  # silent without prompt


def test_card_active_section_names_the_rule_and_the_curve():
    """The card's active-questions lines: the rule next_comparison ships (from moerm_lite.active's constants)
    and the curve at N = 1, 2, 3, 5, 10, 15, 20 in percent."""
    from moerm_build.release.card import active_section

    act = {"users": 3, "pool_size": 10, "prior_strength": 0.1, "N": list(range(1, 21)),
           "active": [0.5 + i / 100 for i in range(20)], "random": [0.5] * 20,
           "gain_at_10": 0.032, "gain_at_10_stderr": 0.004}
    lines = active_section(act)
    assert "first 5 answers" in lines[0] and "a prior 3 times stronger" in lines[0] and "3 persona" in lines[0]
    assert "| active | 50.0 | 51.0 | 52.0 | 54.0 | 59.0 | 64.0 | 69.0 |" in lines
    assert lines[-2:] == ["Gain at N = 10: +3.2 points (± 0.4 standard error).", ""]


def test_a_missing_fine_tuned_backbone_is_built_by_the_configs_encoder_recipe(tmp_path, monkeypatch):
    """`release build` fine-tunes the config's backbone with its encoder_recipe where the folder is missing,
    into the backbone's parent; a folder already there, or no recipe, fine-tunes nothing; a recipe that would
    write another folder is refused before anything runs."""
    from moerm_build.release.pipeline import ensure_backbone
    from moerm_build.train import finetune as ft

    calls = []
    monkeypatch.setattr(ft, "finetune", lambda cfg, out: calls.append((cfg, Path(out))))
    recipe = tmp_path / "encoder.json"
    recipe.write_text(json.dumps({"noise": ["deleted"], "epochs": 0.5}))
    backbone = tmp_path / "runs" / "enc" / ft.TUNED_BACKBONE_NAME
    ensure_backbone(TrainConfig(backbone=str(backbone), encoder_recipe=str(recipe)))
    assert [(c.noise, c.epochs, out) for c, out in calls] == [(["deleted"], 0.5, backbone.parent)]
    ensure_backbone(TrainConfig(backbone=str(backbone)))  # no recipe: the folder must simply be there
    backbone.mkdir(parents=True)
    (backbone / "config.json").write_text("{}")
    ensure_backbone(TrainConfig(backbone=str(backbone), encoder_recipe=str(recipe)))  # already built
    assert len(calls) == 1
    with pytest.raises(ValueError, match="a folder named 'all-MiniLM-L6-v2-quality'"):
        ensure_backbone(TrainConfig(backbone=str(tmp_path / "elsewhere"), encoder_recipe=str(recipe)))
    assert len(calls) == 1


def test_training_fits_the_request_gate_and_the_folder_applies_it_as_torch_does(tiny_bert, tmp_path):
    """Population records of HH-RLHF harmless among the training records: the run keeps a request gate over
    the routed experts those requests route to most (moerm_build/train/request_gate.py); the folder, pruned,
    scores as the torch featurizer does with it; a run trained without one gets the same afterwards
    (--resume)."""
    from moerm_build.evaluate.metrics import TorchFeaturizer
    from moerm_lite.head import combine

    pairs = random_pairs(240, seed=17)
    red = [("harm danger hate " + p).strip() for p, _ in pairs]  # red-team requests share words
    recs = [{"prompt": red[i] if i % 4 == 0 else pairs[i][0] or "what", "chosen": pairs[i][1],
             "rejected": pairs[i + 1][1], "source": "hh_harmless" if i % 4 == 0 else "hh_helpful"}
            for i in range(0, 238, 2)]
    recs += [{"prompt": pairs[i][0], "chosen": pairs[i][1], "rejected": pairs[i + 1][1], "source": "syn",
              "user_id": f"u{i % 3}"} for i in range(0, 120, 2)]
    cfg = TrainConfig(backbone=str(tiny_bert), max_length=32, n_experts=8, n_shared=2, top_k=2,
                      expert_hidden=8, epochs=2, batch_size=16, cache_dir=str(tmp_path / "cache"), readout_sources=[])
    train(cfg, tmp_path / "run", records=recs)
    gate = load_checkpoint(tmp_path / "run")[0]["request_gate"]
    assert gate["source"] == "hh_harmless" and gate["requests"] == {"red_team": 60, "other": 59}
    assert gate["experts"] and all(k < 6 for k in gate["experts"])  # routed experts only
    assert len(gate["weights"]) == 33  # H + 1
    tz, plain = TorchFeaturizer(tmp_path / "run"), TorchFeaturizer(tmp_path / "run", request_gate=False)
    test = [(f"harm danger {p}", r) for p, r in random_pairs(24, seed=18)] + random_pairs(24, seed=19)
    g, r = tz.outputs(test)
    g0, _ = plain.outputs(test)
    assert (g[:, gate["experts"]] == 0).sum() > (g0[:, gate["experts"]] == 0).sum()  # switched off somewhere
    # the folder without a routed expert the gate does not hold: the gate's indices follow the kept ones
    drop = next(k for k in range(6) if k not in gate["experts"])
    share = {"syn": [0.0 if k == drop else 1.0 for k in range(8)]}
    folder = export_model(tmp_path / "run", tmp_path / "model", report={"routing_share_by_source": share},
                          precision="fp32")
    m = RewardModel.load(folder, precision="fp32", threads=1)
    keep = m.config.extra["training"]["kept_experts"]
    assert m.config.request_gate is not None
    assert [keep[k] for k in m.config.request_gate.experts] == gate["experts"]
    assert f"switches off the {len(gate['experts'])} routed experts" in (folder / "README.md").read_text()
    routed = g0[:, drop] == 0  # the inputs the dropped expert takes no part in, some of them gated
    assert (routed & (g != g0).any(1)).sum() >= 3 and (routed & (g == g0).all(1)).sum() >= 3
    np.testing.assert_allclose(m.score_pairs(test)[routed], combine(g, r, tz.w0)[routed], atol=1e-4)
    train(TrainConfig(**{**cfg.__dict__, "request_gate": False}), tmp_path / "plain", records=recs)
    assert load_checkpoint(tmp_path / "plain")[0]["request_gate"] is None
    assert readout_run(tmp_path / "plain", cfg, records=recs)
    assert not readout_run(tmp_path / "plain", cfg, records=recs)  # it has one now
    assert load_checkpoint(tmp_path / "plain")[0]["request_gate"] == gate
