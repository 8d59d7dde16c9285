#!/bin/bash
# stop 45: the Conformer table with every point (one process, the machine otherwise quiet)
. /work/venv/bin/activate
cd /work/main
T=/work/exp/conf/conformer_teacher; D=/work/exp/data/default; LM=/work/exp/lm3.arpa; C=/work/exp/pl_conf/conformer_teacher
python bench/prune_learned.py --model $T --data $D --lm $LM --mask-steps 180 --finetune-epochs 4 --match-steps \
   --calibration-cuts 2062 --learned warmup_steps=90 --out /work/exp/pl_conf --results bench/results/prune_learned \
   --reuse --targets 0.5 --criteria learned sensitivity taylor \
   --extra learned_kd5=/work/exp/pl_conf_ft5/conformer_teacher/learned_50_warmup_steps90 \
           modelopt_kd6=/work/exp/peers/conformer_teacher/modelopt_finetuned \
           learned_lat40_kd5=/work/exp/pl_conf_lat/learned_50_lat40 \
           learned_hidden=$C/learned_50_warmup_steps90_hidden_weight1.0 \
           learned_78=$C/learned_78_warmup_steps90 \
           learned_78_seed1=$C/learned_78_warmup_steps90_seed1 \
           learned_hidden_78=$C/learned_78_warmup_steps90_hidden_weight1.0 \
           learned_hidden_78_seed1=$C/learned_78_warmup_steps90_hidden_weight1.0_seed1 \
           sensitivity_78=$C/sensitivity_78_sensitivity_ratios0.25,0.5,0.75,0.9 \
           sensitivity_78_seed1=$C/sensitivity_78_sensitivity_ratios0.25,0.5,0.75,0.9_seed1 \
           taylor_78=$C/taylor_78
