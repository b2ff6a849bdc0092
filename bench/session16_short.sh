# usage: bash bench/session16_short.sh <limit_s> (carry .whl/splat .whl/xmin .whl/gsplat_ext.tgz): the shortest useful
# GPU call: the CUDA kernel checks, then the fine step with every kernel and nothing compiled in the field against
# plain 3DGS's step (no compile in either, so no cold-cache wait). Results to $OUT.
T0=$(date +%s); LIMIT=$1
. bench/device_setup.sh
timeout 120 python3 bench/kernel_checks_cuda.py > $OUT/kernel_checks.log 2>&1; echo "kernel checks rc $?"; tail -16 $OUT/kernel_checks.log
left=$(( LIMIT - ($(date +%s) - T0) - 10 )); echo "profile budget ${left}s"
timeout --signal=INT $left python3 bench/profile_distortion.py --n 600000 --steps 30 \
  --variants "coarse step (plain 3DGS's step)" "all kernels, nothing compiled in the field" \
  --out $OUT/prof16.json > $OUT/prof16.log 2>&1
echo "profile rc $?"; grep -i "ms/step\|error" $OUT/prof16.log | tail -8
