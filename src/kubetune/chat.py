"""An interactive terminal chat with a base model plus optional adapter."""

from __future__ import annotations

import sys
from threading import Thread
from typing import TextIO

import torch
from transformers import TextIteratorStreamer

from kubetune.config import RunConfig
from kubetune.data.schema import Message
from kubetune.data.setup import tokenizer_and_template
from kubetune.evaluate.generate import generation_kwargs
from kubetune.model.adapters import prepare_for_training
from kubetune.model.loader import load_base_model, resolve_model_path

HELP = "Type a message. Commands: `clear` forgets the conversation, `exit` quits."


def chat(cfg: RunConfig, stdin: TextIO = sys.stdin, stdout: TextIO = sys.stdout) -> None:
    """Run the chat loop until `exit` or end of input; answers stream as they are generated."""
    path = resolve_model_path(cfg.model)
    tokenizer, template = tokenizer_and_template(cfg, path)
    model = load_base_model(cfg.model, path=path, tokenizer=tokenizer)  # rope_scaling at inference: factor 2
    model = prepare_for_training(model, cfg.model, cfg.method, is_trainable=False, gradient_checkpointing=False)
    kwargs = generation_kwargs(cfg.generation, tokenizer, template.stop_token_ids(tokenizer))
    system = ""  # the template supplies its default_system (the config's, if set) when this is empty
    history: list[Message] = []
    print(HELP, file=stdout, flush=True)
    while True:
        print("\nUser: ", end="", file=stdout, flush=True)
        line = stdin.readline()
        if not line or line.strip() == "exit":
            return
        query = line.strip()
        if query == "clear":
            history = []
            print("History cleared.", file=stdout, flush=True)
            continue
        history.append(Message("user", query))
        prompt = template.encode_prompt(tokenizer, history, system, "")
        streamer = TextIteratorStreamer(tokenizer, skip_prompt=True, skip_special_tokens=True)
        inputs = torch.tensor([prompt], device=next(model.parameters()).device)
        worker = Thread(target=model.generate, kwargs={"input_ids": inputs, "attention_mask": torch.ones_like(inputs),
                                                        "streamer": streamer, **kwargs,
                                                        # a checkpoint's generation_config may say use_cache: false
                                                        "use_cache": True})
        worker.start()
        print("Assistant: ", end="", file=stdout, flush=True)
        answer = ""
        for piece in streamer:
            answer += piece
            print(piece, end="", file=stdout, flush=True)
        worker.join()
        print(file=stdout, flush=True)
        history.append(Message("assistant", answer.strip()))
