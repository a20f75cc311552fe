"""Pretraining throughput: the pretrainlab loop (`pipelines.training.loop.train`) vs a bare
torch loop, in fp32 and (where the CPU has native bf16, or on CUDA) in bf16 autocast.

Run:  .venv/bin/python -m benchmarks.pretrain [--families gpt] [--preset tiny|cpu|gpu] [--repeats 5]

For each torch family (a row of ROWS) the same model (same seed, same init) trains on the same
batches, in one run on one machine:
- baseline: a bare loop (AdamW, the same lr schedule, clipping, the same autocast) over
  batches built beforehand and held in memory: building batches is not timed;
- the loop: `train` as a pipeline calls it (batches made on the fly from the objective,
  per-step NaN check, metrics logged every step, dropout reseeding, budgets, signal checks).
Both run `--warmup` untimed steps, then `--steps` timed steps; tokens/s is over the timed
steps only (the loop's final valid pass and checkpoint come after and are not timed).
Contenders run interleaved, bare, loop, bare, loop, ... `--repeats` times; the ratio is the
median of the per-pair ratios loop / bare, with their min-max (goal >= 0.9; the issue asks
0.95). On CPU a run's figure is its median step (a step another job slowed counts as one step,
not as the run); on CUDA steps are queued asynchronously, so the synchronised window counts.
Tokens per CPU-second (process time, all threads) are reported too. MFU = flops_per_token x
tokens/s over the peak: on the CPU tokens per CPU-second x threads over the matmul peak
measured by benchmarks/peak.py in the row's precision at the same thread count (both by CPU
time, so another job's share of a shared machine counts in neither); on CUDA wall-clock
tokens/s over the card's dense bf16 datasheet peak.

Token shards come from real text (gensim's Wikipedia sample and Lee news, repeated to `--mb`
MB) through the real stages: a tokenizer trained per kind, `encode_corpus`. Each family's row
builds its model and objective from those shards; add a row to ROWS for a new family.
word2vec (gensim) is benchmarks/word2vec.py, run from here on the same shards.
"""

from __future__ import annotations

import argparse
import itertools
import statistics
import tempfile
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path

import torch

from benchmarks.common import Repeats, interleaved, peak_rss_mb, reset_peak_rss, write_rows
from benchmarks.common import Row as ResultRow
from benchmarks.peak import peak_rows, peaks
from benchmarks.tokenization import real_documents, write_corpus
from benchmarks.word2vec import word2vec_line, word2vec_result, word2vec_row
from pipelines.data.encoding import encode_corpus
from pipelines.data.tokenizer_training import load_raw_tokenizer, save_tokenizer, train_tokenizer
from pipelines.training.loop import Objective, lr_at, pick_device, train
from pipelines.training.precision import autocast, cpu_has_bf16
from pretrainlab.config import BPESpec, GPTSpec, LoopSpec, WordLevelSpec, WordPieceSpec

PEAK_BF16_FLOPS = {"H100": 989e12, "H200": 989e12, "A100": 312e12, "L4": 121e12}
TOKENIZER_SPECS = {
    "bpe": BPESpec(vocab_size=8000),
    "wordpiece": WordPieceSpec(vocab_size=8000),
    "wordlevel": WordLevelSpec(vocab_size=30000, min_count=2),
}


@dataclass
class Setup:
    """What a row gives the benchmark: a model factory (same init each call) and its objective."""

    make_model: Callable[[], torch.nn.Module]
    objective: Objective
    loop: LoopSpec


@dataclass(frozen=True)
class Row:
    family: str
    tokenizer_kind: str  # bpe | wordpiece | wordlevel
    setup: Callable[[Path, Path, Path, str], Setup]  # (tokens, tokenizer, workdir, preset)


# ----------------------------------------------------------------------------- rows


