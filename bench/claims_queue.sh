#!/bin/bash
# The claims issue's queue on Scientific (README, "Scientific, converged"), in two lanes that
# run side by side on a 2-core machine: `bash bench/claims_queue.sh etegrec` and
# `bash bench/claims_queue.sh rest`. Every row is one bench/quality.py invocation whose
# table goes to $RESULTS/quality-scientific-paper-<tag>.{md,json} (default: this checkout's
# bench/results, rewritten after each finished seed); the workdirs go to $WORKDIR (default
# /work/runs/quality, outside the checkout). Rerun the same command after a stop: finished
# runs are reused, an interrupted one resumes. Run it from a worktree of its own (git
# worktree add --detach DIR main) so that commits to the main checkout do not change a
# running lane's code; point RESULTS at the main checkout's bench/results. Where a machine
# does not outlive the session (its workdirs with it), give both lanes the session's end,
# UNTIL="+170 min", and run `rest` in both: each row starts only if its seeds should finish
# by then (bench/queue_rows.py), and a lock file in $WORKDIR keeps two lanes off one row;
# a row whose workdir a machine kept from an earlier session (it has a checkpoint) resumes
# whatever time is left, ahead of the rows after it; with FILL=1 the rows that did not fit
# start once none left fits (they resume next session where the machine is kept).
# SLOWER is this machine's speed against the tables' (TIGER's T5 at 333-355 samples/s beside
# the other lane; metrics.jsonl's samples_per_s): where two lanes train at half that
# (SLOWER 2, the 2026-12 session machines) a 5,000 s row (TIGER's or SimCIT's seed) fits a
# session in neither lane; run one lane alone then, with SLOWER measured alone (273-346
# samples/s alone on those machines: 1.0-1.3), and such a row fits.
#
# Another Amazon set with item text: DATA_DIR=/path DATA_NAME=Name bash bench/claims_queue.sh ...
# (the only change: every row gets --set data.dir / data.name, its workdirs and tables are
# named paper-<name>).
#
# Order: the methods behind the claims first, seed by seed; then the ablations and controls
# (seed 2, then 0 and 1: seed 1's workdirs were lost). ETEGRec's lane runs its first
# ablations before its chosen row's seed 2: that row's seed 0 is far below TIGER, and the
# ablations say why. The paired comparisons:
#   python -m bench.claims --name paper --ablations --tables bench/results/quality-scientific-paper-*.json
set -u
cd "$(dirname "$0")/.."
export JAXREC_DATA_DIR="${JAXREC_DATA_DIR:-../shared/data}"
WORKDIR="${WORKDIR:-/work/runs/quality}"
RESULTS="${RESULTS:-bench/results}"
SET_NAME=$(echo "${DATA_NAME:-scientific}" | tr '[:upper:]' '[:lower:]')
NAME=paper
SETS=()
# UNTIL (anything `date -d` reads, e.g. "+170 min"): when this machine goes; SLOWER: how much
# slower it trains than the machines that timed the tables (bench/queue_rows.py)
UNTIL_S=""
[ -n "${UNTIL:-}" ] && UNTIL_S=$(date -d "$UNTIL" +%s)
SLOWER="${SLOWER:-1}"
if [ -n "${DATA_NAME:-}" ]; then
  NAME="paper-$SET_NAME"
  SETS=(--set "data.dir=${DATA_DIR:?DATA_DIR with DATA_NAME}" --set "data.name=$DATA_NAME")
fi

q() {   # q TAG SPEC SEEDS [FIRST_SEED]
  local tag=$1 spec=$2 seeds=$3 first=${4:-0}
  local out="$RESULTS/quality-$SET_NAME-paper-$tag-s$first$seeds"
  # a row whose table already holds every seed asked for is not run again (after a machine and
  # its workdirs are lost, the queue goes on from the first row without one), nor one that
  # would not finish before UNTIL (unless a checkpoint in its workdir says this machine kept
  # it from an earlier session: then it resumes), nor one another lane holds (its lock file)
  local left=() why lock
  [ -n "$UNTIL_S" ] && left=(--left $((UNTIL_S - $(date +%s))) --slower "$SLOWER")
  why=$(python -m bench.queue_rows "$out.json" "$spec" "$first" "$seeds" "${left[@]}" \
        --tables "$RESULTS/quality-$SET_NAME-paper-*.json" --workdir "$WORKDIR" --name "$NAME")
  case $? in
    0) [ -n "$why" ] && echo "== $spec seeds $first..$((seeds - 1)): $why" ;;
    1|2) echo "== $spec seeds $first..$((seeds - 1)): $why, skipped"; return ;;
    *) echo "== $spec: bench.queue_rows failed" >&2; return ;;
  esac
  mkdir -p "$WORKDIR"
  exec {lock}> "$WORKDIR/.queue-$(basename "$out").lock"
  if ! flock -n "$lock"; then
    echo "== $spec seeds $first..$((seeds - 1)): another lane runs it, skipped"
    exec {lock}>&-; return
  fi
  echo "== $(date -u +%FT%TZ) $spec seeds $first..$((seeds - 1))"
  python -m bench.quality "$spec" --seeds "$seeds" --first_seed "$first" --workdir "$WORKDIR" \
      --name "$NAME" "${SETS[@]}" --out "$out"
  local rc=$?   # (read before the date's command substitution resets it)
  exec {lock}>&-
  echo "== $(date -u +%FT%TZ) rc=$rc"
}

