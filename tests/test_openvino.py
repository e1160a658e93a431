"""The optional OpenVINO engine (``RewardModel.load(engine="openvino")``): the same rankings as onnxruntime
on a fixed set (ties included), scores that do not depend on the batch, its weights folded exactly, and a
clear error where OpenVINO is not installed. Its speed is measured in bench/run.py, not here."""

import importlib.util
import io
import json
import subprocess
import sys
import threading
from pathlib import Path

import numpy as np
import pytest

import moerm_lite
from moerm_lite import ModelFolderError, RewardModel
from moerm_lite.cli import main
from tests.test_no_torch import BLOCK

ROOT = Path(__file__).resolve().parents[1]
EXAMPLES = ROOT / "models" / "examples"
HAS_OPENVINO = importlib.util.find_spec("openvino") is not None
needs_openvino = pytest.mark.skipif(not HAS_OPENVINO, reason='needs OpenVINO (pip install "moerm-lite[openvino]")')
PROMPT = "How do I bake bread?"
REPLIES = ["Mix flour, water, salt and yeast, let it rise, then bake at 230 C.", "No.", "",
           "Mix flour, water, salt and yeast, let it rise, then bake at 230 C.",  # the first again: a tie
           "Bread is a food. " * 20, "Paris is the capital of France."]


def rows(name):
    return [json.loads(x) for x in (EXAMPLES / name).read_text().splitlines() if x.strip()]


@pytest.fixture(scope="module", autouse=True)
def cache_in_tmp(tmp_path_factory):
    """Compiled models cached where the tests say, never in the user's home (subprocesses inherit it)."""
    with pytest.MonkeyPatch.context() as mp:
        mp.setenv("MOERM_LITE_CACHE", str(tmp_path_factory.mktemp("moerm-lite-cache")))
        yield


@pytest.fixture(scope="module")
def engines():
    if not HAS_OPENVINO:
        pytest.skip("needs OpenVINO")
    return RewardModel.load(threads=2), RewardModel.load(threads=2, engine="openvino")


@needs_openvino
def test_same_ranking_as_onnxruntime_ties_included(engines):
    ort, ov = engines
    assert (ort.engine, ov.engine) == ("onnxruntime", "openvino") and "openvino" in repr(ov)
    calls = [(r["prompt"], r["responses"]) for r in rows("rank.jsonl")] + [(PROMPT, REPLIES)]
    for prompt, replies in calls:
        want, got = ort.rank(prompt, replies), ov.rank(prompt, replies)
        assert [r["corpus_id"] for r in got] == [r["corpus_id"] for r in want], prompt
        np.testing.assert_allclose([r["score"] for r in got], [r["score"] for r in want], atol=0.05)
    ids = [r["corpus_id"] for r in ov.rank(PROMPT, REPLIES)]
    assert ids.index(0) + 1 == ids.index(3)  # equal texts tie, in input order
    assert ov.score(PROMPT, REPLIES[0]) == ov.score(PROMPT, REPLIES[3])


@needs_openvino
def test_scores_do_not_depend_on_the_batch(engines):
    """Each text runs alone through OpenVINO (bf16 would round a padded batch differently, ~1e-3): its
    embedding is the same bits whatever else is in the call, however the call is batched or ordered, and
    its score the same up to the order of a float64 sum."""
    _, ov = engines
    comparisons = rows("user_comparisons.jsonl")
    pairs = [(r["prompt"], r[side]) for r in comparisons for side in ("chosen", "rejected")]
    texts = [r for _, r in pairs]
    alone = np.concatenate([ov.embed([t])[0] for t in texts])  # (N, H)
    wide = RewardModel.load(threads=1, engine="openvino", tokens_per_batch=10**6)
    assert np.array_equal(ov.embed(texts)[0], alone) and np.array_equal(wide.embed(texts)[0], alone)
    ref = np.array([ov.score_pairs([p])[0] for p in pairs])
    perm = np.random.default_rng(0).permutation(len(pairs))
    for got, want in ((ov.score_pairs(pairs), ref), (ov.score_pairs(pairs, batch_size=3), ref),
                      (ov.score_pairs([pairs[i] for i in perm]), ref[perm]), (wide.score_pairs(pairs), ref)):
        np.testing.assert_allclose(got, want, rtol=0, atol=1e-12)


