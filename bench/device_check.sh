#!/bin/bash
# The accelerator check, one 10-minute run (the device's whole budget): the programs a run
# compiles and their compile seconds, jaxrec's train step in fp32 and bf16 at batch 256 and
# 1024 (paper model, no accumulation, one history length: data.shapes' accelerator default),
# the decode of the whole Instruments test split, a Qwen2.5-0.5B-shaped LLM recommender's
# LoRA step (bf16, random weights), the PyTorch + HF anchor on the same device,
# then the claims issue's reproduction queue until the time is up (it resumes next time).
# Each part has a time cap so that the whole check ends within 570 s.
#
# On the GPU host: prepare two ignored folders in the checkout first and copy them with it
# (its image lacked grain and ml_collections):
#   echo /.whl/ >> .git/info/exclude; echo /.dev/ >> .git/info/exclude
#   pip download --no-deps --only-binary=:all: --python-version 3.12 --implementation cp \
#     --platform manylinux_2_28_x86_64 --platform manylinux_2_17_x86_64 -d .whl \
#     grain==0.2.18 array_record ml_collections==1.1.0 portpicker flatbuffers   # not in the image
#   mkdir -p .dev/data && cp -r ../shared/data/instruments .dev/data/ && cp -r ../shared/anchors .dev/
# then `bash bench/device_check.sh` from the repository root there. The results (and env.txt:
# the device, jax, flax and torch versions) go to $OUT/res.tgz ($OUT: the current folder
# unless set).
#
# TINY=1 bash bench/device_check.sh   runs every part on this CPU with tiny sizes and 5x the
# caps (a check of the script: the data from $JAXREC_DATA_DIR, no anchor without torch).
T0=$(date +%s); R=${R:-/tmp/res}; mkdir -p $R; OUT=${OUT:-$PWD}
left() { echo $(( $1 * ${SCALE:-1} - ($(date +%s) - T0) )); }   # seconds to the cap
export PYTHONUNBUFFERED=1
if [ -z "$TINY" ]; then
  export JAXREC_DATA_DIR=$PWD/.dev/data ANCHORS=.dev/anchors
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade \
    --target /tmp/site .whl/*.whl || exit 1
  export PYTHONPATH=/tmp/site:$PWD
  nvidia-smi -L > $R/env.txt 2>&1
  B1=256; B2=1024; LEN=20; DEC=0; STEPS=30; Q=""; TORCH=cuda; RUN=tiger:instruments
else                                   # the same parts, tiny, on this CPU
  export JAXREC_DATA_DIR=${JAXREC_DATA_DIR:-../shared/data} ANCHORS=${ANCHORS:-../shared/anchors}
  export PYTHONPATH=$PWD
  B1=16; B2=32; LEN=8; DEC=2; STEPS=2; Q="--quick"; TORCH=cpu; RUN=tiger:tiny
  SCALE=${SCALE:-5}                    # the caps x 5: a 2-core CPU compiles the paper model slowly
fi
{ lscpu | grep -i "model name"; nproc; python3 -c "import jax, flax; \
print('jax', jax.__version__, 'flax', flax.__version__, jax.devices())"; \
python3 -c "import torch; print('torch', torch.__version__)"; } >> $R/env.txt 2>&1
cat $R/env.txt
# 1. the programs of an Instruments run and their compile seconds, cold and warm cache
timeout $(left 150) python3 -m bench.speed --programs $RUN \
  --out $R/programs.json 2>&1 | grep -v Warning | tee $R/speed.log
# 2. the train step: fp32 / bf16 at two batch sizes, one history length
S="python3 -m bench.speed $Q --buckets $LEN --skip grid tokenizer sasrec input decode"
CAP=150
for dtype in float32 bfloat16; do
  for b in $B1 $B2; do
    CAP=$(( CAP + 40 ))                # caps at 190, 230, 270, 310 s
    timeout $(left $CAP) $S --batch $b --dtype $dtype --out $R/train-$dtype-$b.json 2>&1 \
      | grep -v Warning | tee -a $R/speed.log
  done
done
# 3. the decode of the whole test split (DEC=0: every batch)
timeout $(left 330) python3 -m bench.speed $Q --buckets $LEN --skip grid tokenizer sasrec input train \
  --decode_batches $DEC --out $R/decode.json 2>&1 | grep -v Warning | tee -a $R/speed.log
# 3b. the LLM recommender's LoRA step: a Qwen2.5-0.5B-shaped model, random weights, bf16
if [ -z "$TINY" ]; then LLM="--shape qwen2.5-0.5b --dtype bfloat16 --batch 16"
else LLM="--folder tests/fixtures/hf/qwen2 --batch 2 --steps 2 --warmup 1"; fi
timeout $(left 390) python3 -m bench.llm $LLM --out $R/llm.json 2>&1 | grep -v Warning \
  | tee -a $R/speed.log
# 4. the anchor beside it (needs torch)
if python3 -c "import torch" 2>/dev/null; then
  timeout $(left 420) python3 -m bench.anchor_device --anchors $ANCHORS --amp --device $TORCH \
    --batch $B1 $B2 --steps $STEPS --out $R/anchor.json 2>&1 | grep -v Warn | tee $R/anchor.log
else
  echo "anchor skipped: no torch here" | tee $R/anchor.log
fi
# 5. the reproduction queue until the time is up (resumes from $R/reproduce next time)
if [ -z "$TINY" ]; then
  timeout $(left 570) python3 -m bench.reproduce --seeds 1 --workdir $R/reproduce \
    --out $R/reproduce 2>&1 | grep -v Warning | tail -40 > $R/reproduce.log
else
  timeout $(left 570) python3 -m bench.reproduce tiger:tiny --seeds 1 --epochs 1 --max-steps 2 \
    --workdir $R/reproduce --out $R/reproduce 2>&1 | grep -v Warning | tail -5 > $R/reproduce.log
fi
cat $R/reproduce.log
echo "total $(( $(date +%s) - T0 )) s"; tar czf $OUT/res.tgz -C $(dirname $R) $(basename $R)
