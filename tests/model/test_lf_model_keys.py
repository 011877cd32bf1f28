"""LLaMA-Factory's model keys that change what is loaded: rope_scaling, train_from_scratch, new tokens."""

from __future__ import annotations

import math
from pathlib import Path

import pytest
import torch
from safetensors.torch import load_file

from kubetune.config import ConfigError, load_config
from kubetune.model.loader import load_base_model, load_tokenizer
from kubetune.model.rope import configure_rope
from kubetune.model.vocabulary import embedding_module_names, initialise_rows


def _model_args(model_dir: Path, **keys):
    return load_config(None, {"model_name_or_path": str(model_dir), **keys}).model


@pytest.mark.parametrize("rope", ["linear", "dynamic", "yarn", "llama3"])
def test_rope_scaling_stretches_the_rotary_embedding_for_cutoff_len(tiny_model_dir: Path, rope: str) -> None:
    plain = load_base_model(_model_args(tiny_model_dir))
    scaled = load_base_model(_model_args(tiny_model_dir, rope_scaling=rope), model_max_length=1100)
    factor = math.ceil(1100 / 512)  # the tiny llama has 512 positions
    params = scaled.config.rope_parameters
    assert params["rope_type"] == rope and params["factor"] == factor and params["rope_theta"] == 10000.0
    assert scaled.config.max_position_embeddings == 512 * factor
    if rope != "linear":
        assert params["original_max_position_embeddings"] == 512
    if rope == "llama3":
        assert (params["low_freq_factor"], params["high_freq_factor"]) == (1.0, 4.0)
    rotary, base = scaled.model.rotary_emb, plain.model.rotary_emb
    assert rotary.rope_type == rope
    positions = torch.tensor([[0, 700, 1099]])
    x = torch.zeros(1, 3, 64)
    cos, _ = rotary(x, positions)
    base_cos, _ = base(x, positions)
    if rope == "dynamic":
        # NTK rescales only once a sequence runs past max_position_embeddings, which (as in LLaMA-Factory) has
        # grown by the factor already: 1536 here
        assert torch.allclose(cos, base_cos)
        cos, _ = rotary(x, torch.arange(1600)[None])
        base_cos, _ = base(x, torch.arange(1600)[None])
    assert not torch.allclose(cos, base_cos), "the scaled rotary embedding must differ from the plain one"
    ids = torch.tensor([[1, 2, 3, 4]])
    scaled.load_state_dict(plain.state_dict())
    if rope in ("linear", "yarn"):  # scaled positions even within the original context: other logits
        assert not torch.allclose(scaled(ids).logits, plain(ids).logits)


def test_a_stage_sizes_rope_scaling_for_its_cutoff_len(tiny_model_dir: Path) -> None:
    from kubetune.model.policy import load_policy

    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "rope_scaling": "linear", "cutoff_len": 1100,
                             "finetuning_type": "full", "gradient_checkpointing": False})
    model, _ = load_policy(cfg, str(tiny_model_dir), trainable=True)
    assert model.config.rope_parameters["factor"] == 3.0 and model.model.rotary_emb.rope_type == "linear"


def test_rope_scaling_is_off_when_cutoff_len_fits_and_doubles_at_inference(tiny_model_dir: Path) -> None:
    args = _model_args(tiny_model_dir, rope_scaling="linear")
    fits = load_base_model(args, model_max_length=512)
    assert fits.config.rope_parameters["rope_type"] == "default" and fits.config.max_position_embeddings == 512
    inference = load_base_model(args)  # chat: LLaMA-Factory's factor 2
    assert inference.config.rope_parameters["factor"] == 2.0 and inference.config.max_position_embeddings == 1024


def test_rope_scaling_reads_the_original_length_of_an_already_scaled_config() -> None:
    from transformers import LlamaConfig

    config = LlamaConfig(max_position_embeddings=8192, rope_parameters={
        "rope_type": "llama3", "rope_theta": 5e5, "factor": 8.0, "original_max_position_embeddings": 1024,
        "low_freq_factor": 1.0, "high_freq_factor": 4.0})
    configure_rope(config, "yarn", 3000)
    assert config.rope_parameters["factor"] == 3.0 and config.max_position_embeddings == 3072
    assert config.rope_parameters["rope_theta"] == 5e5


