"""The TRL adapter inside a real trainer loop: a few GRPO steps on the CPU with a tiny, randomly initialised
causal LM built here from a config (no downloads) and the shipped model as the reward function. One
rollout batch gets an empty and an over-long completion put in front of the reward, as a policy makes them."""

import math
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[1]
PROMPTS = ["How do I boil an egg?", "Recommend a book for a long flight.", "What is the capital of France?",
           "Give me a tip for sleeping better."]


@pytest.mark.slow
def test_grpo_trainer_runs_with_the_reward_function(tmp_path):
    pytest.importorskip("torch")
    trl = pytest.importorskip("trl")
    from datasets import Dataset
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    from moerm_lite import RewardModel
    from moerm_lite.integrations import trl_reward_func

    tok = PreTrainedTokenizerFast(tokenizer_file=str(ROOT / "models" / "moerm-minilm" / "tokenizer.json"),
                                  pad_token="[PAD]", eos_token="[SEP]", bos_token="[CLS]", unk_token="[UNK]")
    tok.padding_side = "left"
    policy = LlamaForCausalLM(LlamaConfig(vocab_size=len(tok), hidden_size=32, intermediate_size=64,
                                          num_hidden_layers=1, num_attention_heads=2, num_key_value_heads=2,
                                          max_position_embeddings=128, pad_token_id=tok.pad_token_id,
                                          eos_token_id=tok.eos_token_id, bos_token_id=tok.bos_token_id))
    reward = trl_reward_func(RewardModel.load(threads=1))
    seen: list[list[float]] = []

    def moerm_lite_reward(prompts, completions, **kwargs):
        completions = list(completions)
        if not seen:  # the first batch: what a policy sometimes writes
            completions[0], completions[1] = "", "word " * 20_000
        out = reward(prompts, completions, **kwargs)
        seen.append(out)
        return out

    args = trl.GRPOConfig(output_dir=str(tmp_path), max_steps=2, per_device_train_batch_size=4,
                          num_generations=4, max_completion_length=12, learning_rate=1e-3, logging_steps=1,
                          report_to=[], use_cpu=True, save_strategy="no", seed=0, bf16=False)
    trainer = trl.GRPOTrainer(model=policy, reward_funcs=[moerm_lite_reward], args=args, processing_class=tok,
                              train_dataset=Dataset.from_list([{"prompt": p} for p in PROMPTS * 2]))
    trainer.train()
    assert seen and all(len(b) == 4 and all(math.isfinite(r) for r in b) for b in seen)
    logs = [h for h in trainer.state.log_history if "loss" in h]
    assert logs and all(math.isfinite(h["loss"]) for h in logs)
    assert any(k.startswith("rewards/moerm_lite_reward") for h in logs for k in h)  # TRL logs our reward
