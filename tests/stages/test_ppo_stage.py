"""The ppo stage end to end on tiny models: learning from a rule-based reward, logs, checkpoints, exact
resume (lora, freeze, full), an HTTP reward through `kubetune eval`, and a reward model from an rm folder."""

from __future__ import annotations

import json
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import torch
import yaml
from safetensors.torch import load_file
from stage_helpers import StopAfter, log_lines
from transformers import AutoTokenizer, LlamaConfig, LlamaForCausalLM

from kubetune.cli import main
from kubetune.config import load_config
from kubetune.stages import run_stage

REPO = Path(__file__).resolve().parents[2]

# The rigged model samples (almost) only these 16 words; the reward counts " the".
WORDS = [" the", " a", " cat", " dog", " red", " blue", " sun", " moon", " tree", " car", " house", " bird", " fish",
         " book", " pen", " cup"]
COUNT_THE = "def reward_func(prompts, responses):\n    return [float(r.split().count('the')) for r in responses]\n"


@pytest.fixture(scope="module")
def word_model_dir(tmp_path_factory: pytest.TempPathFactory, smollm2_dir: Path) -> Path:
    """A tiny Llama whose samples fall in 16 words, so a rule-based reward gives signal within a few updates.

    A random model over SmolLM2's 49k-token vocabulary samples almost uniformly: a reward counting one token
    would almost never fire. Here every input embedding carries a constant feature (dimension 0) that no layer
    writes to, and the (untied) output head reads it as a bias: +4 logits for the 16 words, −4 for the rest.
    """
    path = tmp_path_factory.mktemp("word-llama")
    tokenizer = AutoTokenizer.from_pretrained(smollm2_dir)
    ids = [tokenizer.encode(word, add_special_tokens=False) for word in WORDS]
    assert all(len(i) == 1 for i in ids)
    torch.manual_seed(0)
    config = LlamaConfig(
        vocab_size=len(tokenizer), hidden_size=64, intermediate_size=128, num_hidden_layers=2, num_attention_heads=4,
        num_key_value_heads=2, max_position_embeddings=512, tie_word_embeddings=False,
        bos_token_id=tokenizer.bos_token_id, eos_token_id=tokenizer.eos_token_id, pad_token_id=tokenizer.pad_token_id,
    )
    model = LlamaForCausalLM(config)
    with torch.no_grad():
        model.model.embed_tokens.weight[:, 0] = 1.0
        for layer in model.model.layers:
            layer.self_attn.o_proj.weight[0] = 0.0
            layer.mlp.down_proj.weight[0] = 0.0
        head = model.lm_head.weight
        head[:, 0] = -2.0
        head[[i[0] for i in ids], 0] = 2.0
        head[[i[0] for i in ids], 1:] = 0.1 * torch.randn(len(ids), 63)
    model.save_pretrained(path)
    tokenizer.save_pretrained(path)
    return path


def ppo_cfg(model_dir: Path, out: Path, **keys):
    base = {
        "model_name_or_path": str(model_dir), "stage": "ppo", "finetuning_type": "lora", "lora_rank": 4,
        "dataset": "kubi_sft", "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 48,
        "max_samples": 32, "output_dir": str(out), "per_device_train_batch_size": 4, "learning_rate": 1e-3,
        "max_steps": 4, "logging_steps": 1, "save_steps": 2, "report_to": "none", "disable_tqdm": True,
        "gradient_checkpointing": False, "max_new_tokens": 4, "ppo_epochs": 2, "top_p": 1.0, "temperature": 1.0,
    }
    return load_config(None, {**base, **keys})



def mean(values: list[float]) -> float:
    return sum(values) / len(values)