def gpt_setup(tokens_dir: Path, tokenizer_dir: Path, workdir: Path, preset: str) -> Setup:
    from pipelines.models.gpt import GPTObjective, build_gpt

    if preset == "gpu":  # GPT-2 small
        spec = GPTSpec(n_layer=12, n_head=12, n_embd=768, block_size=512, dropout=0.0)
        batch = 16
    elif preset == "tiny":  # steps of a few ms: shows the loop's fixed per-step cost
        spec, batch = GPTSpec(n_layer=1, n_head=2, n_embd=64, block_size=32, dropout=0.0), 8
    else:  # the spec's defaults: the demo's size
        spec, batch = GPTSpec(dropout=0.0), 16
    tok, _ = load_raw_tokenizer(tokenizer_dir)
    vocab = tok.get_vocab_size()
    eos, pad = tok.token_to_id("<|endoftext|>"), tok.token_to_id("<|pad|>")
    loop = LoopSpec(batch_size=batch, warmup_steps=5, max_steps=10**6)

    def make_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return build_gpt(spec, vocab, pad, eos)

    objective = GPTObjective(tokens_dir, spec.block_size, 0, eos, batch, workdir / "gpt-cache")
    return Setup(make_model, objective, loop)


ROWS: list[Row] = [
    Row("gpt", "bpe", gpt_setup),
]


def elmo_setup(tokens_dir: Path, tokenizer_dir: Path, workdir: Path, preset: str) -> Setup:
    from pipelines.models.elmo import ELMo, config_from_spec
    from pipelines.models.elmo_data import ELMoObjective
    from pretrainlab.config import ELMoSpec

    loop = LoopSpec(batch_size=64 if preset == "gpu" else 16, warmup_steps=5, max_steps=10**6)
    if preset == "gpu":  # near the paper's shape: 512-wide projections of 4096-cell LSTMs
        spec = ELMoSpec(embedding_dim=512, hidden_dim=4096, seq_len=64, dropout=0.0, loop=loop)
    elif preset == "tiny":  # steps of a few ms: shows the loop's fixed per-step cost
        loop = loop.model_copy(update={"batch_size": 8})
        spec = ELMoSpec(embedding_dim=32, hidden_dim=64, seq_len=16, dropout=0.0, loop=loop)
    else:  # the spec's defaults: the demo's size
        spec = ELMoSpec(dropout=0.0, loop=loop)
    tok, _ = load_raw_tokenizer(tokenizer_dir)
    pad, bos, eos = (tok.token_to_id(t) for t in ("<pad>", "<s>", "</s>"))
    config = config_from_spec(spec, tok.get_vocab_size(), pad, {"bos": bos, "eos": eos})

    def make_model() -> torch.nn.Module:
        torch.manual_seed(0)
        return ELMo(config)

    objective = ELMoObjective(tokens_dir, spec, pad, bos, eos, 0, workdir / "elmo-cache")
    return Setup(make_model, objective, loop)


ROWS.append(Row("elmo", "wordlevel", elmo_setup))


def bert_setup(tokens_dir: Path, tokenizer_dir: Path, workdir: Path, preset: str) -> Setup:
    """MLM + NSP with the MLM head at the masked positions only, in both contenders (the
    objective's loss); the full-vocabulary head is ~2-3x slower on CPU (see
    pipelines/models/bert.py)."""
    from pipelines.data.tokenizer_training import load_tokenizer
    from pipelines.models.bert import build_bert
    from pipelines.models.bert_data import BERTObjective, BertVocab
    from pretrainlab.config import BERTSpec

    if preset == "gpu":  # BERT-base at the paper's phase-1 length
        model = {"n_layer": 12, "n_head": 12, "hidden_size": 768, "intermediate_size": 3072}
        model, batch = {**model, "max_seq_len": 128}, 64
    elif preset == "tiny":  # steps of a few ms: shows the loop's fixed per-step cost
        model = {"n_layer": 1, "n_head": 2, "hidden_size": 64, "intermediate_size": 128}
        model, batch = {**model, "max_seq_len": 32}, 8
    else:  # the spec's defaults: the demo's size
        model, batch = {}, 16
    loop = LoopSpec(batch_size=batch, warmup_steps=5, max_steps=10**6)
    spec = BERTSpec(**model, dropout=0.0, loop=loop)
    vocab = BertVocab.from_tokenizer(load_tokenizer(tokenizer_dir))

    def make_model() -> torch.nn.Module:
        return build_bert(spec, vocab.size, vocab.pad_id)  # seeded by spec.loop.seed

    objective = BERTObjective(tokens_dir, spec, vocab, 0, workdir / "bert-cache")
    return Setup(make_model, objective, loop)


ROWS.append(Row("bert", "wordpiece", bert_setup))


# ----------------------------------------------------------------------------- contenders


def _sync(device: torch.device) -> None:
    if device.type == "cuda":
        torch.cuda.synchronize(device)