@needs_openvino
def test_scores_from_many_threads_at_once(engines):
    _, ov = engines
    texts = [f"Reply number {i}: bake it at {200 + i} C." for i in range(8)]
    ref = ov.score(PROMPT, texts)
    out: dict[int, np.ndarray] = {}

    def work(i: int) -> None:
        out[i] = ov.score(PROMPT, texts[i:] + texts[:i])

    threads = [threading.Thread(target=work, args=(i,)) for i in range(4)]
    for t in threads:
        t.start()
    for t in threads:
        t.join()
    for i in range(4):
        assert np.array_equal(out[i], np.roll(ref, -i))


@needs_openvino
def test_weights_are_folded_exactly(engines):
    """The shipped graph's blockwise 8-bit weights behind DequantizeLinear become the fp32 constants
    onnxruntime computes: every weight MatMul folded (not attention's), and in fp32 the two engines agree
    to float rounding."""
    import openvino as ov

    from moerm_lite.ov_backbone import fold_constant_weights
    from moerm_lite.text import TextTokenizer

    ort, _ = engines
    cfg = ort.config
    core = ov.Core()
    model = core.read_model(str(ort.folder / cfg.graphs[ort.precision].backbone))
    n_matmul = sum(op.get_type_name() == "MatMul" for op in model.get_ops())
    assert fold_constant_weights(core, model) == 36 and n_matmul == 48  # 6 layers: 6 weights + 2 attention
    assert fold_constant_weights(core, model) == 0  # nothing left to fold
    compiled = core.compile_model(model, "CPU", {"INFERENCE_PRECISION_HINT": "f32"})
    tok = TextTokenizer(ort.folder / "tokenizer.json", cfg.max_length)
    texts = ["the cat is good", "a much longer text about bread and butter and the weather today"]
    ids, _ = tok.encode(texts, "response")
    got = np.concatenate([np.asarray(compiled.create_infer_request().infer(
        {k: v for k, v in tok.pad([x]).items() if k in cfg.backbone_inputs})[0]) for x in ids])
    np.testing.assert_allclose(got, ort.embed(texts)[0], atol=1e-5)


@needs_openvino
def test_batch_scorer_runs_the_engine(engines):
    from moerm_lite.batch import BatchScorer

    _, ov = engines
    rs = rows("user_comparisons.jsonl")
    out = BatchScorer(threads=1, engine="openvino")({"prompt": [r["prompt"] for r in rs],
                                                     "response": [r["chosen"] for r in rs]})
    assert out["score"] == pytest.approx(ov.score_pairs([(r["prompt"], r["chosen"]) for r in rs]), abs=1e-9)


@needs_openvino
def test_cli_runs_the_engine():
    out = io.StringIO()
    assert main(["info", "--engine", "openvino"], out=out) == 0
    assert json.loads(out.getvalue())["engine"] == "openvino"


@needs_openvino
def test_openvino_engine_imports_no_torch():
    code = BLOCK + """
from moerm_lite import RewardModel
m = RewardModel.load(threads=1, engine="openvino")
m.score("why", ["because"])
bad = [k for k in sys.modules if k.split(".")[0] in ("torch", "transformers", "optimum", "nncf", "moerm_build")]
assert not bad, bad
print("OK")
"""
    res = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                         cwd=Path(moerm_lite.__file__).parents[1])
    assert res.returncode == 0 and "OK" in res.stdout, res.stderr[-2000:]


def test_without_openvino_the_error_says_how_to_install(monkeypatch):
    monkeypatch.setitem(sys.modules, "openvino", None)  # as if not installed
    with pytest.raises(ImportError, match=r'pip install "moerm-lite\[openvino\]"'):
        RewardModel.load(threads=1, engine="openvino")


