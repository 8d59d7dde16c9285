#!/bin/bash
# stop 50: the Conformer at 50% on the rebuilt teacher, learned depth gates under a latency target vs ModelOpt
cd /work/exp && . /work/venv/bin/activate && export OMP_NUM_THREADS=1 PYTHONPATH=/work/main
python /work/main/bench/prune_learned.py --model exp/conf/conformer_teacher --data data/default --lm lm3.arpa \
   --mask-steps 180 --finetune-epochs 5 --match-steps --calibration-cuts 2062 --learned warmup_steps=90 --out exp/pl_conf50 \
   --reuse --targets 0.5 --criteria learned --results /work/exp/results_conf50 --extra \
   modelopt_kd6=exp/peers50/conformer_teacher/modelopt_finetuned \
   modelopt_kd6_seed1=exp/peers50_s1/conformer_teacher/modelopt_finetuned \
   modelopt_kd6_seed2=exp/peers50_s2/conformer_teacher/modelopt_finetuned \
   learned_remove2_kd5=exp/pl_conf_lat/learned_50_rl2 \
   learned_depth_lat44_kd5=exp/pl_conf_lat/learned_50_depth_lat44 \
   learned_depth_lat42_kd5=exp/pl_conf_lat/learned_50_depth_lat42m \
   learned_depth_lat42_kd5_seed1=exp/pl_conf_lat/learned_50_depth_lat42m_seed1 \
   learned_depth_lat42_kd5_seed2=exp/pl_conf_lat/learned_50_depth_lat42m_seed2