Stamp = tuple[float, float, int]  # wall clock, process CPU time, tokens seen so far


def _clocks() -> tuple[float, float]:
    """Wall clock and this process's CPU time (all threads)."""
    return time.perf_counter(), time.process_time()


def _stamp(tokens_seen: int) -> Stamp:
    return (*_clocks(), tokens_seen)


def run_rate(stamps: list[Stamp], per_step: bool) -> tuple[float, float]:
    """Tokens per wall-second and per CPU-second of one run's stamped steps.

    per_step (CPU): the median step's rates, so a step another job slowed counts as one step,
    not as the run. Otherwise (CUDA: steps are queued asynchronously, only the window's ends
    are synchronised) the whole window.
    """
    if per_step:
        walls, cpus = [], []
        for (w0, c0, n0), (w1, c1, n1) in itertools.pairwise(stamps):
            walls.append((n1 - n0) / (w1 - w0))
            cpus.append((n1 - n0) / max(c1 - c0, 1e-9))
        return statistics.median(walls), statistics.median(cpus)
    (w0, c0, n0), (w1, c1, n1) = stamps[0], stamps[-1]
    return (n1 - n0) / (w1 - w0), (n1 - n0) / max(c1 - c0, 1e-9)


def bare_loop(
    setup: Setup, warmup: int, steps: int, device: torch.device, bf16: bool
) -> list[Stamp]:
    """Stamps after step `warmup` and each later step of a plain torch loop on prebuilt batches
    (CUDA: after step `warmup` and the last, synchronised)."""
    loop, objective = setup.loop, setup.objective
    n_micro = loop.grad_accum
    batches = [
        [objective.train_batch(step, m, n_micro, 0, 1) for m in range(n_micro)]
        for step in range(1, warmup + steps + 1)
    ]
    model = setup.make_model().to(device).train()
    params = [p for p in model.parameters() if p.requires_grad]
    optimizer = torch.optim.AdamW(
        [
            {"params": [p for p in params if p.dim() >= 2], "weight_decay": loop.weight_decay},
            {"params": [p for p in params if p.dim() < 2], "weight_decay": 0.0},
        ],
        lr=loop.lr,
        betas=(0.9, 0.95),
        fused=device.type == "cuda",
    )
    stamps: list[Stamp] = []
    seen = 0
    for step, micro_batches in enumerate(batches, 1):
        for group in optimizer.param_groups:
            group["lr"] = lr_at(step, loop)
        for batch in micro_batches:
            seen += objective.tokens(batch)
            batch = {k: v.to(device, non_blocking=True) for k, v in batch.items()}
            with autocast(device, bf16):
                loss, _ = objective.loss(model, batch)
            (loss / n_micro).backward()
        torch.nn.utils.clip_grad_norm_(model.parameters(), loop.grad_clip)
        optimizer.step()
        optimizer.zero_grad(set_to_none=True)
        if step == warmup or step == len(batches) or device.type == "cpu":
            _sync(device)
            if step >= warmup:
                stamps.append(_stamp(seen))
    return stamps


def pretrainlab_loop(
    setup: Setup, warmup: int, steps: int, workdir: Path, device: torch.device, bf16: bool
) -> tuple[list[Stamp], float]:
    """Stamps (taken by its log calls, every step) of `train`, and the model's FLOPs/token.
    On CUDA the window's two ends wait for the queued work, as the bare loop's do."""
    loop = setup.loop.model_copy(
        update={
            "device": device.type,
            "max_steps": warmup + steps,
            "log_every": 1,
            "eval_every": 10**9,
            "checkpoint_every": 10**9,
            "eval_batches": 1,
        }
    )
    stamps: list[Stamp] = []

    def log(metrics: dict[str, float], step: int) -> None:
        if "tokens_seen" in metrics and step >= warmup:
            if step in (warmup, warmup + steps):
                _sync(device)
            stamps.append(_stamp(int(metrics["tokens_seen"])))

    model = setup.make_model()
    with tempfile.TemporaryDirectory(dir=workdir) as checkpoints:
        train(model, setup.objective, loop, Path(checkpoints), log, cpu_autocast=bf16)
    return stamps, setup.objective.flops_per_token(model)


# ----------------------------------------------------------------------------- data and report


