"""Fine-tune a pretrained GPT-2 on a text file: `--config=configs/finetune.py`.

    python run.py --mode=train --config=configs/finetune.py --config.init_from=gpt2 \
        --config.data.train_file=train.txt --workdir=/tmp/ft

`init_from` is an HF directory / weights file / hub name (see gpt2jax.load_pretrained);
the model's shape comes from it (config.model only sets dropout/dtype/attention/remat).
3 epochs over all 128-token windows of the file (GPT-2 BPE), batch 16, AdamW lr 5e-5 with
cosine decay to 0 over the run, a checkpoint every 500 steps (keep 2 + the best by val loss,
val = the last 10% of the text unless data.val_file is set), and the fine-tuned model
exported to `<workdir>/hf` (loads with transformers' GPT2LMHeadModel.from_pretrained).
The run logs the pretrained model's val loss before the first step (`step 0: before
training, val loss ...`); expect the val loss to fall below it within the first epoch.
A small file (a few hundred tokens) is fitted: a smaller block, batch and eval set (and a
larger held-out fraction when needed), printed in one `fit_to_data:` line (training/fit.py).
"""

from __future__ import annotations

import ml_collections

from configs import common


def get_config(arg: str | None = None) -> ml_collections.ConfigDict:
    del arg
    c = ml_collections.ConfigDict()
    c.seed = 0                     # PRNG seed: dropout, window order
    c.init_from = "gpt2"           # pretrained model (HF dir, weights file, hub name or a
    #                                training workdir: its latest checkpoint and tokenizer)
    c.model = common.model_config()  # shapes replaced by the pretrained model's
    c.data = common.data_config(
        train_file="",             # required: --config.data.train_file=train.txt
        tokenizer="gpt2",
        mode="epochs",             # every window once per epoch, reshuffled each epoch
        num_epochs=3,              # the run length (train.num_steps = 0)
    )
    c.train = common.train_config(
        batch_size=16,
        grad_accum_steps=1,
        block_size=128,
        num_steps=0,               # 0 = data.num_epochs epochs
        learning_rate=5e-5,
        min_learning_rate=0.0,
        warmup_steps=0,
        lr_decay_steps=0,          # 0 = decay over the whole run
        weight_decay=0.0,          # HF Trainer default
        beta2=0.999,               # HF Trainer default
        log_every=10,
        eval_every=500,
        eval_batches=20,
        eval_at_start=True,        # the pretrained model's val loss, the one to beat
        fit_to_data=True,          # a small file: smaller block / batch, printed (training/fit.py)
    )
    c.checkpoint = common.checkpoint_config(save_every=500, keep=2, keep_best=1)
    c.mesh = common.mesh_config()
    c.generate = common.generate_config()
    return c
