# usage: bash bench/session16_gpu.sh <limit_s> <distortion_full args...> (carry .whl/splat .whl/xmin .whl/gsplat_ext.tgz):
# device setup, the CUDA kernel checks (first call on a machine only), then bench/distortion_full.py with the
# variants file chosen by the checks: session15_b_kernels.json when every kernel check passes, session14_b.json
# (the same settings through PyTorch) when one fails; with KERNELS_OR_PROFILE=1, a failed check profiles the PyTorch
# fine step instead of starting a run that cannot finish. Results to $OUT.
T0=$(date +%s); LIMIT=$1; shift
. bench/device_setup.sh
mkdir -p /tmp/bench
if [ ! -f /tmp/bench/kernels_rc ]; then
  timeout 150 python3 bench/kernel_checks_cuda.py > /tmp/bench/kernel_checks.log 2>&1; echo $? > /tmp/bench/kernels_rc
fi
tail -16 /tmp/bench/kernel_checks.log; cp /tmp/bench/kernel_checks.log $OUT/
variants=bench/variants/session14_b.json
[ "$(cat /tmp/bench/kernels_rc)" = 0 ] && variants=bench/variants/session15_b_kernels.json
echo "kernel checks rc $(cat /tmp/bench/kernels_rc): variants $variants"
left=$(( LIMIT - ($(date +%s) - T0) - 25 ))
echo "bench budget ${left}s"
if [ "$(cat /tmp/bench/kernels_rc)" != 0 ] && [ -n "$KERNELS_OR_PROFILE" ]; then
  # without the kernels a full run does not fit the call: profile the PyTorch fine step's variants instead
  timeout --signal=INT $left python3 bench/profile_distortion.py --n 600000 --steps 30 --variants default \
    "coarse step (plain 3DGS's step)" "small-plane products" "fused image motion" "eager MLP" \
    --out $OUT/prof16.json > $OUT/prof16.log 2>&1; echo "profile rc $?"; grep "ms/step" $OUT/prof16.log
else
  timeout --signal=INT $left python3 bench/distortion_full.py --variants $variants "$@"
  echo "bench rc $?"
fi
cp /tmp/bench/*.json $OUT/ 2>/dev/null