def prepare_tokens(kind: str, workdir: Path, megabytes: float) -> tuple[Path, Path]:
    """Token shards of real text for one tokenizer kind (cached in `workdir`)."""
    corpus = workdir / "corpus"
    if not corpus.exists():
        corpus.mkdir(parents=True)
        write_corpus(real_documents(), corpus, megabytes, parts=2)
    tokenizer_dir, tokens_dir = workdir / f"tokenizer-{kind}", workdir / f"tokens-{kind}"
    if not tokens_dir.exists():
        save_tokenizer(train_tokenizer(TOKENIZER_SPECS[kind], real_documents()), tokenizer_dir)
        family = {"bpe": "gpt", "wordpiece": "bert", "wordlevel": "word"}[kind]
        encode_corpus(corpus, tokenizer_dir, tokens_dir, family, 256, workers=1)
    return tokens_dir, tokenizer_dir


def datasheet_peak(device: torch.device) -> float | None:
    """The card's dense bf16 peak FLOP/s (None for an unknown card)."""
    name = torch.cuda.get_device_name(device)
    return next((peak for key, peak in PEAK_BF16_FLOPS.items() if key in name), None)


@dataclass
class Measured:
    """What `torch_row` measured of one family in one precision."""

    row: ResultRow
    loop_tokens_per_s: float


def torch_row(
    row: Row,
    workdir: Path,
    args: argparse.Namespace,
    device: torch.device,
    bf16: bool,
    peak: float | None,
    fp32: Measured | None = None,
) -> Measured:
    """Bare loop vs `train` for one torch family in one precision: prints, returns the row.

    `peak`: the FLOP/s MFU is taken against; `fp32`: the same family's fp32 measurement, for
    the bf16 row's speed-up."""
    tokens_dir, tokenizer_dir = prepare_tokens(row.tokenizer_kind, workdir, args.mb)
    setup = row.setup(tokens_dir, tokenizer_dir, workdir, args.preset)
    rss = {"bare": 0.0, "loop": 0.0}
    cpu_rates: dict[str, list[float]] = {"bare": [], "loop": []}
    flops_per_token = 0.0

    def contender(name: str):
        def run() -> float:
            nonlocal flops_per_token
            reset_peak_rss()
            if name == "bare":
                stamps = bare_loop(setup, args.warmup, args.steps, device, bf16)
            else:
                stamps, flops_per_token = pretrainlab_loop(
                    setup, args.warmup, args.steps, workdir, device, bf16
                )
            rss[name] = max(rss[name], peak_rss_mb())
            wall, cpu = run_rate(stamps, per_step=device.type == "cpu")
            cpu_rates[name].append(cpu)
            return wall

        return run

    got = interleaved(contender("bare"), contender("loop"), args.repeats)
    cpu = Repeats(cpu_rates["bare"], cpu_rates["loop"]).median_ratio
    loop_rate = statistics.median(got.ours)
    cuda = device.type == "cuda"
    # CPU: tokens per CPU-second per thread, as the peak is (a shared machine's wall clock
    # counts other jobs' time); CUDA: wall-clock tokens/s.
    busy_rate = (
        loop_rate if cuda else statistics.median(cpu_rates["loop"]) * torch.get_num_threads()
    )
    mfu = flops_per_token * busy_rate / peak if peak else None
    where = torch.cuda.get_device_name(device) if cuda else "CPU"
    precision = "bf16" if bf16 or cuda else "fp32"
    n_params = sum(p.numel() for p in setup.make_model().parameters())
    note = f"{n_params / 1e6:.1f}M params, {where}, preset {args.preset}"
    note += f"; by CPU time {cpu:.2f}"
    if cuda:
        note += f"; bf16 autocast, fused AdamW; MFU of {where}'s dense bf16 datasheet peak"
    elif bf16:
        note += "; bf16 autocast (compute.cpu_autocast); MFU by CPU time of the bf16 matmul peak"
    else:
        note += "; MFU by CPU time of the fp32 matmul peak"
    if fp32 is not None:
        note += f"; {loop_rate / fp32.loop_tokens_per_s:.2f}x the fp32 row's tokens/s"
    name = f"pretrain {row.family}"
    name += " (GPU, bf16)" if cuda else (" (CPU, bf16 autocast)" if bf16 else "")
    result = got.fill(
        ResultRow(name, "tokens/s", None, None, ">=", 0.9, rss["bare"], rss["loop"], note, mfu=mfu)
    )
    print(
        f"{row.family:8} {precision:5} {result.bare:11,.0f} {result.ours:11,.0f} "
        f"{result.ratio_text():>24} cpu ratio {cpu:.3f} MFU "
        f"{f'{mfu:.1%}' if mfu is not None else '-'}  ratios "
        f"{', '.join(f'{r:.2f}' for r in got.ratios)}",
        flush=True,
    )
    return Measured(result, loop_rate)