# SimCIT's row chosen on validation: the released noise-to-temperature ratio at 1 % of the
# scale (bench/README.md, SimCIT: how soft its codes train)
SHARP="simcit:scientific,tokenizer.simcit.gumbel_tau=0.002,tokenizer.simcit.gumbel_scale=0.01"

main_rows() {   # the rows behind the claims, seeds $1..$2-1 (SIIT's, 2 hours beside the other
  # lane, last: a machine's workdirs may not outlive the session, so it starts a session)
  q tiger tiger:scientific "$2" "$1"
  q letter letter:scientific "$2" "$1"
  q sasrec sasrec:scientific "$2" "$1"
  q simcit simcit:scientific "$2" "$1"
  q siit siit:scientific "$2" "$1"
}

ablations() {   # seeds $1..$2-1; grouped by the claim they explain, the largest deficits (SimCIT, SIIT) first
  # SimCIT, on the row chosen on validation (bench/claims.py, SIMCIT_CHOSEN), whose fusion
  # reads the cf view almost alone: the released checkpoint choice (lowest InfoNCE on 10 %
  # held-out items), the equal-information control (TIGER's RQ-VAE on text + cf), a
  # reconstruction loss added back, view by view
  q simcit-sharp-holdout "$SHARP,tokenizer.simcit.holdout=0.1" "$2" "$1"
  q tiger-textcf "tiger:scientific,tokenizer.feature=text+cf" "$2" "$1"
  q simcit-sharp-recon "$SHARP,tokenizer.simcit.w_recon=1.0" "$2" "$1"
  q simcit-sharp-text "$SHARP,tokenizer.simcit.views=('text',)" "$2" "$1"
  q simcit-sharp-cf "$SHARP,tokenizer.simcit.views=('cf',)" "$2" "$1"
  q simcit-sharp "$SHARP" "$2" "$1"
  # SIIT: the alignment task alone, one round once it is learnt, weak start IDs (beside TIGER
  # from the same), another view of the item to align, a smaller alignment share
  q siit-rounds0 "siit:scientific,siit.rounds=0" "$2" "$1"
  q siit-late "siit:scientific,siit.first_refine=40,siit.rounds=1,siit.keep_margin=2.0" "$2" "$1"
  q siit-random "siit:scientific,tokenizer.source=random" "$2" "$1"
  q tiger-random "tiger:scientific,tokenizer.source=random" "$2" "$1"
  q siit-cf "siit:scientific,siit.feature=cf" "$2" "$1"
  q siit-ratio01 "siit:scientific,siit.align_ratio=0.1" "$2" "$1"
  q siit-rqkmeans-cf "siit:scientific,tokenizer.source=rqkmeans,tokenizer.feature=cf" "$2" "$1"
  q tiger-rqkmeans-cf "tiger:scientific,tokenizer.source=rqkmeans,tokenizer.feature=cf" "$2" "$1"
  q siit-sum "siit:scientific,siit.align_loss=sum" "$2" "$1"
  q siit-any "siit:scientific,siit.movers=any" "$2" "$1"
  # LETTER's parts (the paper's ablation: without L_cf, without L_div) and its IDs' shape:
  # every level hard; the official 3 hard levels and a balanced fourth; TIGER's appended
  # collision level instead of the Sinkhorn re-assignment that empties LETTER's last level
  # (bench/README.md, what LETTER's IDs encode)
  q letter-nocf "letter:scientific,tokenizer.letter.alpha=0.0" "$2" "$1"
  q letter-nodiv "letter:scientific,tokenizer.letter.beta=0.0" "$2" "$1"
  q letter-neither "letter:scientific,tokenizer.letter.alpha=0.0,tokenizer.letter.beta=0.0" "$2" "$1"
  q letter-hard "letter:scientific,tokenizer.modes=('hard','hard','hard')" "$2" "$1"
  q letter-4levels "letter:scientific,tokenizer.levels=4,tokenizer.modes=('hard','hard','hard','sinkhorn')" "$2" "$1"
  q letter-suffix "letter:scientific,tokenizer.collision=suffix" "$2" "$1"
  # the controls: RQ-KMeans IDs, the decoder-only model supervised on every code, TIGER at
  # the synthetic default's size
  q tiger-rqkmeans "tiger:scientific,tokenizer.source=rqkmeans" "$2" "$1"
  q tiger-decoder tiger:scientific_decoder "$2" "$1"
  q tiger-decoder-all "tiger:scientific_decoder,model.loss=all" "$2" "$1"   # every code supervised
  q tiger-small tiger:scientific_small "$2" "$1"
}

