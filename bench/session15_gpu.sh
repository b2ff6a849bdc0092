# usage: bash bench/session15_gpu.sh (carry .whl/splat .whl/xmin .whl/gsplat_ext.tgz): session 15's first GPU call: CUDA checks of the new kernels, the field's compile cold/warm,
# and the speed variants' profile; results to $OUT
T0=$(date +%s)
. bench/device_setup.sh
timeout 150 python3 bench/kernel_checks_cuda.py 2>&1 | tail -14
timeout 240 python3 bench/compile_cache.py --device cuda --what field > $OUT/compile_cache_field.json 2>$OUT/compile_cache.err; echo "compile_cache rc $?"; cat $OUT/compile_cache_field.json
# a fresh process with nothing of the field compiled: its first step is the whole compile cost of that set-up
timeout 150 python3 bench/profile_distortion.py --n 600000 --steps 30 \
  --variants "all kernels, nothing compiled in the field" --out $OUT/prof15_nocompile.json > $OUT/prof15_nocompile.log 2>&1
echo "no-compile profile rc $?"; grep "ms/step" $OUT/prof15_nocompile.log
left=$(( 585 - ($(date +%s) - T0) )); echo "profile budget ${left}s"
timeout --signal=INT $left python3 bench/profile_distortion.py --n 600000 --steps 30 --variants default \
  "coarse step (plain 3DGS's step)" "eager MLP" "eager frame lines" "eager regularisers" \
  "fused image motion" "small-plane products" \
  "triton MLP" "triton frame lines" "triton regularisers" "nothing compiled, eager lines (triton MLP and regularisers)" \
  "all kernels, nothing compiled in the field" \
  --out $OUT/prof15.json > $OUT/prof15.log 2>&1
echo "profile rc $?"; grep "ms/step" $OUT/prof15.log
