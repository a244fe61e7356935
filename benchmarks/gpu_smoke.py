"""GPU smoke check at real scale: random Llama-3.1-8B and Mistral-7B-v0.3 (published configs), bf16.

    python benchmarks/gpu_smoke.py                    # all layers if they fit, A on cuda:0, B on cuda:1
    python benchmarks/gpu_smoke.py --layers 8 --seq 256

No download: the models are built from the configurations written below and initialised at random on
their GPU (the tokenizers are stitch's tiny byte-level ones; only ids below each vocabulary are used, and
generation masks the logits of the others).
With two or more GPUs A and B each get their own; with one, both share it and, if they do not fit, a
stated number of their layers is kept (`--layers`, or chosen from free memory). It runs a splice, a
streamed fit, a CKA heatmap (minibatch CKA), a generation and a few training steps, and prints per step
its time, the time ratio against the plain HF forward of A and B on the same texts, and the peak memory
of every device. With two or more GPUs it then runs the same steps again with B sharded over all of them
by `stitch.load_model(B.model, device_map="auto")`, as `from_pretrained(device_map="auto")` shards it
(accelerate's balanced map and dispatch hooks; blocks on different GPUs), A staying on cuda:0; `--no-shard` skips that part. Without CUDA it prints one "skipped"
line and exits 0. Format: benchmarks/README.md.
"""

from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch
import transformers

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))

import stitch  # noqa: E402
from analyses.layer_similarity import layer_similarity  # noqa: E402
from stitch.testing import CORPUS, byte_bpe_tokenizer  # noqa: E402

RESULTS = Path(__file__).parent / "results" / "gpu_smoke.txt"

# Published configurations (config.json of meta-llama/Llama-3.1-8B and mistralai/Mistral-7B-v0.3).
LLAMA_3_1_8B = dict(
    model_type="llama", vocab_size=128256, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=131072, rms_norm_eps=1e-5,
    rope_theta=500000.0, tie_word_embeddings=False, bos_token_id=128000, eos_token_id=128001,
    rope_scaling=dict(rope_type="llama3", factor=8.0, low_freq_factor=1.0, high_freq_factor=4.0,
                      original_max_position_embeddings=8192),
)
MISTRAL_7B_V0_3 = dict(
    model_type="mistral", vocab_size=32768, hidden_size=4096, intermediate_size=14336, num_hidden_layers=32,
    num_attention_heads=32, num_key_value_heads=8, max_position_embeddings=32768, rms_norm_eps=1e-5,
    rope_theta=1000000.0, sliding_window=None, tie_word_embeddings=False, bos_token_id=1, eos_token_id=2,
)
GIB = 2**30


def build(config: dict, n_layers: int, device: str, tokenizer) -> stitch.HookedLM:
    cfg = transformers.AutoConfig.for_model(**{**config, "num_hidden_layers": n_layers})
    with torch.device(device):  # initialised on the GPU, never on the CPU
        hf = transformers.AutoModelForCausalLM.from_config(cfg, dtype=torch.bfloat16)
    return stitch.load_model(hf, tokenizer=tokenizer, name=f"{config['model_type']}-random-{n_layers}L")


def shard(lm: stitch.HookedLM) -> stitch.HookedLM:
    """`lm` spread over every GPU by `load_model(device_map="auto")`: from_pretrained's balanced map, dispatched."""
    return stitch.load_model(lm.model, tokenizer=lm.tokenizer, device_map="auto", name=lm.name)


def param_bytes(config: dict, n_layers: int) -> int:
    d, f, v, kv = config["hidden_size"], config["intermediate_size"], config["vocab_size"], 8 * 128
    per_layer = 2 * d * d + 2 * d * kv + 3 * d * f
    return 2 * (n_layers * per_layer + 2 * v * d)


def choose_layers(args, devices: list[str]) -> int:
    if args.layers:
        return args.layers
    need = lambda n: param_bytes(LLAMA_3_1_8B, n) + param_bytes(MISTRAL_7B_V0_3, n)  # noqa: E731
    free = torch.cuda.mem_get_info(0)[0] * (len(devices) if devices[0] != devices[1] else 1)
    n = 32
    while n > 2 and need(n) > 0.7 * free:  # room for activations, a fit's d² statistics and Adam
        n //= 2
    return n


class Meter:
    """Wall time and peak memory of every GPU for one step."""

    def __init__(self, devices):
        self.devices = sorted(set(devices))

    def __call__(self, fn):
        for d in self.devices:
            torch.cuda.synchronize(d)
            torch.cuda.reset_peak_memory_stats(d)
        start = time.perf_counter()
        out = fn()
        for d in self.devices:
            torch.cuda.synchronize(d)
        peaks = {d: torch.cuda.max_memory_allocated(d) / GIB for d in self.devices}
        return time.perf_counter() - start, peaks, out