once() {   # seed 0 only: the official recipes
  local letter_recipe="tokenizer.epochs=10000,tokenizer.hidden=(2048,1024,512,256,128,64),tokenizer.warmup_epochs=0,tokenizer.clip=0.0"
  q letter-recipe "letter:scientific,$letter_recipe" 1
  q tiger-letter-recipe "tiger:scientific,$letter_recipe" 1
  q simcit-recipe "simcit:scientific_paper,tokenizer.simcit.holdout=0.1,tokenizer.suffix_size=4096" 1
}

lane() {   # lane etegrec|rest: its rows in order
case "$1" in
  etegrec)   # seed 0, what its gap is made of, the row chosen on validation's seeds and ablations
    q etegrec etegrec:scientific 1
    q etegrec-frozen "etegrec:scientific,etegrec.alternation=frozen" 1
    # the frozen row is as low as the alternating one: the IDs or the recommender? TIGER's
    # recommender and recipe (a SIIT run without alignment or rounds is TIGER bit for bit)
    # on ETEGRec seed 0's pre-trained IDs (the frozen row's), then on its final IDs
    ete="$WORKDIR/etegrec-scientific-$NAME-seed0"
    q tiger-on-etegrec-ids "siit:scientific,siit.init_codes=$ete,siit.rounds=0,siit.align_ratio=0" 1
    # the official batch (2,048 = 512 x 4) gives this small set about 7 updates a
    # recommender epoch, TIGER's batch of 256 about 53: ETEGRec with TIGER's batch and lr.
    # Its validation passes the official recipe's best (N@10 .0592) at epoch 28 of the
    # alternation: the row chosen on validation (bench/claims.py, ETEGREC_CHOSEN), whose
    # final IDs, seeds 1-2 and ablations come next
    chosen="etegrec:scientific,train.batch_size=256,train.accumulate=1,train.lr=0.0005"
    q etegrec-batch256 "$chosen" 1
    final="$WORKDIR/etegrec-scientific-$NAME-train.batch_size_256-train.accumulate_1-train.lr_0.0005-seed0/codes_final.npz"
    q tiger-on-etegrec-batch256-final-ids "siit:scientific,siit.init_codes=$final,siit.rounds=0,siit.align_ratio=0" 1
    q etegrec-batch256 "$chosen" 2 1
    # its recommender costs .0107 of its .0130 N@10 gap to TIGER (TIGER's recipe on its final
    # IDs: README): the tokenizer frozen, then ETEGRec's recommender alone (frozen, no SIA,
    # no PSA) on the pre-trained IDs TIGER's recipe was trained on (tiger-on-etegrec-ids),
    # before seed 2
    q etegrec-batch256-frozen "$chosen,etegrec.alternation=frozen" 1
    q etegrec-batch256-bare "$chosen,etegrec.alternation=frozen,etegrec.w_sia=0.0,etegrec.w_psa=0.0" 1
    q etegrec-batch256 "$chosen" 3 2
    q etegrec-batch256-w_sia=0.0 "$chosen,etegrec.w_sia=0.0" 1
    q etegrec-batch256-w_psa=0.0 "$chosen,etegrec.w_psa=0.0" 1
    q etegrec-batch256-joint "$chosen,etegrec.alternation=joint" 1
    # the official recipe as it is: the official code's 8,000-step warm-up never ends here
    # (the lr climbs to 3.5e-3 at most); with the warm-up as a share (the variant) the lr
    # sits at its 5e-3 peak from epoch 32, where validation goes flat until fine-tuning's
    # 5e-4. Then its seeds 1-2
    q etegrec-warmup8000 "etegrec:scientific,etegrec.warmup_frac=0.0" 1
    q tiger-on-etegrec-final-ids "siit:scientific,siit.init_codes=$ete/codes_final.npz,siit.rounds=0,siit.align_ratio=0" 1
    q etegrec etegrec:scientific 3 1 ;;
  rest)
    # Patience 15 from 2026-12-06 (configs/tiger.py; 5 before): the rows run under 5 went on
    # from where it stopped them (bench/experiments/more_patience.py; their patience-5 runs
    # kept as "<spec>,train.patience=5"). The claims' rows first: seeds 1, then 2, with
    # SimCIT's chosen row and SIIT's own baseline (its alignment task alone, no rounds);
    # TIGER's seeds 1-2 under patience 5 are read first (bench.claims --ablations pairs them)
    q tiger-patience5 "tiger:scientific,train.patience=5" 3 1
    main_rows 1 2
    q simcit-sharp "$SHARP" 2 1
    q siit-rounds0 "siit:scientific,siit.rounds=0" 2 1
    # TIGER under LETTER-TIGER's official checkpoint rule, the lowest teacher-forced valid
    # loss: on Scientific validation's N@10 and its loss part from epoch 36 of TIGER's seed 1
    # (bench/README.md, early stopping's patience)
    q tiger-select-loss "tiger:scientific,train.select=loss" 2 1
    # LETTER under the same rule, its own paper's: does the rule order the two methods as
    # NDCG@10 on validation does?
    q letter-select-loss "letter:scientific,train.select=loss" 2 1
    main_rows 2 3
    # then their seed 0 (TIGER's, LETTER's, SASRec's and SIIT's seed 0 stand in the README
    # from workdirs lost on 2026-12-05, under patience 5): the claims' third seed
    main_rows 0 1
    # TIGER's seed 2 again: its workdir was lost before runs kept their ranks, which the claims
    # by target group read (bench.claims --groups) for the baseline of most claims; a CPU run
    # repeats, so its table should give -tiger-s23's figures again (its machine permitting)
    q tiger-again tiger:scientific 3 2
    q simcit-sharp "$SHARP" 3 2
    q siit-rounds0 "siit:scientific,siit.rounds=0" 3 2
    q simcit-sharp "$SHARP" 1
    q siit-rounds0 "siit:scientific,siit.rounds=0" 1
    # the controls run under patience 5, in the order they were made: LETTER's ID shape
    # (bench/README.md, what LETTER's IDs encode), SimCIT's fit cut at 300 epochs, SIIT's old
    # movers rule, the equal-information control of SimCIT's claim (TIGER's RQ-VAE on text +
    # cf: bench/README.md, what SimCIT's IDs share)
    q letter-hard "letter:scientific,tokenizer.modes=('hard','hard','hard')" 2 1
    q letter-4levels "letter:scientific,tokenizer.levels=4,tokenizer.modes=('hard','hard','hard','sinkhorn')" 2 1
    q simcit-e300 "simcit:scientific,tokenizer.epochs=300" 2 1
    q siit-any "siit:scientific,siit.movers=any" 2 1
    q tiger-textcf "tiger:scientific,tokenizer.feature=text+cf" 2 1
    # SimCIT's objective on its text view alone: the chosen row's fusion puts .99 on cf; the
    # view TIGER's IDs are made from
    q simcit-sharp-text "$SHARP,tokenizer.simcit.views=('text',)" 2 1
    # TIGER's recommender trained from scratch on SIIT seed 2's final IDs (codes_final.npz; its
    # codes.npz holds the start IDs), seed 2 as the TIGER and SIIT rows it is compared with
    # (seed 1's workdirs were lost with the machine on 2026-12-06)
    q tiger-on-siit-ids "siit:scientific,siit.init_codes=$WORKDIR/siit-scientific-$NAME-seed2/codes_final.npz,siit.rounds=0,siit.align_ratio=0" 3 2
    # colliding items told apart by TIGER's appended level instead of Sinkhorn on the last
    # one (which moves them to other last-level codes: the empty third level)
    q letter-suffix "letter:scientific,tokenizer.collision=suffix" 2 1
    q tiger-decoder tiger:scientific_decoder 3
    # the ablations at seed 2 first: its main rows' workdirs are all here to pair with, user
    # by user (seed 1's were lost with the machine on 2026-12-06)
    ablations 2 3
    once
    ablations 0 1
    ablations 1 2 ;;
  *)
    echo "usage: bash bench/claims_queue.sh etegrec|rest" >&2; exit 2 ;;
esac
}

lane "${1:-}"
# FILL=1: once no row left fits before UNTIL, the first that did not fit starts anyway (and
# the next after it, until the machine goes): on a machine that keeps its workdirs into the
# next session it resumes there (bench/queue_rows.py), on one that does not the time was idle
if [ -n "${FILL:-}" ] && [ -n "$UNTIL_S" ]; then
  echo "== $(date -u +%FT%TZ) FILL: the rows that did not fit, in order"
  UNTIL_S=""
  lane "${1:-}"
fi