def test_rope_scaling_choices_and_model_max_length_stays_refused() -> None:
    with pytest.raises(ConfigError, match="rope_scaling"):
        load_config(None, {"model_name_or_path": "m", "rope_scaling": "ntk"})
    with pytest.raises(ConfigError, match="derived from cutoff_len"):
        load_config(None, {"model_name_or_path": "m", "model_max_length": 4096})


def test_train_from_scratch_builds_seeded_random_weights(tiny_model_dir: Path) -> None:
    from transformers import set_seed

    pretrained = load_file(tiny_model_dir / "model.safetensors")
    args = _model_args(tiny_model_dir, train_from_scratch=True)
    set_seed(7)
    first = load_base_model(args, from_scratch=True).state_dict()
    set_seed(7)
    again = load_base_model(args, from_scratch=True).state_dict()
    name = "model.layers.0.self_attn.q_proj.weight"
    assert first[name].shape == pretrained[name].shape
    assert not torch.allclose(first[name], pretrained[name]), "random init must not read the checkpoint"
    torch.testing.assert_close(first[name], again[name])  # the seed decides the weights


def test_train_from_scratch_in_a_stage_trains_other_weights(tiny_model_dir: Path, tmp_path: Path,
                                                           cache_dir: Path) -> None:
    from kubetune.model.policy import load_policy

    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "finetuning_type": "full",
                             "train_from_scratch": True})
    model, _ = load_policy(cfg, str(tiny_model_dir), trainable=True)
    pretrained = load_file(tiny_model_dir / "model.safetensors")
    name = "model.layers.1.mlp.down_proj.weight"
    assert not torch.allclose(model.state_dict()[name], pretrained[name])


def test_new_tokens_are_added_to_the_tokenizer_as_single_ids(tiny_model_dir: Path) -> None:
    args = _model_args(tiny_model_dir, add_tokens="qzqz,wxwx", add_special_tokens="<|tool|>")
    assert args.resize_vocab  # asking for tokens asks for their rows
    plain = load_tokenizer(_model_args(tiny_model_dir))
    tokenizer = load_tokenizer(args)
    assert len(tokenizer) == len(plain) + 3
    ids = tokenizer.encode("call <|tool|> qzqz", add_special_tokens=False)
    assert tokenizer.convert_tokens_to_ids("<|tool|>") in ids and tokenizer.convert_tokens_to_ids("qzqz") in ids
    # special: dropped when decoding with skip_special_tokens; plain: kept
    assert tokenizer.decode(ids, skip_special_tokens=True) == "call  qzqz"
    assert len(plain.encode("<|tool|>", add_special_tokens=False)) > 1


def test_resize_vocab_grows_the_embeddings_by_blocks_of_64_with_noisy_mean_rows(tiny_model_dir: Path) -> None:
    args = _model_args(tiny_model_dir, add_special_tokens="<a1>,<a2>")
    tokenizer = load_tokenizer(args)
    old = load_base_model(_model_args(tiny_model_dir)).get_input_embeddings().weight.detach()
    model = load_base_model(args, tokenizer=tokenizer)
    weight = model.get_input_embeddings().weight.detach()
    assert weight.shape[0] == math.ceil(len(tokenizer) / 64) * 64 > old.shape[0]
    assert model.config.vocab_size == weight.shape[0]
    torch.testing.assert_close(weight[: old.shape[0]], old)  # the old rows are untouched
    new = weight[old.shape[0]:]
    # noise_init: the old rows' mean plus noise of std 1/sqrt(hidden)
    assert torch.allclose(new.mean(dim=0), old.mean(dim=0), atol=4 / math.sqrt(64 * len(new)))
    assert abs((new - old.mean(dim=0)).std().item() - 1 / math.sqrt(64)) < 0.02


def test_desc_init_starts_each_new_row_from_its_description(tiny_model_dir: Path, tmp_path: Path) -> None:
    descriptions = tmp_path / "tokens.yaml"
    descriptions.write_text("<think>: reasoning before the answer\n<tool>: a call to a tool\n")
    args = _model_args(tiny_model_dir, new_special_tokens_config=str(descriptions), init_special_tokens="desc_init",
                       add_special_tokens="<ignored>")
    tokenizer = load_tokenizer(args)
    assert "<think>" in tokenizer.get_vocab() and "<ignored>" not in tokenizer.get_vocab()  # the YAML wins
    old = load_base_model(_model_args(tiny_model_dir)).get_input_embeddings().weight.detach()
    weight = load_base_model(args, tokenizer=tokenizer).get_input_embeddings().weight.detach()
    ids = tokenizer("a call to a tool", add_special_tokens=False)["input_ids"]
    torch.testing.assert_close(weight[tokenizer.convert_tokens_to_ids("<tool>")], old[ids].mean(dim=0))


