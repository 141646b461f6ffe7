"""``quamba generate MODEL --prompt TEXT``: sample continuations, streamed as they are produced."""
from __future__ import annotations

import argparse
import sys

from .. import api, loading
from ..errors import InvalidArgumentError
from ..generation import SamplingConfig, check_prompts, generate


def add_parser(subparsers) -> None:
    p = subparsers.add_parser("generate", help="generate text from one or more prompts",
                              description="Continue each prompt with a (floating-point or quantized) Mamba LM.")
    p.add_argument("model", help="model directory or hub id")
    p.add_argument("--prompt", action="append", required=True, metavar="TEXT",
                   help="prompt text (repeat for a batch)")
    p.add_argument("--max-new-tokens", type=int, default=64)
    p.add_argument("--temperature", type=float, default=1.0, help="0 means greedy (default 1.0)")
    p.add_argument("--top-k", type=int, default=0, help="keep the k most likely tokens (0: off)")
    p.add_argument("--top-p", type=float, default=1.0, help="nucleus sampling mass (1.0: off)")
    p.add_argument("--repetition-penalty", type=float, default=1.0)
    p.add_argument("--seed", type=int, default=None)
    p.add_argument("--ignore-eos", action="store_true", help="keep generating past the end-of-text token")
    p.add_argument("--device", default="auto", help="auto, cpu, cuda or cuda:N (default auto)")
    p.add_argument("--dtype", choices=["fp32", "fp16", "bf16"], default=None,
                   help="compute dtype (default: fp32 on CPU, the checkpoint's on GPU)")
    p.add_argument("--no-stream", action="store_true", help="print the text only when it is complete")
    p.set_defaults(run=run)


def run(args: argparse.Namespace) -> int:
    prompts = check_prompts(args.prompt)
    SamplingConfig(args.temperature, args.top_k, args.top_p, args.repetition_penalty)
    if args.max_new_tokens < 0:
        raise InvalidArgumentError(f"--max-new-tokens must be >= 0, got {args.max_new_tokens}")
    device = loading.parse_device(args.device)
    dtype = args.dtype or ("fp32" if device.type == "cpu" else None)
    model, tokenizer = api.load(args.model, device=str(device), dtype=dtype)
    stream = not args.no_stream and len(prompts) == 1
    out = sys.stdout

    def streamer(_row: int, text: str) -> None:
        out.write(text)
        out.flush()

    if stream:
        out.write(prompts[0])
        out.flush()
    texts = generate(model, tokenizer, prompts, args.max_new_tokens, temperature=args.temperature,
                     top_k=args.top_k, top_p=args.top_p, repetition_penalty=args.repetition_penalty,
                     seed=args.seed, stop_at_eos=not args.ignore_eos, streamer=streamer if stream else None)
    if stream:
        out.write("\n")
    else:
        for i, (prompt, text) in enumerate(zip(prompts, texts)):
            if len(prompts) > 1:
                out.write(f"{'' if i == 0 else chr(10)}=== prompt {i + 1} ===\n")
            out.write(prompt + text + "\n")
    out.flush()
    return 0
