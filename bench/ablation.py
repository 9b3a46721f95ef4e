"""Paper Table 2 on the generated benchmark: the seven rows of ABLATION_ROWS, N seeds.

Per seed: stage 1 is trained once (the AAVS switches: its predicted masks are the
stepping stones every row shares) and its masks are written for val/test; then stage 2
is trained for each row with the demo schedule and evaluated on the test split. The
table gives mean ± std (over seeds, sample std) of AVSS mIoU and F-score per row beside
the paper's numbers, and is written into bench/README.md (between the ablation markers)
and, with every per-seed number, into ``{work}/ablation.json``.

    .venv/bin/python bench/ablation.py --seeds 3 --data data/synth --flow data/flow \\
        --prompts data/prompts --logmel data/logmel

Acceptance (issue 4): the full SSP beats the AAVS baseline in AVSS mIoU by more than
twice the seed-to-seed std.
"""

from __future__ import annotations

import argparse
import json
import logging
import statistics
import sys
import time
from pathlib import Path

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

# Paper Table 2, AVSS columns (mIoU, F-score), in percent.
PAPER_AVSS = {
    "aavs": (48.5, 53.2), "pre_mask": (49.2, 53.7), "pre_mask_post_mask": (49.4, 53.9),
    "text_att": (48.6, 53.0), "text_vta": (49.0, 53.4), "pre_mask_vta": (49.7, 54.1), "full": (50.1, 54.5),
}
ROW_LABELS = {
    "aavs": "AAVS", "pre_mask": "w. Pre-mask", "pre_mask_post_mask": "w. Pre-mask w. Post-mask",
    "text_att": "w. Textual prompts w/o. VTA", "text_vta": "w. Textual prompts w. VTA",
    "pre_mask_vta": "w/o. Post-mask", "full": "Full model",
}
START, END = "<!-- ablation:start -->", "<!-- ablation:end -->"

# The demo schedule is params.yaml's (train1/train2 of the demo profile, what `make demo`
# trains); the bench only turns the MLflow overlay images off.
DEMO_SCHEDULE = ["train1.overlays=0", "train2.overlays=0"]


def mean_std(values: list[float]) -> tuple[float, float]:
    return statistics.fmean(values), statistics.stdev(values) if len(values) > 1 else 0.0


def table(results: dict[str, dict[int, dict]], metric_set: str) -> str:
    lines = [
        f"| Row | AVSS mIoU (ours, {metric_set}) | AVSS F (ours) | seeds | paper mIoU | paper F |",
        "|---|---|---|---|---|---|",
    ]
    for row, per_seed in results.items():
        mious = [r["miou"] * 100 for r in per_seed.values()]
        fs = [r["fscore"] * 100 for r in per_seed.values()]
        (m, ms), (f, fsd) = mean_std(mious), mean_std(fs)
        pm, pf = PAPER_AVSS[row]
        lines.append(f"| {ROW_LABELS[row]} (`{row}`) | {m:.2f} ± {ms:.2f} | {f:.2f} ± {fsd:.2f} | {len(mious)} "
                     f"| {pm} | {pf} |")
    return "\n".join(lines)


def write_readme_section(text: str, readme: Path) -> None:
    from ssp.fileio import write_text

    current = readme.read_text() if readme.exists() else "# Benchmarks\n"
    block = f"{START}\n{text}\n{END}"
    if START in current and END in current:
        head, rest = current.split(START, 1)
        current = head + block + rest.split(END, 1)[1]
    else:
        current = current.rstrip("\n") + "\n\n" + block + "\n"
    write_text(readme, current)