def test_initialise_rows_with_noise_and_descriptions() -> None:
    from transformers import AutoTokenizer  # noqa: F401  (the tokenizer stub below stands in)

    class Ids:
        def __call__(self, text: str, add_special_tokens: bool = False) -> dict:
            return {"input_ids": [0, 1, 9]}  # 9 is a new id: left out of the mean

        def convert_tokens_to_ids(self, token: str) -> int:
            return {"<x>": 8, "<y>": 9, "<old>": 3}[token]

    weight = torch.arange(40, dtype=torch.float32).reshape(10, 4).clone()
    inputs = weight.clone()
    initialise_rows(weight, 2, "desc_init_w_noise", {"<x>": "text"}, Ids(), inputs)
    assert not torch.allclose(weight[8], inputs[[0, 1]].mean(dim=0))  # noise added
    assert torch.allclose(weight[8], inputs[[0, 1]].mean(dim=0), atol=2.5)
    torch.testing.assert_close(weight[9], inputs[9])  # a padding row past the descriptions keeps its start

    # each description reaches its own token's row, whatever the order; a token the vocabulary had keeps its row
    weight = inputs.clone()
    initialise_rows(weight, 2, "desc_init", {"<old>": "text", "<y>": "text"}, Ids(), inputs)
    torch.testing.assert_close(weight[9], inputs[[0, 1]].mean(dim=0))
    torch.testing.assert_close(weight[[3, 8]], inputs[[3, 8]])


def test_bad_special_tokens_config_names_the_key(tiny_model_dir: Path, tmp_path: Path) -> None:
    with pytest.raises(ValueError, match="new_special_tokens_config.*does not exist"):
        load_tokenizer(_model_args(tiny_model_dir, new_special_tokens_config=str(tmp_path / "none.yaml")))
    listed = tmp_path / "list.yaml"
    listed.write_text("- <a>\n- <b>\n")
    with pytest.raises(ValueError, match="must map each new token to a description"):
        load_tokenizer(_model_args(tiny_model_dir, new_special_tokens_config=str(listed)))


def test_preflight_checks_the_special_tokens_file(tmp_path: Path) -> None:
    from kubetune.validate.models import special_tokens_file

    cfg = load_config(None, {"model_name_or_path": "m", "new_special_tokens_config": str(tmp_path / "no.yaml")})
    [problem] = special_tokens_file(cfg)
    assert problem.key == "new_special_tokens_config" and "does not exist" in problem.message
    (tmp_path / "ok.yaml").write_text("<t>: a token\n")
    assert special_tokens_file(load_config(None, {"model_name_or_path": "m",
                                                  "new_special_tokens_config": str(tmp_path / "ok.yaml")})) == []


def test_resize_vocab_on_a_quantised_base_is_refused() -> None:
    with pytest.raises(ConfigError, match="add_tokens.*quantised model cannot be resized"):
        load_config(None, {"model_name_or_path": "m", "add_tokens": "x", "quantization_bit": 4})
    with pytest.raises(ConfigError, match="train_from_scratch"):
        load_config(None, {"model_name_or_path": "m", "train_from_scratch": True, "quantization_bit": 4})


def test_lora_trains_the_resized_embeddings_and_head_in_full(tiny_model_dir: Path) -> None:
    from kubetune.model.policy import load_policy

    cfg = load_config(None, {"model_name_or_path": str(tiny_model_dir), "add_special_tokens": "<n1>",
                             "lora_rank": 4, "gradient_checkpointing": False})
    model, dtype = load_policy(cfg, str(tiny_model_dir), trainable=True)
    assert dtype == torch.float32
    assert embedding_module_names(model.get_base_model()) == ["embed_tokens", "lm_head"]
    # tied: PEFT keeps one entry for the shared weight
    assert any(name.endswith("embed_tokens") for name in model.peft_config["default"].modules_to_save)
    trained = {name for name, p in model.named_parameters() if p.requires_grad}
    assert any("embed_tokens.modules_to_save" in name for name in trained)
    base = model.get_base_model()  # tied: the lookup and the head train one shared copy
    assert base.get_output_embeddings().weight is base.get_input_embeddings().weight
    assert model.peft_config["default"].ensure_weight_tying
