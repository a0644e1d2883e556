#!/bin/bash
# The accelerator check, about 8 minutes on an NVIDIA H200: jaxrec's train step and decoding
# in fp32 and bf16, the compile time with XLA's GPU autotuning on and off, and the PyTorch +
# HF anchor on the same GPU. Prepare two ignored folders in the checkout first and copy them
# to the GPU host with it (its image lacked grain and ml_collections):
#   echo /.whl/ >> .git/info/exclude; echo /.dev/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     grain==0.2.18 array_record ml_collections==1.1.0 portpicker   # not in the GPU image
#   mkdir -p .dev/data && cp -r ../shared/data/instruments .dev/data/ && cp -r ../shared/anchors .dev/
# then run `bash bench/device_check.sh` from the repository root there. The results (and
# env.txt: the GPU, jax, flax and torch versions) go to $OUT/res.tgz ($OUT: the current
# folder unless set).
#
# One history bucket (20) keeps it to one train and one decode compile per run: on the
# H200 (jax 0.11.2) each train program took 23-31 s to compile (2026-11-30), so the default
# 14 buckets spend ~6 minutes compiling before the first timed step. Each run has a time cap
# so that the whole check ends within 420 s.
T0=$(date +%s); R=/tmp/res; mkdir -p $R; OUT=${OUT:-$PWD}
left() { echo $(( $1 - ($(date +%s) - T0) )); }
export PYTHONUNBUFFERED=1 JAXREC_DATA_DIR=$PWD/.dev/data
python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
  --target /tmp/site .whl/*.whl || exit 1
export PYTHONPATH=/tmp/site:$PWD
{ nvidia-smi -L; lscpu | grep -i "model name"; nproc; python3 -c "import jax, flax, torch; \
print('jax', jax.__version__, 'flax', flax.__version__, 'torch', torch.__version__, jax.devices())"; } \
  2>&1 | tee $R/env.txt
S="python3 -m bench.speed --buckets 20 --decode_batches 40"
timeout $(left 110) $S --skip grid tokenizer sasrec --out $R/speed-fp32.json 2>&1 | grep -v Warning | tee $R/speed.log
timeout $(left 200) $S --skip grid tokenizer sasrec input --dtype bfloat16 --out $R/speed-bf16.json 2>&1 \
  | grep -v Warning | tee -a $R/speed.log
XLA_FLAGS=--xla_gpu_autotune_level=0 timeout $(left 270) $S --skip grid tokenizer sasrec input decode \
  --out $R/speed-fp32-noautotune.json 2>&1 | grep -v Warning | tee -a $R/speed.log
timeout $(left 420) python3 -m bench.anchor_device --anchors .dev/anchors --amp \
  --out $R/anchor.json 2>&1 | grep -v Warn | tee $R/anchor.log
echo "total $(( $(date +%s) - T0 )) s"; tar czf $OUT/res.tgz -C /tmp res
