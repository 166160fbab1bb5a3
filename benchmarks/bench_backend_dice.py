"""Dice of one trained model with each encoder attention backend, without and with a short fine-tune.

The same weights are built with ``attention_backend="dense"`` and ``"dilated"``
(:func:`volsam.registry.build_model`) and evaluated with the sam_med3d protocol on the held-out
``colin27-aal`` structures; optionally each is then fine-tuned for ``--finetune-steps`` on the training
data (``volsam.train.loop.train``, the default model's stage-2 recipe at ``--finetune-lr``) and evaluated
again. Both backends get the same fine-tune, so the dense row is the control for the fine-tune itself.

    python -m benchmarks.bench_backend_dice --model volsam_tiny --checkpoint W \\
        [--finetune-steps 200 --train-data DIR] [--clicks 5]
"""

from __future__ import annotations

import argparse
import json
import tempfile

HELD_OUT = "Thalamus_L,Thalamus_R,Caudate_L,Caudate_R,Putamen_L,Putamen_R,Hippocampus_L,Hippocampus_R"


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--model", default="volsam_tiny")
    ap.add_argument("--checkpoint", required=True)
    ap.add_argument("--data", default="colin27-aal")
    ap.add_argument("--labels", default=HELD_OUT)
    ap.add_argument("--clicks", type=int, default=5)
    ap.add_argument("--finetune-steps", type=int, default=0)
    ap.add_argument("--train-data", default=None, help="dataset of the fine-tune (the model's training data)")
    ap.add_argument("--finetune-lr", type=float, default=5e-5)
    ap.add_argument("--threads", type=int, default=2)
    args = ap.parse_args(argv)

    import torch

    from volsam.eval.runner import evaluate
    from volsam.registry import build_model
    from volsam.train.loop import TrainConfig, train

    torch.set_num_threads(args.threads)
    labels = args.labels.split(",")
    rows = []

    def score(net, name: str) -> None:
        s = evaluate(
            args.data,
            net,
            "sam_med3d",
            args.clicks,
            tempfile.mkdtemp(),
            labels=labels,
            progress=False,
            device="cpu",
            write=False,
        )
        dice = s.overall["dice"]
        rows.append(
            {
                "backend": name,
                "dice_1": round(dice[0], 4),
                f"dice_{args.clicks}": round(dice[-1], 4),
                "encode_ms": round(sum(c["encode_ms"] for c in s.cases) / max(len(s.cases), 1), 1),
            }
        )
        print(json.dumps(rows[-1]), flush=True)

    for backend in ("dense", "dilated"):
        score(build_model(args.model, args.checkpoint, attention_backend=backend), backend)
    if args.finetune_steps:
        if args.train_data is None:
            raise SystemExit("--finetune-steps needs --train-data")
        from volsam.train.data import TrainDataset

        # Both backends get the same short fine-tune (the default model's stage-2 recipe at a lower lr), so
        # the dense row is the control: what the fine-tune itself does, apart from the backend change.
        for backend in ("dense", "dilated"):
            torch.manual_seed(0)
            net = build_model(args.model, args.checkpoint, attention_backend=backend)
            data = TrainDataset.from_dataset(args.train_data, p_synth=0.3, extra_targets=1, seed=0)
            cfg = TrainConfig(
                steps=args.finetune_steps,
                lr=args.finetune_lr,
                warmup_steps=min(20, args.finetune_steps // 5),
                rounds=3,
                mask_only_rounds=1,
                loss="balanced",
                ce_weight=0.1,
                max_grad_norm=1.0,
                save_every=10**6,
                device="cpu",
            )
            train(net, data, tempfile.mkdtemp(), cfg, model_name=args.model)
            score(net.eval(), f"{backend} + {args.finetune_steps} fine-tune steps")
    print(f"\n| backend | Dice @1 | Dice @{args.clicks} | encoder ms (per case, in the session) |\n|---|---|---|---|")
    for r in rows:
        print(f"| {r['backend']} | {r['dice_1']} | {r[f'dice_{args.clicks}']} | {r['encode_ms']} |")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