def test_an_unknown_engine_is_named():
    with pytest.raises(ValueError, match="engine must be one of .*'onnxruntime', 'openvino'.*'tensorrt'"):
        RewardModel.load(threads=1, engine="tensorrt")


@needs_openvino
def test_a_broken_graph_is_named(tiny_folder, tmp_path):
    import shutil

    from moerm_lite.folder import write_manifest

    folder = tmp_path / "broken"
    shutil.copytree(tiny_folder, folder)
    graph = folder / RewardModel.load(tiny_folder, threads=1).config.graphs["int8"].backbone
    graph.write_bytes(graph.read_bytes()[:1000])
    write_manifest(folder)
    with pytest.raises(ModelFolderError, match="OpenVINO cannot load .*backbone"):
        RewardModel.load(folder, threads=1, engine="openvino")


@needs_openvino
@pytest.mark.parametrize("precision", ["fp32", "int8"])
def test_any_folder_graph_runs(tiny_folder, precision):
    """A folder's fp32 graph (nothing to fold) and its dynamic-int8 graph run too, scoring as onnxruntime."""
    texts = ["the cat is good", "rude", "", "a longer text about the weather and bread"]
    ort, ov = (RewardModel.load(tiny_folder, precision=precision, threads=1, engine=e)
               for e in ("onnxruntime", "openvino"))
    np.testing.assert_allclose(ov.score("why", texts), ort.score("why", texts), atol=1e-2)


@needs_openvino
def test_one_text_then_many_then_one_again(engines):
    """A call of one text (one infer request) and calls of several (the streams' queue) alternate on one
    model without either touching the other's buffers (sharing the caller's arrays with the reused request
    crashed the next call), and give the same embeddings."""
    _, ov = engines
    texts = [r["chosen"] for r in rows("user_comparisons.jsonl")][:5]
    alone = np.concatenate([ov.embed([t])[0] for t in texts])  # (5, H)
    for k in (2, 1, 5, 1, 3):
        assert np.array_equal(ov.embed(texts[:k])[0], alone[:k])


@needs_openvino
def test_the_sanity_suite_loses_the_same_pairs(engines):
    """Our own 20 questions and answers against four kinds of worse reply: both engines prefer the real
    answer in exactly the same pairs."""
    suite = [json.loads(x) for x in (ROOT / "tests" / "data" / "sanity.jsonl").read_text().splitlines() if x.strip()]
    for kind in ("offtopic", "nonanswer", "dismissive", "truncated"):
        pairs = [(r["prompt"], r[side]) for r in suite for side in ("answer", kind)]
        wins = [(m.score_pairs(pairs).reshape(-1, 2) @ np.array([1.0, -1.0])) > 0 for m in engines]  # (20,) each
        assert np.array_equal(wins[0], wins[1]), kind


@needs_openvino
def test_the_prompt_runs_beside_its_replies_with_the_same_bits(engines):
    """rank() sends the prompt with its replies in one pass over the streams (prompt role: a long prompt keeps
    its end): the pair features equal those built from embedding the prompt and the replies apart."""
    from moerm_lite.features import pair_features

    _, ov = engines
    long_prompt = "Earlier turns. " * 200 + PROMPT  # over max_length: only its end is kept
    for prompt in (PROMPT, long_prompt):
        replies = [r for r in REPLIES if r.strip()]
        got, cut = ov.pair_features([(prompt, r) for r in replies])  # (n, F), (n,)
        P = np.repeat(ov.embed([prompt], role="prompt")[0], len(replies), 0)  # (n, H)
        want = pair_features(P, ov.embed(replies)[0], [prompt] * len(replies), replies, ov.config.feature_layout)
        assert np.array_equal(got, want) and cut.all() == (prompt == long_prompt)