def test_reward_rises_while_kl_stays_bounded(word_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    reward = tmp_path / "count_the.py"
    reward.write_text(COUNT_THE)
    keys = {"reward_model": str(reward), "reward_model_type": "api", "eval_dataset": "kubi_sft_eval", "do_eval": True,
            "max_samples": 64, "per_device_train_batch_size": 8, "max_new_tokens": 6, "kl_coef": 0.5,
            "lr_scheduler_type": "constant"}
    before = run_stage(ppo_cfg(word_model_dir, tmp_path / "base", do_train=False, **keys))
    out = tmp_path / "ppo"
    result = run_stage(ppo_cfg(word_model_dir, out, max_steps=24, plot_loss=True, save_steps=100, **keys))

    lines = log_lines(out)
    assert [line["current_steps"] for line in lines] == list(range(1, 25))
    for key in ("total_steps", "loss", "lr", "elapsed_time", "remaining_time", "reward/mean", "objective/kl",
                "kl_coef", "policy/loss", "value/loss", "policy/clipfrac", "policy/entropy", "response_length",
                "tokens_per_second"):
        assert key in lines[-1], key
    rewards = [line["reward/mean"] for line in lines]
    assert mean(rewards[-8:]) > mean(rewards[:4]) + 1.0, rewards  # " the" in 6 tokens: ~0.4 at the start
    # β = 0.5 makes the optimum p(the) ≈ 1/3 (KL ≈ 2.6 nats over 6 tokens); collapse onto " the" would be ~17
    assert max(line["objective/kl"] for line in lines) < 12, [line["objective/kl"] for line in lines]
    # the number PPO should raise: the policy's mean reward on held-out prompts, before and after
    assert result.metrics["eval_reward_mean"] > before.metrics["eval_reward_mean"] + 0.5
    assert {"adapter_model.safetensors", "value_head.safetensors", "tokenizer.json", "run_summary.json",
            "training_reward_mean.png", "training_loss.png"} <= {p.name for p in out.iterdir()}
    assert not (tmp_path / "base" / "adapter_model.safetensors").exists()  # eval-only trains nothing



@pytest.mark.parametrize("finetuning_type", ["lora", "freeze", "full"])
def test_killed_run_resumes_to_the_same_policy(finetuning_type: str, tiny_model_dir: Path, tmp_path: Path,
                                               cache_dir: Path) -> None:
    reward = tmp_path / "length.py"
    reward.write_text("def reward_func(prompts, responses):\n    return [len(r) / 10 for r in responses]\n")
    # 2 micro-batches × 2 minibatches per update, score normalisation and reward whitening: every piece of state
    keys = {"finetuning_type": finetuning_type, "freeze_trainable_layers": 1, "reward_model": str(reward),
            "reward_model_type": "api", "per_device_train_batch_size": 2, "gradient_accumulation_steps": 2,
            "ppo_buffer_size": 2, "ppo_score_norm": True, "ppo_whiten_rewards": True, "save_total_limit": 1,
            "learning_rate": 1e-2 if finetuning_type == "lora" else 1e-3}
    straight, resumed = tmp_path / "straight", tmp_path / "resumed"
    run_stage(ppo_cfg(tiny_model_dir, straight, **keys))
    with pytest.raises(KeyboardInterrupt):
        run_stage(ppo_cfg(tiny_model_dir, resumed, **keys), callbacks=[StopAfter(3)])
    checkpoint = resumed / "checkpoint-2"
    assert {"optimizer.pt", "scheduler.pt", "rng_state.pth", "ppo_state.json",
            "value_head.safetensors"} <= {p.name for p in checkpoint.iterdir()}
    run_stage(ppo_cfg(tiny_model_dir, resumed, **keys))  # same config: picks up checkpoint-2 by itself

    weights = "adapter_model.safetensors" if finetuning_type == "lora" else "model.safetensors"
    for name in (weights, "value_head.safetensors"):
        a, b = load_file(straight / name), load_file(resumed / name)
        assert a.keys() == b.keys()
        for key in a:
            torch.testing.assert_close(a[key], b[key], rtol=0, atol=1e-6, msg=f"{name}: {key}")
    base = load_file(tiny_model_dir / "model.safetensors")
    trained = load_file(straight / weights)
    if finetuning_type != "lora":  # the policy moved, and freeze moved only its last layer
        moved = {k for k in base if not torch.equal(base[k], trained[k])}
        assert moved and (finetuning_type == "full" or all(".layers.1." in k for k in moved)), moved
    a, b = log_lines(straight), log_lines(resumed)
    assert [line["current_steps"] for line in b] == [1, 2, 3, 4]  # continued, not duplicated
    assert [line["reward/mean"] for line in a] == [line["reward/mean"] for line in b]  # the same rollouts
    assert [line["kl_coef"] for line in a] == [line["kl_coef"] for line in b]
    assert sorted(p.name for p in resumed.glob("checkpoint-*")) == ["checkpoint-4"]  # save_total_limit: 1


class _Scorer(BaseHTTPRequestHandler):
    def do_POST(self) -> None:  # noqa: N802
        payload = json.loads(self.rfile.read(int(self.headers["Content-Length"])))
        self.server.calls += 1  # type: ignore[attr-defined]
        body = json.dumps({"scores": [float(len(r.split())) for r in payload["responses"]]}).encode()
        self.send_response(200)
        self.send_header("Content-Type", "application/json")
        self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        self.wfile.write(body)

    def log_message(self, *args) -> None:
        pass


@pytest.fixture()
def scoring_url() -> Iterator[str]:
    """A JSON scoring endpoint on loopback: score = number of words in the response."""
    server = ThreadingHTTPServer(("127.0.0.1", 0), _Scorer)
    server.calls = 0  # type: ignore[attr-defined]
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    try:
        yield f"http://127.0.0.1:{server.server_address[1]}/score"
    finally:
        server.shutdown()
        server.server_close()


def test_kubetune_eval_scores_a_policy_with_an_http_reward(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path,
                                                            scoring_url: str,
                                                            capsys: pytest.CaptureFixture[str]) -> None:
    out = tmp_path / "eval"
    config = tmp_path / "ppo.yaml"
    config.write_text(yaml.safe_dump({
        "model_name_or_path": str(tiny_model_dir), "stage": "ppo", "eval_dataset": "kubi_sft_eval",
        "dataset_dir": str(REPO / "data"), "template": "chatml", "cutoff_len": 48, "max_samples": 6,
        "reward_model": scoring_url, "reward_model_type": "api", "output_dir": str(out), "max_new_tokens": 5,
        "per_device_eval_batch_size": 4, "disable_tqdm": True,
    }))
    assert main(["eval", str(config)]) == 0
    metrics = json.loads(capsys.readouterr().out)["metrics"]
    rows = [json.loads(line) for line in (out / "generated_predictions.jsonl").read_text().splitlines()]
    assert len(rows) == 6 and rows[0]["prompt"].endswith("<|im_start|>assistant\n")
    assert [row["reward"] for row in rows] == [float(len(row["predict"].split())) for row in rows]
    assert metrics["eval_reward_mean"] == pytest.approx(mean([row["reward"] for row in rows]))
    assert "predict_rouge-l" in metrics and not (out / "trainer_log.jsonl").exists()


def make_reward_model(base_dir: Path, out: Path) -> Path:
    """What a LoRA rm run leaves: a PEFT adapter on the base, value_head.safetensors and reward_model.json."""
    from peft import LoraConfig, get_peft_model

    from kubetune.model.reward import RewardModelInfo, save_reward_model
    from kubetune.model.value_head import ModelWithValueHead

    torch.manual_seed(3)
    lm = get_peft_model(LlamaForCausalLM.from_pretrained(base_dir),
                        LoraConfig(r=4, target_modules=["q_proj", "v_proj"], init_lora_weights=False))
    model = ModelWithValueHead(lm)
    with torch.no_grad():
        model.v_head.summary.weight.normal_(std=0.5)
    save_reward_model(model, out, RewardModelInfo(base_model=str(base_dir), finetuning_type="lora", template="chatml"))
    return out


def test_ppo_with_a_lora_reward_model(tiny_model_dir: Path, tmp_path: Path, cache_dir: Path) -> None:
    rm = make_reward_model(tiny_model_dir, tmp_path / "rm")
    out = tmp_path / "ppo"
    result = run_stage(ppo_cfg(tiny_model_dir, out, reward_model=str(rm), max_steps=2, eval_dataset="kubi_sft_eval",
                               do_eval=True, max_samples=8))
    rewards = [line["reward/mean"] for line in log_lines(out)]
    assert len(rewards) == 2 and all(r != 0 for r in rewards)  # a random head scores sequences off zero
    assert result.metrics["eval_reward_mean"] == result.metrics["eval_reward_mean"]  # not NaN
    with pytest.raises(ValueError, match="set reward_model_type: lora"):  # the rm folder says what it holds
        run_stage(ppo_cfg(tiny_model_dir, tmp_path / "full", reward_model=str(rm), reward_model_type="full",
                          max_steps=1, max_samples=4))