def precisions(args: argparse.Namespace, device: torch.device) -> list[bool]:
    """bf16 autocast off/on per measurement: on CUDA bf16 only; on the CPU fp32, then bf16
    where the CPU has it natively (`--cpu-bf16 auto`)."""
    if device.type == "cuda":
        return [True]
    if args.cpu_bf16 == "off" or (args.cpu_bf16 == "auto" and not cpu_has_bf16()):
        return [False]
    return [False, True]


def main(argv: list[str] | None = None) -> None:
    families = [row.family for row in ROWS] + ["word2vec"]
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--families", nargs="*", choices=families, default=families)
    parser.add_argument(
        "--preset",
        choices=["tiny", "cpu", "gpu"],
        default=None,
        help="model sizes; default: gpu when CUDA is visible, else cpu",
    )
    parser.add_argument(
        "--steps", type=int, default=None, help="timed steps (default tiny 200, cpu 20, gpu 50)"
    )
    parser.add_argument("--warmup", type=int, default=5)
    parser.add_argument("--repeats", type=int, default=5, help="interleaved pairs (>= 5)")
    parser.add_argument("--mb", type=float, default=2.0, help="MB of text for the shards")
    parser.add_argument("--workdir", type=Path, default=None)
    parser.add_argument(
        "--threads",
        type=int,
        default=None,
        help="torch CPU threads (1 gives steadier numbers on a shared machine)",
    )
    parser.add_argument("--device", choices=["auto", "cpu", "cuda"], default="auto")
    parser.add_argument(
        "--cpu-bf16",
        choices=["auto", "on", "off"],
        default="auto",
        help="CPU: also measure bf16 autocast rows (auto: where the CPU has native bf16)",
    )
    parser.add_argument("--json", type=Path, default=None, help="also write the rows here")
    args = parser.parse_args(argv)
    if args.threads:
        torch.set_num_threads(args.threads)

    device = pick_device(LoopSpec(device=args.device))
    args.preset = args.preset or ("gpu" if device.type == "cuda" else "cpu")
    args.steps = args.steps or {"tiny": 200, "cpu": 20, "gpu": 50}[args.preset]
    where = torch.cuda.get_device_name(device) if device.type == "cuda" else "cpu"
    measured_peaks = peaks(device)
    print(
        f"device {device} ({where}, {torch.get_num_threads()} torch threads), preset "
        f"{args.preset}, {args.steps} timed steps after {args.warmup}, {args.repeats} "
        "interleaved repeats; matmul peak "
        + ", ".join(f"{k} {v / 1e9:,.0f} GFLOP/s" for k, v in measured_peaks.items())
    )
    results: list[ResultRow] = peak_rows(measured_peaks, device)
    with tempfile.TemporaryDirectory() as tmp:
        workdir = args.workdir or Path(tmp)
        workdir.mkdir(parents=True, exist_ok=True)
        for row in ROWS:
            if row.family not in args.families:
                continue
            fp32 = None
            for bf16 in precisions(args, device):
                peak = (
                    datasheet_peak(device)
                    if device.type == "cuda"
                    else measured_peaks["bf16" if bf16 else "fp32"]
                )
                got = torch_row(row, workdir, args, device, bf16, peak, fp32)
                results.append(got.row)
                fp32 = got if not bf16 else fp32
        if "word2vec" in args.families:  # words/s, gensim vs the pipeline's streaming trainer
            tokens_dir, tokenizer_dir = prepare_tokens("wordlevel", workdir, args.mb)
            min_count = TOKENIZER_SPECS["wordlevel"].min_count
            for sg in (True, False):
                result = word2vec_row(
                    tokens_dir, tokenizer_dir, workdir, min_count, args.repeats, sg
                )
                print(word2vec_line(result), flush=True)
                results.append(word2vec_result(result))
    if args.json:
        write_rows(results, args.json)


if __name__ == "__main__":
    main()