def texts_of(tokens: int, n: int) -> list[str]:
    text = " ".join(CORPUS)
    while len(text) < 3 * tokens:
        text += " " + text
    return [text[i : i + 3 * tokens] for i in range(n)]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--layers", type=int, default=0, help="layers per model (default: all that fit)")
    parser.add_argument("--seq", type=int, default=512, help="tokens per text (about)")
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--no-shard", action="store_true", help="skip the run with B sharded over all GPUs")
    args = parser.parse_args()
    if not torch.cuda.is_available():
        print("gpu_smoke: skipped (no CUDA device)")
        return 0
    n_gpus = torch.cuda.device_count()
    devices = ["cuda:0", "cuda:1" if n_gpus > 1 else "cuda:0"]
    n_layers = choose_layers(args, devices)
    tok_a, tok_b = byte_bpe_tokenizer(300), byte_bpe_tokenizer(400, bos=False)
    A = build(LLAMA_3_1_8B, n_layers, devices[0], tok_a)
    B = build(MISTRAL_7B_V0_3, n_layers, devices[1], tok_b)
    texts = texts_of(args.seq, args.batch)
    lines = [
        f"gpu_smoke: Llama-3.1-8B -> Mistral-7B-v0.3 configs, random bf16, {n_layers}/32 layers each, "
        f"A on {devices[0]}, B on {devices[1]}, batch {args.batch} x ~{args.seq} tokens, torch {torch.__version__}"
    ]
    lines += run_steps(A, B, texts, args, Meter(devices), n_layers)
    if n_gpus > 1 and not args.no_shard:
        B = shard(B)
        where = sorted({str(d) for d in B.model.hf_device_map.values()})
        lines.append(
            f"sharded: B over {', '.join(where)} (device_map balanced as \"auto\"; B's block {n_layers // 2} on "
            f"{B.device_of(n_layers // 2)}, logits on {B.output_device}), A on {devices[0]}"
        )
        lines += run_steps(A, B, texts, args, Meter([f"cuda:{i}" for i in range(n_gpus)]), n_layers)
    print("\n".join(lines))
    RESULTS.parent.mkdir(exist_ok=True)
    RESULTS.write_text("\n".join(lines) + "\n")
    return 0


def run_steps(A, B, texts, args, meter: Meter, n_layers: int) -> list[str]:
    """One line per step: the HF forward of A and B (the baseline), then splice, fit, CKA, generation, training."""
    N = M = n_layers // 2
    sp = stitch.Splice(A, B, N, M, adapter=stitch.adapters.Affine(4096))  # fp32 adapter on B's GPU

    def hf_forward():
        with torch.no_grad():
            for lm in (A, B):
                batch = lm.encode(texts, overflow="truncate", max_length=args.seq)
                lm.model(input_ids=batch.input_ids, attention_mask=batch.attention_mask)

    meter(hf_forward)  # warm-up (kernels, allocator)
    base, peaks, _ = meter(hf_forward)
    lines = [_line("HF forward A + B", base, base, peaks)]
    steps = {
        "splice": lambda: _no_grad(lambda: sp(texts)),
        "streamed fit (affine, 4x texts)": lambda: stitch.fit_adapter(
            A, B, texts * 4, N, M, kind="affine", ridge=1e-3, batch_size=args.batch, progress=False,
            max_length=args.seq,
        ),
        "CKA heatmap (minibatch, all layers)": lambda: layer_similarity(
            A, B, texts * 2, measure="minibatch_cka", batch_size=args.batch, max_length=args.seq
        ),
        "generation (16 new tokens)": lambda: _decodable(B, lambda: sp.generate([t[:200] for t in texts], max_new_tokens=16)),
        "3 training steps (Adam)": lambda: _train(sp, texts, 3),
    }
    for name, fn in steps.items():
        seconds, peaks, _ = meter(fn)
        lines.append(_line(name, seconds, base, peaks))
    return lines


def _decodable(lm: stitch.HookedLM, fn):
    """`fn()` with the logits of ids past the (tiny) tokenizer's vocabulary at -inf, so generated ids decode."""
    n = len(lm.tokenizer)

    def mask(module, args, out):
        out[..., n:] = torch.finfo(out.dtype).min

    handle = lm.model.get_output_embeddings().register_forward_hook(mask)
    try:
        return fn()
    finally:
        handle.remove()


def _no_grad(fn):
    with torch.no_grad():
        return fn()


def _train(sp, texts, steps: int) -> None:
    opt = torch.optim.Adam(sp.adapter.parameters(), lr=1e-4)
    for _ in range(steps):
        opt.zero_grad()
        sp(texts).loss.backward()
        opt.step()


def _line(name: str, seconds: float, base: float, peaks: dict) -> str:
    memory = ", ".join(f"{d} {gib:.1f} GiB" for d, gib in peaks.items())
    return f"{name:<38} {seconds:8.2f} s  {seconds / base:6.2f}x HF forward  peak {memory}"


if __name__ == "__main__":
    sys.exit(main())