def test_the_cache_folder_follows_the_environment(monkeypatch, tmp_path):
    from moerm_lite.ov_backbone import default_cache_dir

    monkeypatch.setenv("MOERM_LITE_CACHE", str(tmp_path / "a"))
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "b"))
    assert default_cache_dir() == tmp_path / "a" / "openvino"
    monkeypatch.delenv("MOERM_LITE_CACHE")
    assert default_cache_dir() == tmp_path / "b" / "moerm-lite" / "openvino"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert default_cache_dir() == tmp_path / "home" / ".cache" / "moerm-lite" / "openvino"


def test_compile_cache_must_be_a_flag_or_a_folder():
    with pytest.raises(ValueError, match="compile_cache must be True, False or a folder, got 3"):
        RewardModel.load(threads=1, engine="openvino", compile_cache=3)  # type: ignore[arg-type]


def no_compiling(monkeypatch):
    """From here on, a load that compiles instead of using its cache fails."""
    from moerm_lite import ov_backbone

    def fail(*args, **kwargs):
        raise AssertionError("compiled again")

    monkeypatch.setattr(ov_backbone, "fold_constant_weights", fail)


@needs_openvino
def test_the_compiled_model_is_cached_and_used_again(tmp_path, monkeypatch):
    texts = ["Mix flour, water and yeast.", "No.", ""]
    first = RewardModel.load(threads=2, engine="openvino", compile_cache=tmp_path)
    assert sorted(p.suffix for p in tmp_path.iterdir()) == [".blob", ".json"]
    no_compiling(monkeypatch)
    again = RewardModel.load(threads=2, engine="openvino", compile_cache=tmp_path)
    assert np.array_equal(again.embed(texts)[0], first.embed(texts)[0])
    assert np.array_equal(again.score(PROMPT, texts), first.score(PROMPT, texts))
    with pytest.raises(ModelFolderError, match="compiled again"):  # another thread count: its own file
        RewardModel.load(threads=1, engine="openvino", compile_cache=tmp_path)


@needs_openvino
@pytest.mark.parametrize("damage", ["garbage", "cut", "probe"])
def test_a_damaged_cache_is_compiled_again(tmp_path, monkeypatch, damage):
    """A cached file that is not what was written (another file's bytes, cut short, or a probe record that
    does not match it) is never used: the model is compiled again, scores as before, and the cache is
    rewritten."""
    texts = ["Mix flour, water and yeast.", "No."]
    want = RewardModel.load(threads=1, engine="openvino", compile_cache=False).score(PROMPT, texts)
    RewardModel.load(threads=1, engine="openvino", compile_cache=tmp_path)
    blob = next(tmp_path.glob("*.blob"))
    record = blob.with_suffix(".json")
    if damage == "garbage":
        blob.write_bytes(np.random.default_rng(0).bytes(blob.stat().st_size))
    elif damage == "cut":
        blob.write_bytes(blob.read_bytes()[: blob.stat().st_size // 2])
    else:
        probe = json.loads(record.read_text())["probe"]
        record.write_text(json.dumps({"probe": [x + 1e-3 for x in probe]}))
    m = RewardModel.load(threads=1, engine="openvino", compile_cache=tmp_path)
    assert np.array_equal(m.score(PROMPT, texts), want)
    no_compiling(monkeypatch)  # rewritten: the next load uses it
    assert np.array_equal(RewardModel.load(threads=1, engine="openvino", compile_cache=tmp_path)
                          .score(PROMPT, texts), want)


@needs_openvino
def test_no_cache_writes_nothing_and_an_unwritable_one_warns(tmp_path, monkeypatch):
    monkeypatch.setenv("MOERM_LITE_CACHE", str(tmp_path / "default"))
    want = RewardModel.load(threads=1, engine="openvino", compile_cache=False).score(PROMPT, "No.")
    assert not (tmp_path / "default").exists()
    blocked = tmp_path / "a-file"
    blocked.write_text("not a folder")
    with pytest.warns(UserWarning, match="cannot cache the compiled OpenVINO model in .*a-file"):
        m = RewardModel.load(threads=1, engine="openvino", compile_cache=blocked)
    assert m.score(PROMPT, "No.") == want