def premask_study(args, rows: list[str]) -> int:
    """Test-time stand-in for M_GT in eq. 2: the trained pre-mask rows, re-evaluated."""
    from ssp.eval.evaluate import evaluate

    sources = ("stage1", "flow", "all")
    found: dict[str, dict[str, list[float]]] = {row: {s: [] for s in sources} for row in rows}
    for seed in range(args.seeds):
        seed_dir = args.work / f"seed{seed}"
        for row in rows:
            best = seed_dir / row / "checkpoints" / "best.safetensors"
            if not best.exists():
                continue
            for source in sources:
                ev = evaluate(best, args.data, "test", None, stage1_masks=seed_dir / "stage1_masks",
                              flow=args.flow, prompts=args.prompts, logmel=args.logmel,
                              premask_test_source=source, progress=False)
                found[row][source].append(ev["semantic"]["v2"]["miou"] * 100)
    lines = ["| Row | " + " | ".join(f"M_GT stand-in = {s}" for s in sources) + " |",
             "|---|" + "---|" * len(sources)]
    for row, per_source in found.items():
        cells = [f"{mean_std(v)[0]:.2f} ± {mean_std(v)[1]:.2f} (n={len(v)})" if v else "-"
                 for v in per_source.values()]
        lines.append(f"| {ROW_LABELS[row]} | " + " | ".join(cells) + " |")
    text = "AVSS test mIoU (v2, %) of the pre-mask rows by test-time stand-in for M_GT:\n\n" + "\n".join(lines)
    print(text)
    return 0


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--seeds", type=int, default=3, help="number of seeds (0..N-1; default 3)")
    parser.add_argument("--data", type=Path, default=Path("data/synth"), help="generated benchmark root")
    parser.add_argument("--flow", type=Path, default=Path("data/flow"), help="`ssp flow` output")
    parser.add_argument("--prompts", type=Path, default=Path("data/prompts"), help="`ssp prompts` output")
    parser.add_argument("--logmel", type=Path, default=Path("data/logmel"), help="`ssp logmel` output")
    parser.add_argument("--work", type=Path, default=Path("runs/ablation"), help="run folders and ablation.json")
    parser.add_argument("--params", type=Path, default=Path("params.yaml"), help="params file (default params.yaml)")
    parser.add_argument("--rows", default=None, help="comma-separated rows (default: all seven)")
    parser.add_argument("--set", action="append", default=[], dest="overrides",
                        help="extra params overrides after the demo schedule, e.g. train2.epochs=6")
    parser.add_argument("--readme", default=str(ROOT / "bench" / "README.md"),
                        help="README to put the table into (default bench/README.md); '' = none")
    parser.add_argument("--premask-study", action="store_true",
                        help="no training: re-evaluate the finished pre-mask rows with every test-time "
                             "stand-in for M_GT (stage1, flow, all) and print/append that table")
    parser.add_argument("--table-only", action="store_true",
                        help="no training: write the table from the finished runs in {work}/ablation.json")
    args = parser.parse_args()
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s: %(message)s")

    from ssp.eval.evaluate import evaluate
    from ssp.eval.stage1_masks import write_stage1_masks
    from ssp.models import ABLATION_ROWS
    from ssp.ops.params import load_params
    from ssp.engine.train import train

    rows = args.rows.split(",") if args.rows else list(ABLATION_ROWS)
    if args.premask_study:
        return premask_study(args, [r for r in rows if ABLATION_ROWS[r]["pre_mask"]])
    overrides = [*DEMO_SCHEDULE, *args.overrides]
    dirs = dict(flow=args.flow, prompts=args.prompts, logmel=args.logmel)
    results_path = args.work / "ablation.json"
    saved = json.loads(results_path.read_text()) if results_path.exists() else {}
    results: dict[str, dict[int, dict]] = {row: {} for row in rows}
    for row in rows:  # keep finished runs: a killed ablation picks up where it stopped
        for seed, numbers in saved.get("results", {}).get(row, {}).items():
            results[row][int(seed)] = numbers
    started = time.time()
    for seed in range(0 if args.table_only else args.seeds):
        seed_dir = args.work / f"seed{seed}"
        params = load_params(args.params, overrides=[*overrides, f"train1.seed={seed}", f"train2.seed={seed}"])
        stage1_best = seed_dir / "stage1" / "checkpoints" / "best.safetensors"
        if not (seed_dir / "stage1" / "metrics.json").exists():
            train(1, args.data, seed_dir / "stage1", params, row="aavs", resume=True, **dirs,
                  run_name=f"ablation-stage1-seed{seed}", progress=False)
        write_stage1_masks(stage1_best, args.data, seed_dir / "stage1_masks", ("train", "val", "test"), progress=False,
                           **dirs)
        for row in rows:
            if seed in results[row]:
                continue
            t0 = time.time()
            run = train(2, args.data, seed_dir / row, params, row=row, resume=True,
                        stage1_masks=seed_dir / "stage1_masks", run_name=f"ablation-{row}-seed{seed}",
                        progress=False, **dirs)
            ev = evaluate(run.best_checkpoint, args.data, "test", seed_dir / row / "test.json",
                          stage1_masks=seed_dir / "stage1_masks", progress=False, **dirs)
            numbers = dict(ev["semantic"]["v2" if "v2" in ev["semantic"] else "all"])
            numbers["seconds"] = round(time.time() - t0, 1)
            numbers["per_scenario"] = ev.get("per_scenario", {})
            results[row][seed] = numbers
            logging.info("seed %d row %s: test mIoU %.4f F %.4f (%.0f s)", seed, row, numbers["miou"],
                         numbers["fscore"], numbers["seconds"])
            from ssp.fileio import write_json

            merged = {**saved.get("results", {}), **{r: {str(k): v for k, v in per.items()} for r, per in results.items()}}
            write_json(results_path, {"overrides": overrides, "results": merged})

    results = {row: per_seed for row, per_seed in results.items() if per_seed}
    text = table(results, "test v2")
    if "full" in results and "aavs" in results and min(len(results["full"]), len(results["aavs"])) > 1:
        full = [r["miou"] for r in results["full"].values()]
        base = [r["miou"] for r in results["aavs"].values()]
        gap = statistics.fmean(full) - statistics.fmean(base)
        std = max(statistics.stdev(full), statistics.stdev(base))
        verdict = "PASS" if gap > 2 * std else "FAIL"
        text += (f"\n\nFull − AAVS mIoU gap: {gap * 100:.2f} points; 2 × seed std (max of the two rows): "
                 f"{2 * std * 100:.2f} → acceptance {verdict}.")
    schedule = load_params(args.params, overrides=overrides)
    text += (f"\n\n{args.seeds} seeds; schedule (params.yaml + overrides `{' '.join(overrides)}`): "
             f"model `{schedule['model']}`, train1 `{schedule['train1']}`, train2 `{schedule['train2']}`; total "
             f"{(time.time() - started) / 60:.1f} min this invocation.")
    print(text)
    if args.readme:
        write_readme_section(text, Path(args.readme))
    return 0


if __name__ == "__main__":
    sys.exit(main())
